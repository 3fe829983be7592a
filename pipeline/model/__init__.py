"""The model side, no Ray: encoders (both towers), the generator's inputs and targets (contexts.py), the RAG heads
and loss, and the module joining them to a retriever."""
