"""What a RAG model is made of once loaded: the RAG head (question encoder and generator inside), its two
tokenizers, the pooling the index was built with, and the trained context encoder when there is one. Plain data,
shared by the model math (rag.py), the generator's inputs (contexts.py) and the module joining them to a
retriever (rag_with_retrieval.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.model.registry import RAG_HEADS


@dataclass
class RagParts:
    """A RAG model (question encoder + generator inside) with its two tokenizers and the question pooling."""

    # A generator kind's joined module (pipeline/model/generator_kind.py): transformers' RagSequenceForGeneration |
    # RagTokenForGeneration for seq2seq, CausalRag for causal LMs; .question_encoder, .generator, .config on each.
    model: object
    question_tokenizer: object
    generator_tokenizer: object
    pooling: str
    context_encoder: object = None  # trained passage encoder (end-to-end retriever training), else None
    context_tokenizer: object = None
    lora: object = None  # LoraSettings (pipeline/model/lora.py) when the generator carries LoRA adapters

    @property
    def head(self):
        """The RAG head itself, for its attributes: `model` may be a DDP wrapper (Ray Train's prepare_model),
        whose forward must still be the one called for gradients to be synchronised."""
        return getattr(self.model, "module", self.model)

    @property
    def model_type(self) -> str:
        """The marginalisation of `RAG_HEADS` that the head computes."""
        if hasattr(self.head, "rag_model_type"):  # a module of ours names it; transformers' heads are their class
            return self.head.rag_model_type
        return next(name for name, head in RAG_HEADS.items() if head == type(self.head).__name__)
