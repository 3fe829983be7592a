"""How the retriever learns from the generator (`model.retriever_loss`):

    marginal  the gradient of the RAG marginal NLL through the doc scores (RAG's own way; no extra term)
    distill   Atlas's perplexity distillation / REPLUG's LM-supervised retrieval: KL(p_LM || p_retriever) over
              the k retrieved passages, p_LM = softmax(log p(answer | question, passage) / temperature) with the
              generator side detached, p_retriever = softmax(doc scores). It needs no gradient through the
              generator, so it trains a retriever for a generator that is frozen (train.train_generator false).
"""

from __future__ import annotations

import torch
from torch.nn import functional


def distillation_loss(doc_scores: torch.Tensor, passage_log_likelihood: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """KL(p_LM || p_retriever), mean over the B questions. doc_scores float[B, k] (with gradient);
    passage_log_likelihood float[B, k], log p(answer | question, passage j) (detached here whatever it carries)."""
    target = functional.log_softmax(passage_log_likelihood.detach().float() / temperature, dim=1)
    retriever = functional.log_softmax(doc_scores.float(), dim=1)
    return functional.kl_div(retriever, target, reduction="batchmean", log_target=True)
