"""What a RAG model is made of once loaded: the RAG head (question encoder and generator inside), its two
tokenizers, the pooling the index was built with, and the trained context encoder when there is one. Plain data,
shared by the model math (rag.py), the generator's inputs (contexts.py) and the module joining them to a
retriever (rag_with_retrieval.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.model.registry import RAG_HEADS


@dataclass
class RagParts:
    """A RAG head (question encoder + generator inside) with its two tokenizers and the question pooling."""

    model: object  # RagSequenceForGeneration | RagTokenForGeneration, or that model wrapped by DDP
    question_tokenizer: object
    generator_tokenizer: object
    pooling: str
    context_encoder: object = None  # trained passage encoder (end-to-end retriever training), else None
    context_tokenizer: object = None

    @property
    def head(self):
        """The RAG head itself, for its attributes: `model` may be a DDP wrapper (Ray Train's prepare_model),
        whose forward must still be the one called for gradients to be synchronised."""
        return getattr(self.model, "module", self.model)

    @property
    def model_type(self) -> str:
        """The marginalisation of `RAG_HEADS` that the head computes."""
        return next(name for name, head in RAG_HEADS.items() if head == type(self.head).__name__)
