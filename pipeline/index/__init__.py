"""BUILD flow: documents -> passages -> embeddings -> FAISS index directory (see manifest.py for its layout)."""
