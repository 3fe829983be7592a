"""A RAG model built, saved and loaded whatever its generator kind: a question encoder joined to a seq2seq
generator (transformers' RAG heads) or a causal LM (pipeline/model/causal_generator.py).

Retrieval happens outside (any mode, numpy in and out); the model side imports no Ray and is testable alone:

    parts = build_rag_model(question_encoder, generator, model_type, pooling)  kind from the generator's config
    q = encode_questions(parts, questions, ...)                                 float32[B, d], trainable
    doc_scores = score_documents(q, retrieved_vectors)                          (pipeline/model/doc_scores.py)
    kind_of(parts).loss(parts, doc_scores, titles, texts, questions, labels, cfg)  the marginal NLL
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from pipeline.errors import ConfigError, ModelLoadError
from pipeline.model.encoders import encode, load_encoder
from pipeline.model.generators import KINDS, kind_of, kind_of_config
from pipeline.model.lora import (
    ADAPTER_DIR,
    LoraSettings,
    load_adapter,
    merged_generator,
)
from pipeline.model.parts import RagParts
from pipeline.model.registry import POOLINGS

PARTS_FILE = "rag_parts.json"
# The layout RagTokenizer reads, so a saved model also loads with plain transformers.
QUESTION_TOKENIZER_DIR = "question_encoder_tokenizer"
GENERATOR_TOKENIZER_DIR = "generator_tokenizer"
QUESTION_ENCODER_DIR = "question_encoder"
CONTEXT_ENCODER_DIR = "context_encoder"  # only when the context encoder was trained
FORMAT_VERSION = 1


def build_rag_model(question_encoder: str, generator: str, model_type: str, pooling: str, label_smoothing: float = 0.0,
                    dropout: float = -1.0, context_encoder: str | None = None) -> RagParts:
    """Join a pretrained encoder (AutoModel; empty: the bundled MiniLM) and a generator of either kind (its config
    says which: BART/T5 seq2seq, or any causal LM), and with `context_encoder` (a name or path; "" = the bundled
    MiniLM) a passage encoder to train beside them.

    `dropout` >= 0 replaces the generator's dropout; negative keeps the checkpoint's value. The model
    comes back in eval mode, as `from_pretrained` leaves it; call `.train()` to train.
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    kind = kind_of_config(_generator_config(generator))
    question_tokenizer, encoder_model = load_encoder(question_encoder)
    generator_tokenizer, generator_model = kind.load_generator(generator, dropout)
    model = kind.join(encoder_model, generator_model, model_type, label_smoothing)
    context_tokenizer, context_model = load_encoder(context_encoder) if context_encoder is not None else (None, None)
    if context_model is not None:
        context_model.eval()
    return _with_unused_pooler_frozen(RagParts(model, question_tokenizer, generator_tokenizer, pooling,
                                               context_model, context_tokenizer))


def _generator_config(name_or_path: str):
    """The generator's Hugging Face config (which tells its kind); ModelLoadError naming it if absent."""
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"generator {name_or_path!r}: cannot load its config ({str(e).splitlines()[0]})") \
            from None


def _with_unused_pooler_frozen(parts: RagParts) -> RagParts:
    """Freeze the encoders' pooler layers when pooling is 'cls' or 'mean': they get no gradient then, and
    DDP without find_unused_parameters fails on a trainable parameter that gets none."""
    for encoder in (parts.head.question_encoder, parts.context_encoder):
        pooler = getattr(encoder, "pooler", None)
        if parts.pooling != "pooler" and isinstance(pooler, torch.nn.Module):
            pooler.requires_grad_(False)
    return parts


def save_rag_model(parts: RagParts, directory, trainable_only: bool = False) -> None:
    """Write Hugging Face files: the RAG model (safetensors), both tokenizers (RagTokenizer layout),
    `rag_parts.json` (kind, model type, pooling), the question encoder alone under `question_encoder/` and, when
    trained, the context encoder under `context_encoder/` (each with its tokenizer, so
    `AutoModel`/`AutoTokenizer.from_pretrained` load it alone).

    With LoRA adapters on the generator: the adapters alone under `generator_adapter/`, and the generator with
    them merged in; with `trainable_only` (checkpoints), no generator weights at all: `rag_parts.json` names the
    base generator that `load_rag_model` loads again."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kind = kind_of(parts)
    if parts.lora is not None:
        parts.head.generator.save_pretrained(directory / ADAPTER_DIR)
        if not trainable_only:
            with merged_generator(parts):
                kind.save(parts, directory)
    else:
        kind.save(parts, directory)
    parts.question_tokenizer.save_pretrained(directory / QUESTION_TOKENIZER_DIR)
    parts.generator_tokenizer.save_pretrained(directory / GENERATOR_TOKENIZER_DIR)
    parts.head.question_encoder.save_pretrained(directory / QUESTION_ENCODER_DIR)
    parts.question_tokenizer.save_pretrained(directory / QUESTION_ENCODER_DIR)
    if parts.context_encoder is not None:
        parts.context_encoder.save_pretrained(directory / CONTEXT_ENCODER_DIR)
        parts.context_tokenizer.save_pretrained(directory / CONTEXT_ENCODER_DIR)
    meta = {"format_version": FORMAT_VERSION, "generator_kind": kind.name, "model_type": parts.model_type,
            "pooling": parts.pooling}
    if parts.lora is not None:
        meta["lora"] = parts.lora.as_dict()
        meta["generator_weights"] = "base generator + adapters" if trainable_only else "merged"
    (directory / PARTS_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_rag_model(directory) -> RagParts:
    """Reload what `save_rag_model` wrote (eval mode); ModelLoadError naming the directory if incomplete."""
    directory = Path(directory)
    meta_path = directory / PARTS_FILE
    if not meta_path.is_file():
        raise ModelLoadError(f"{meta_path}: missing; expected a directory written by save_rag_model")
    meta = json.loads(meta_path.read_text())
    kind_name = meta.get("generator_kind", "seq2seq")  # models saved before kinds existed are seq2seq
    if kind_name not in KINDS:
        raise ModelLoadError(f"{meta_path}: generator_kind {kind_name!r}; expected one of {', '.join(KINDS)}")
    kind = KINDS[kind_name]
    lora_checkpoint = meta.get("generator_weights") == "base generator + adapters"
    if lora_checkpoint:
        # Only the trainable weights were saved: the base generator again, with the adapters put back below.
        generator = kind.load_generator(meta["lora"]["base_generator"], dropout=-1.0)[1]
        model = kind.join(load_encoder(str(directory / QUESTION_ENCODER_DIR))[1], generator, meta["model_type"], 0.0)
    else:
        model = kind.load(directory, meta["model_type"])
    try:
        question_tokenizer = AutoTokenizer.from_pretrained(directory / QUESTION_TOKENIZER_DIR)
        generator_tokenizer = AutoTokenizer.from_pretrained(directory / GENERATOR_TOKENIZER_DIR)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{directory}: cannot load the saved RAG model ({str(e).splitlines()[0]})") from None
    context_tokenizer, context_model = None, None
    if (directory / CONTEXT_ENCODER_DIR).is_dir():
        context_tokenizer, context_model = load_encoder(str(directory / CONTEXT_ENCODER_DIR))
        context_model.eval()
    parts = RagParts(model, question_tokenizer, generator_tokenizer, meta["pooling"], context_model,
                     context_tokenizer)
    if lora_checkpoint:
        load_adapter(parts, LoraSettings(**meta["lora"]), directory / ADAPTER_DIR)
    return _with_unused_pooler_frozen(parts)


def encode_questions(parts: RagParts, questions: list[str], max_length: int, device="cpu") -> torch.Tensor:
    """Question vectors float32[B, d], pooled as the index was built; with grad unless the caller disables it."""
    return encode(parts.head.question_encoder, parts.question_tokenizer, questions, parts.pooling,
                  max_length, device)
