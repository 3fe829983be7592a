"""The RAG model joined to a retriever: question -> vector -> retrieval call -> doc scores -> RAG loss or answers.

One nn.Module so that DistributedDataParallel sees the question encoder and the
generator in one forward pass (the retrieval call sits in the middle, on a
detached numpy copy of the question vectors; the gradient reaches the encoder
through the doc scores instead). Which retriever it holds (Ray group, torch
rank 0, in-process) is decided by the caller; this module never communicates.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.model.encoders import pool
from pipeline.model.rag import RagParts, generate_answers, rag_loss, tokenize_contexts
from pipeline.retrieval.result import RetrievalResult


class RagWithRetrieval(nn.Module):
    """Wraps `RagParts` (the trainable model) and a retriever with `retrieve(float32[B, d], k)`."""

    def __init__(self, parts: RagParts, retriever, cfg: ModelConfig, seed: int = 0):
        super().__init__()
        self.model = parts.model  # the only registered submodule: DDP syncs exactly its parameters
        self.parts, self.retriever, self.cfg = parts, retriever, cfg
        self.retrieval_seconds: list[float] = []
        # The ablation's random passages come from random query directions, drawn per process.
        self._random = np.random.default_rng(seed)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def question_vectors(self, question_ids: torch.Tensor, question_mask: torch.Tensor) -> torch.Tensor:
        """float32[B, d], pooled as the index was built."""
        outputs = self.parts.model.question_encoder(input_ids=question_ids, attention_mask=question_mask)
        return pool(outputs, question_mask, self.parts.pooling).float()

    def retrieve(self, vectors: torch.Tensor) -> RetrievalResult:
        """Top-n_docs passages for the (detached) question vectors; timed for --train.profile."""
        queries = vectors.detach().float().cpu().numpy()
        if self.cfg.random_passages:
            queries = self._random.standard_normal(queries.shape).astype(np.float32)
        started = time.perf_counter()
        result = self.retriever.retrieve(queries, self.cfg.n_docs)
        self.retrieval_seconds.append(time.perf_counter() - started)
        return result

    def forward(self, questions: list[str], question_ids: torch.Tensor, question_mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        """Marginal NLL of the answers (mean over the batch)."""
        vectors = self.question_vectors(question_ids, question_mask)
        hits = self.retrieve(vectors)
        context_ids, context_mask = tokenize_contexts(
            self.parts, hits.titles, hits.texts, questions, self.cfg.max_source_length, self.device)
        return rag_loss(self.parts, vectors, hits.vectors, context_ids, context_mask, labels, self.cfg.n_docs)

    @torch.no_grad()
    def answer(self, questions: list[str]) -> tuple[list[str], RetrievalResult]:
        """Generated answers and the passages they were generated from."""
        batch = self.parts.question_tokenizer(questions, padding=True, truncation=True,
                                              max_length=self.cfg.max_question_length, return_tensors="pt")
        vectors = self.question_vectors(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
        hits = self.retrieve(vectors)
        context_ids, context_mask = tokenize_contexts(
            self.parts, hits.titles, hits.texts, questions, self.cfg.max_source_length, self.device)
        answers = generate_answers(self.parts, vectors, hits.vectors, context_ids, context_mask, self.cfg.n_docs,
                                   max_length=self.cfg.max_target_length)
        return answers, hits
