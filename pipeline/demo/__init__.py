"""The bundled demo: a generated knowledge base, QA splits over it and a tiny generator that can read."""
