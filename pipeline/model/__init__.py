"""The model side, no Ray: encoders (both towers), the RAG heads and loss, and the module joining them to a retriever."""
