"""The RAG model joined to a retriever: question -> vector -> retrieval call -> doc scores -> RAG loss or answers.

One nn.Module so that DistributedDataParallel sees the question encoder, the generator and (end-to-end
retriever training) the context encoder in one forward pass. The retrieval call sits in the middle, on a
detached numpy copy of the question vectors; the gradient reaches the question encoder through the doc scores
instead, and the context encoder by re-encoding the retrieved passages:

    doc_scores = q . v      v = the index's stored vectors            (context encoder not trained)
    doc_scores = q . c(p)   c = the context encoder, p = the passages  (trained: gradient into both)

Which retriever it holds (Ray group, torch rank 0, in-process) is decided by the caller; this module never
communicates.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # the model side reads the index's settings, never the index itself
    from pipeline.index.settings import IndexSettings

from pipeline.config import ModelConfig, RunConfig
from pipeline.model.doc_scores import score_documents
from pipeline.model.encoders import encode, passage_text, pool
from pipeline.model.generators import kind_of
from pipeline.model.parts import RagParts
from pipeline.model.retriever_losses import distillation_loss
from pipeline.retrieval.result import RetrievalResult, take_columns


class RagWithRetrieval(nn.Module):
    """Wraps `RagParts` (the trainable model) and a retriever with `retrieve(float32[B, d], k)`.

    `rerank_depth` > n_docs retrieves that many passages and keeps the n_docs the context encoder scores best.
    """

    def __init__(self, parts: RagParts, retriever, cfg: ModelConfig, passage_max_length: int = 192,
                 rerank_depth: int = 0, seed: int = 0):
        super().__init__()
        # The registered submodules are what DDP synchronises: the RAG head and the context encoder if any.
        self.model = parts.model
        self.context_encoder = parts.context_encoder
        self.parts, self.retriever, self.cfg = parts, retriever, cfg
        self.kind = kind_of(parts)  # seq2seq or causal: the loss and decoding are the kind's
        self.passage_max_length, self.rerank_depth = passage_max_length, rerank_depth
        self.retrieval_seconds: list[float] = []
        self.failed_calls = 0
        # The ablation's random passages come from random query directions, drawn per process.
        self._random = np.random.default_rng(seed)

    @classmethod
    def for_run(cls, parts: RagParts, retriever, cfg: RunConfig, index: IndexSettings,
                seed: int = 0) -> "RagWithRetrieval":
        """The one way the training step, evaluation and `ask` join a model to a retriever: the run's model
        options and rerank depth, the index's passage length (passages re-encoded as the index encoded them)."""
        return cls(parts, retriever, cfg.model, passage_max_length=index.max_length,
                   rerank_depth=cfg.retrieval.rerank_depth, seed=seed)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def question_vectors(self, question_ids: torch.Tensor, question_mask: torch.Tensor) -> torch.Tensor:
        """float32[B, d], pooled as the index was built."""
        outputs = self.parts.model.question_encoder(input_ids=question_ids, attention_mask=question_mask)
        return pool(outputs, question_mask, self.parts.pooling).float()

    def passage_vectors(self, hits: RetrievalResult) -> torch.Tensor:
        """float32[B, k, d]: the retrieved passages encoded by the current context encoder (with gradient when
        grad is enabled), shown to it as the index build shows passages."""
        texts = [passage_text(title, text) for row_t, row_x in zip(hits.titles, hits.texts)
                 for title, text in zip(row_t, row_x)]
        vectors = encode(self.context_encoder, self.parts.context_tokenizer, texts, self.parts.pooling,
                         self.passage_max_length, self.device)
        return vectors.view(len(hits.titles), -1, vectors.shape[-1])

    def retrieve(self, vectors: torch.Tensor) -> RetrievalResult:
        """Top passages for the (detached) question vectors: n_docs, or rerank_depth to rerank; timed for
        --train.profile."""
        queries = vectors.detach().float().cpu().numpy()
        if self.cfg.random_passages:
            queries = self._random.standard_normal(queries.shape).astype(np.float32)
        started = time.perf_counter()
        try:
            result = self.retriever.retrieve(queries, max(self.cfg.n_docs, self.rerank_depth))
        except Exception:
            self.failed_calls += 1  # counted for the run's report, then raised: a step never trains without passages
            raise
        self.retrieval_seconds.append(time.perf_counter() - started)
        return result

    def retrieve_and_score(self, vectors: torch.Tensor) -> tuple[RetrievalResult, torch.Tensor]:
        """(n_docs passages per question, their vectors float32[B, n_docs, d] that the doc scores use)."""
        hits = self.retrieve(vectors)
        if self.context_encoder is None:
            return hits, hits.vectors
        if self.rerank_depth > self.cfg.n_docs:
            with torch.no_grad():
                fresh = self.passage_vectors(hits)
                scores = torch.bmm(vectors.detach().unsqueeze(1), fresh.transpose(1, 2)).squeeze(1)
            keep = torch.topk(scores, self.cfg.n_docs, dim=1).indices.cpu().numpy()
            hits = take_columns(hits, keep)
        return hits, self.passage_vectors(hits)

    def forward(self, questions: list[str], question_ids: torch.Tensor, question_mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        """The training loss (a scalar, mean over the batch): the generator kind's marginal NLL of the answers;
        with model.retriever_loss distill, the retriever learns from the distillation term alone (the marginal's
        doc scores detached)."""
        vectors = self.question_vectors(question_ids, question_mask)
        hits, doc_vectors = self.retrieve_and_score(vectors)
        doc_scores = score_documents(vectors, doc_vectors)
        distill = self.cfg.retriever_loss == "distill"
        out = self.kind.loss(self.parts, doc_scores.detach() if distill else doc_scores, hits.titles, hits.texts,
                             questions, labels, self.cfg, passage_scores=distill)
        if not distill:
            return out.loss
        return out.loss + distillation_loss(doc_scores, out.passage_log_likelihood, self.cfg.distill_temperature)

    @torch.no_grad()
    def answer(self, questions: list[str]) -> tuple[list[str], RetrievalResult]:
        """Generated answers and the passages they were generated from."""
        batch = self.parts.question_tokenizer(questions, padding=True, truncation=True,
                                              max_length=self.cfg.max_question_length, return_tensors="pt")
        vectors = self.question_vectors(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
        hits, doc_vectors = self.retrieve_and_score(vectors)
        doc_scores = score_documents(vectors, doc_vectors)
        return self.kind.generate(self.parts, doc_scores, hits.titles, hits.texts, questions, self.cfg), hits
