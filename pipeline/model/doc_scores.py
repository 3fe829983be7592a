"""Document scores: the inner products of question vectors with their retrieved passages' vectors. Every generator
kind's marginal reads them, and the gradient reaches the question (and context) encoder through them."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import ModelLoadError


def score_documents(question_vectors: torch.Tensor, retrieved_vectors) -> torch.Tensor:
    """doc_scores float[B, k] = inner products of question vectors [B, d] with their passages' [B, k, d]
    (numpy or torch); differentiable in the question vectors."""
    if isinstance(retrieved_vectors, np.ndarray) and not retrieved_vectors.flags.writeable:
        retrieved_vectors = retrieved_vectors.copy()  # arrays from Ray's object store are read-only
    vectors = torch.as_tensor(retrieved_vectors, device=question_vectors.device, dtype=question_vectors.dtype)
    if vectors.dim() != 3 or vectors.shape[0] != question_vectors.shape[0] \
            or vectors.shape[2] != question_vectors.shape[1]:
        raise ModelLoadError(f"retrieved vectors of shape {tuple(vectors.shape)} do not fit question vectors "
                             f"{tuple(question_vectors.shape)}: the question encoder's dimension must match the index")
    return torch.bmm(question_vectors.unsqueeze(1), vectors.transpose(1, 2)).squeeze(1)
