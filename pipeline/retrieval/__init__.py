"""SERVE flow: an index directory served by a named, detached Ray actor group.

Numpy in, numpy out (no torch here): `RetrievalClient.retrieve(vectors float32[B, d], k) -> RetrievalResult`.
"""

from pipeline.retrieval.result import RetrievalResult

__all__ = ["RetrievalResult"]
