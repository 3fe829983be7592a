"""The generator kinds, listed once, and which one a generator is: read from its config (`is_encoder_decoder`),
never from a flag. A new kind is a `GeneratorKind` subclass in its own module plus one line here."""

from __future__ import annotations

from pipeline.model.causal_generator import CausalGenerator
from pipeline.model.generator_kind import GeneratorKind
from pipeline.model.seq2seq_generator import Seq2SeqGenerator

KINDS: dict[str, GeneratorKind] = {kind.name: kind for kind in (Seq2SeqGenerator(), CausalGenerator())}


def kind_of_config(generator_config) -> GeneratorKind:
    """The kind a generator's Hugging Face config describes: encoder-decoder -> seq2seq, else causal."""
    return KINDS["seq2seq" if getattr(generator_config, "is_encoder_decoder", False) else "causal"]


def kind_of(parts) -> GeneratorKind:
    """The kind of a loaded model's generator."""
    return kind_of_config(parts.head.generator.config)
