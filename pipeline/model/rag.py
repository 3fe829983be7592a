"""The RAG model math: a question encoder and a seq2seq generator joined by transformers' RAG heads.

Retrieval happens outside (any mode, numpy in and out); this module takes its passages and vectors
and does the rest in plain torch/transformers, so it imports no Ray and is testable alone:

    q = encode_questions(parts, questions, ...)                       float32[B, d], trainable
    ids, mask = tokenize_contexts(parts, titles, texts, questions, ...) "title / text // question", B*k rows
                                                                      (pipeline/model/contexts.py)
    loss = rag_loss(parts, q, retrieved_vectors, ids, mask, labels, k) doc_scores = q . vectors inside,
                                                                      so the gradient reaches the encoder
Targets (`labels`) follow the RAG heads' convention: the decoder input itself, from the decoder start
token to eos, padded with the generator's pad id; the heads shift it left to score it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    RagConfig,
)

from pipeline.errors import ConfigError, ModelLoadError
from pipeline.model.contexts import special_token_ids
from pipeline.model.encoders import encode, load_encoder
from pipeline.model.parts import RagParts
from pipeline.model.registry import POOLINGS, RAG_HEADS

PARTS_FILE = "rag_parts.json"
# The layout RagTokenizer reads, so a saved model also loads with plain transformers.
QUESTION_TOKENIZER_DIR = "question_encoder_tokenizer"
GENERATOR_TOKENIZER_DIR = "generator_tokenizer"
QUESTION_ENCODER_DIR = "question_encoder"
CONTEXT_ENCODER_DIR = "context_encoder"  # only when the context encoder was trained
FORMAT_VERSION = 1


def _head_class(model_type: str):
    """transformers' RAG head class for a marginalisation of `RAG_HEADS`."""
    if model_type not in RAG_HEADS:
        raise ConfigError(f"model.model_type {model_type!r}: expected one of {', '.join(RAG_HEADS)}")
    return getattr(transformers, RAG_HEADS[model_type])


def build_rag_model(question_encoder: str, generator: str, model_type: str, pooling: str, label_smoothing: float = 0.0,
                    dropout: float = -1.0, context_encoder: str | None = None) -> RagParts:
    """Join a pretrained encoder (AutoModel; empty: the bundled MiniLM) and seq2seq generator (BART, T5), and
    with `context_encoder` (a name or path; "" = the bundled MiniLM) a passage encoder to train beside them.

    `dropout` >= 0 replaces the generator's dropout; negative keeps the checkpoint's value. The model
    comes back in eval mode, as `from_pretrained` leaves it; call `.train()` to train.
    """
    head = _head_class(model_type)
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    question_tokenizer, encoder_model = load_encoder(question_encoder)
    generator_tokenizer, generator_model = _load_generator(generator, dropout)
    config = RagConfig.from_question_encoder_generator_configs(
        # The heads read the special ids from the top-level config too (RAG-Token's generate above all).
        encoder_model.config, generator_model.config, label_smoothing=label_smoothing,
        **special_token_ids(generator_model.config),
    )
    model = head(config=config, question_encoder=encoder_model, generator=generator_model)
    model.eval()  # the new head starts in train mode while its loaded parts are in eval: make them agree
    context_tokenizer, context_model = load_encoder(context_encoder) if context_encoder is not None else (None, None)
    if context_model is not None:
        context_model.eval()
    return _with_unused_pooler_frozen(RagParts(model, question_tokenizer, generator_tokenizer, pooling,
                                               context_model, context_tokenizer))


def _with_unused_pooler_frozen(parts: RagParts) -> RagParts:
    """Freeze the encoders' pooler layers when pooling is 'cls' or 'mean': they get no gradient then, and
    DDP without find_unused_parameters fails on a trainable parameter that gets none."""
    for encoder in (parts.head.question_encoder, parts.context_encoder):
        pooler = getattr(encoder, "pooler", None)
        if parts.pooling != "pooler" and isinstance(pooler, torch.nn.Module):
            pooler.requires_grad_(False)
    return parts


def _load_generator(name_or_path: str, dropout: float):
    """(tokenizer, seq2seq model); ModelLoadError naming the path if either is missing or not seq2seq."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        config = AutoConfig.from_pretrained(name_or_path)
        if not hasattr(config, "bos_token_id"):
            # RAG-Sequence's loss reads generator.bos_token_id, which T5 configs lack (transformers 5.x).
            config.bos_token_id = None
        if dropout >= 0:
            for name in ("dropout", "dropout_rate"):  # BART-style, T5-style
                if hasattr(config, name):
                    setattr(config, name, dropout)
        model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, config=config)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"generator {name_or_path!r}: cannot load a seq2seq tokenizer/model ({str(e).splitlines()[0]})"
        ) from None
    if tokenizer.pad_token_id != config.pad_token_id:
        # The loss masks targets by the config's pad id; a different tokenizer pad would be trained on.
        raise ModelLoadError(f"generator {name_or_path!r}: tokenizer pad id {tokenizer.pad_token_id} "
                             f"differs from the model config's pad_token_id {config.pad_token_id}")
    return tokenizer, model


def save_rag_model(parts: RagParts, directory) -> None:
    """Write Hugging Face files: the RAG model (safetensors), both tokenizers (RagTokenizer layout),
    `rag_parts.json` (model type, pooling), the question encoder alone under `question_encoder/` and, when
    trained, the context encoder under `context_encoder/` (each with its tokenizer, so
    `AutoModel`/`AutoTokenizer.from_pretrained` load it alone)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts.head.save_pretrained(directory)
    parts.question_tokenizer.save_pretrained(directory / QUESTION_TOKENIZER_DIR)
    parts.generator_tokenizer.save_pretrained(directory / GENERATOR_TOKENIZER_DIR)
    parts.head.question_encoder.save_pretrained(directory / QUESTION_ENCODER_DIR)
    parts.question_tokenizer.save_pretrained(directory / QUESTION_ENCODER_DIR)
    if parts.context_encoder is not None:
        parts.context_encoder.save_pretrained(directory / CONTEXT_ENCODER_DIR)
        parts.context_tokenizer.save_pretrained(directory / CONTEXT_ENCODER_DIR)
    meta = {"format_version": FORMAT_VERSION, "model_type": parts.model_type, "pooling": parts.pooling}
    (directory / PARTS_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_rag_model(directory) -> RagParts:
    """Reload what `save_rag_model` wrote (eval mode); ModelLoadError naming the directory if incomplete."""
    directory = Path(directory)
    meta_path = directory / PARTS_FILE
    if not meta_path.is_file():
        raise ModelLoadError(f"{meta_path}: missing; expected a directory written by save_rag_model")
    meta = json.loads(meta_path.read_text())
    head = _head_class(meta["model_type"])
    try:
        model = head.from_pretrained(directory)
        question_tokenizer = AutoTokenizer.from_pretrained(directory / QUESTION_TOKENIZER_DIR)
        generator_tokenizer = AutoTokenizer.from_pretrained(directory / GENERATOR_TOKENIZER_DIR)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{directory}: cannot load the saved RAG model ({str(e).splitlines()[0]})") from None
    context_tokenizer, context_model = None, None
    if (directory / CONTEXT_ENCODER_DIR).is_dir():
        context_tokenizer, context_model = load_encoder(str(directory / CONTEXT_ENCODER_DIR))
        context_model.eval()
    return _with_unused_pooler_frozen(RagParts(model, question_tokenizer, generator_tokenizer, meta["pooling"],
                                               context_model, context_tokenizer))


def encode_questions(parts: RagParts, questions: list[str], max_length: int, device="cpu") -> torch.Tensor:
    """Question vectors float32[B, d], pooled as the index was built; with grad unless the caller disables it."""
    return encode(parts.head.question_encoder, parts.question_tokenizer, questions, parts.pooling,
                  max_length, device)


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


def rag_loss(parts: RagParts, question_vectors: torch.Tensor, retrieved_vectors, context_input_ids: torch.Tensor,
             context_attention_mask: torch.Tensor, labels: torch.Tensor, n_docs: int) -> torch.Tensor:
    """Marginal NLL (RAG-Sequence or RAG-Token, by the head), summed over tokens, mean over the batch.

    question_vectors float[B, d]; retrieved_vectors float32[B, n_docs, d]; context ids/mask int64[B*n_docs, L]
    (doc-major, as `tokenize_contexts`); labels int64[B, T] from `tokenize_targets`. Label smoothing is the
    model config's `label_smoothing`.
    """
    doc_scores = score_documents(question_vectors, retrieved_vectors)
    outputs = parts.model(context_input_ids=context_input_ids, context_attention_mask=context_attention_mask,
                          doc_scores=doc_scores, labels=labels, n_docs=n_docs, reduce_loss=False)
    return outputs.loss.mean()


@torch.no_grad()
def generate_answers(parts: RagParts, question_vectors: torch.Tensor, retrieved_vectors,
                     context_input_ids: torch.Tensor, context_attention_mask: torch.Tensor, n_docs: int,
                     max_length: int, num_beams: int = 1) -> list[str]:
    """One answer string per question (B), decoded by the head's own generate over the n_docs passages
    (RAG-Token: marginalised per token; RAG-Sequence: per-passage candidates rescored by the marginal).
    `max_length` counts decoder tokens as `tokenize_targets` does (start token and eos included).
    Runs in eval mode and restores the mode after; sets the head's config.n_docs to `n_docs`."""
    head = parts.head
    doc_scores = score_documents(question_vectors, retrieved_vectors)
    # RAG-Sequence's generate rescores its candidates with config.n_docs, not with its n_docs argument.
    head.config.n_docs = n_docs
    was_training = head.training
    head.eval()
    try:
        sequences = head.generate(
            context_input_ids=context_input_ids, context_attention_mask=context_attention_mask,
            doc_scores=doc_scores, n_docs=n_docs, num_beams=num_beams, max_length=max_length,
            **special_token_ids(head.config.generator),
        )
    finally:
        head.train(was_training)
    return [text.strip() for text in parts.generator_tokenizer.batch_decode(sequences, skip_special_tokens=True)]
