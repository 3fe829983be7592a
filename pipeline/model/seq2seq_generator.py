"""The seq2seq generator kind (BART, T5): the loss and decoding are transformers' RAG heads
(`RagSequenceForGeneration`, `RagTokenForGeneration`), fed our doc scores and "title / text // question" inputs.

Targets (`labels`) follow the heads' convention: the decoder input itself, from the decoder start token to eos,
padded with the generator's pad id; the heads shift it left to score it (`contexts.tokenize_targets`).
"""

from __future__ import annotations

import numpy as np
import torch
import transformers
from torch.nn import functional
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, RagConfig

from pipeline.errors import ConfigError, ModelLoadError
from pipeline.model.contexts import (
    special_token_ids,
    tokenize_contexts,
    tokenize_targets,
)
from pipeline.model.doc_scores import score_documents
from pipeline.model.generator_kind import GeneratorKind, GeneratorLoss
from pipeline.model.parts import RagParts
from pipeline.model.registry import RAG_HEADS


def head_class(model_type: str):
    """transformers' RAG head class for a marginalisation of `RAG_HEADS`."""
    if model_type not in RAG_HEADS:
        raise ConfigError(f"model.model_type {model_type!r}: expected one of {', '.join(RAG_HEADS)}")
    return getattr(transformers, RAG_HEADS[model_type])


class Seq2SeqGenerator(GeneratorKind):
    name = "seq2seq"

    def load_generator(self, name_or_path: str, dropout: float):
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

    def join(self, question_encoder, generator, model_type: str, label_smoothing: float):
        config = RagConfig.from_question_encoder_generator_configs(
            # The heads read the special ids from the top-level config too (RAG-Token's generate above all).
            question_encoder.config, generator.config, label_smoothing=label_smoothing,
            **special_token_ids(generator.config),
        )
        model = head_class(model_type)(config=config, question_encoder=question_encoder, generator=generator)
        return model.eval()  # the new head starts in train mode while its loaded parts are in eval: make them agree

    def set_generator(self, parts, generator) -> None:
        parts.head.rag.generator = generator  # the heads' .generator is a read-only view of their RagModel's

    def save(self, parts, directory) -> None:
        parts.head.save_pretrained(directory)

    def load(self, directory, model_type: str):
        try:
            return head_class(model_type).from_pretrained(directory)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{directory}: cannot load the saved RAG model ({str(e).splitlines()[0]})") from None

    def targets(self, tokenizer, generator_config, answers: list[str], max_length: int) -> np.ndarray:
        labels = tokenize_targets(tokenizer, generator_config, answers, max_length).numpy()
        return np.pad(labels, ((0, 0), (0, max_length - labels.shape[1])),
                      constant_values=tokenizer.pad_token_id).astype(np.int64)

    def loss(self, parts, doc_scores, titles, texts, questions, labels, cfg, passage_scores=False):
        ids, mask = tokenize_contexts(parts, titles, texts, questions, cfg.max_source_length, doc_scores.device)
        outputs = parts.model(context_input_ids=ids, context_attention_mask=mask, doc_scores=doc_scores,
                              labels=labels, n_docs=doc_scores.shape[1], reduce_loss=False)
        likelihood = passage_log_likelihood(parts, ids, mask, labels) if passage_scores else None
        return GeneratorLoss(outputs.loss.mean(), likelihood)

    def generate(self, parts, doc_scores, titles, texts, questions, cfg):
        ids, mask = tokenize_contexts(parts, titles, texts, questions, cfg.max_source_length, doc_scores.device)
        return generate_from_scores(parts, doc_scores, ids, mask, max_length=cfg.max_target_length)


@torch.no_grad()
def passage_log_likelihood(parts: RagParts, context_ids: torch.Tensor, context_mask: torch.Tensor,
                           labels: torch.Tensor) -> torch.Tensor:
    """float32[B, k]: log p(answer | question, passage j) under the generator alone, summed over the answer
    tokens after the decoder start (the tokens the heads score), pad excluded. One extra forward, no gradient:
    the distillation target, which neither head returns per passage."""
    n_docs = context_ids.shape[0] // labels.shape[0]
    decoder = labels.repeat_interleave(n_docs, dim=0)
    logits = parts.head.generator(input_ids=context_ids, attention_mask=context_mask,
                                  decoder_input_ids=decoder[:, :-1]).logits
    target = decoder[:, 1:]
    tokens = functional.log_softmax(logits.float(), dim=-1).gather(-1, target[..., None]).squeeze(-1)
    keep = target != parts.head.config.generator.pad_token_id
    return (tokens * keep).sum(dim=1).view(labels.shape[0], n_docs)


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


def generate_answers(parts: RagParts, question_vectors: torch.Tensor, retrieved_vectors,
                     context_input_ids: torch.Tensor, context_attention_mask: torch.Tensor, n_docs: int,
                     max_length: int, num_beams: int = 1) -> list[str]:
    """One answer string per question (B), decoded by the head's own generate over the n_docs passages
    (RAG-Token: marginalised per token; RAG-Sequence: per-passage candidates rescored by the marginal)."""
    doc_scores = score_documents(question_vectors, retrieved_vectors)
    if doc_scores.shape[1] != n_docs:
        raise ValueError(f"{doc_scores.shape[1]} passages per question for n_docs {n_docs}")
    return generate_from_scores(parts, doc_scores, context_input_ids, context_attention_mask, max_length, num_beams)


@torch.no_grad()
def generate_from_scores(parts: RagParts, doc_scores: torch.Tensor, context_input_ids: torch.Tensor,
                         context_attention_mask: torch.Tensor, max_length: int, num_beams: int = 1) -> list[str]:
    """`generate_answers` from doc scores float[B, k]. `max_length` counts decoder tokens as `tokenize_targets`
    does (start token and eos included). Sets the head's config.n_docs to k."""
    head, n_docs = parts.head, doc_scores.shape[1]
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
