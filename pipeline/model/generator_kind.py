"""The one interface the training step, evaluation and `ask` use to talk to a generator, whatever its architecture.

A kind knows how to load its generator, join it to the question encoder as one module (`RagParts.model`, which
has `.question_encoder`, `.generator` and a RagConfig `.config`), turn answers into the targets Ray Data
tokenizes, compute the RAG marginal loss from doc scores and retrieved passages, decode answers, and save and
load itself. The kinds are listed in `pipeline/model/generators.py`; which one a generator is comes from its
config (`is_encoder_decoder`), never from a flag. Adding a kind = one module with a subclass + one registry line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.model.parts import RagParts


@dataclass
class GeneratorLoss:
    """What a kind's loss gives back."""

    loss: torch.Tensor  # scalar: the marginal NLL of the answers, mean over the questions
    # float32[B, k] log p(answer | question, passage j), no gradient; only when asked (the distillation loss)
    passage_log_likelihood: torch.Tensor | None = None


class GeneratorKind(ABC):
    """A generator architecture behind the RAG marginal. Stateless: every method takes what it works on."""

    name: str

    @abstractmethod
    def load_generator(self, name_or_path: str, dropout: float) -> tuple[object, torch.nn.Module]:
        """(tokenizer, model) from a Hugging Face name or path; ModelLoadError naming it if it cannot load.
        `dropout` >= 0 replaces the checkpoint's dropout."""

    @abstractmethod
    def join(self, question_encoder: torch.nn.Module, generator: torch.nn.Module, model_type: str,
             label_smoothing: float) -> torch.nn.Module:
        """The module holding both (the `RagParts.model`), in eval mode."""

    def set_generator(self, parts: RagParts, generator: torch.nn.Module) -> None:
        """Put `generator` where the joined module keeps its generator (LoRA wraps it; export merges it)."""
        parts.head.generator = generator

    def configure(self, parts: RagParts, cfg) -> None:
        """Apply a run's model options (ModelConfig) that the module carries and saves: label smoothing here."""
        parts.head.config.label_smoothing = cfg.label_smoothing

    @abstractmethod
    def save(self, parts: RagParts, directory) -> None:
        """Write `parts.model` to `directory` as Hugging Face files (the caller saves the tokenizers, the question
        encoder alone and `rag_parts.json` beside them)."""

    @abstractmethod
    def load(self, directory, model_type: str) -> torch.nn.Module:
        """`save`'s module back, eval mode; ModelLoadError naming the directory if incomplete."""

    @abstractmethod
    def targets(self, tokenizer, generator_config, answers: list[str], max_length: int) -> np.ndarray:
        """int64[B, max_length]: what `loss` reads as `labels`, fixed width so Ray Data batches stack."""

    @abstractmethod
    def loss(self, parts: RagParts, doc_scores: torch.Tensor, titles: list[list[str]], texts: list[list[str]],
             questions: list[str], labels: torch.Tensor, cfg, passage_scores: bool = False) -> GeneratorLoss:
        """The RAG marginal NLL (cfg.model_type's) of `labels` given the k passages of each question, doc-major;
        doc_scores float[B, k] carry the gradient to the retriever. `cfg` is the run's ModelConfig."""

    @abstractmethod
    def generate(self, parts: RagParts, doc_scores: torch.Tensor, titles: list[list[str]], texts: list[list[str]],
                 questions: list[str], cfg) -> list[str]:
        """One answer string per question, decoded over its k passages as cfg.model_type marginalises; no grad,
        eval mode during, the module's mode restored after."""
