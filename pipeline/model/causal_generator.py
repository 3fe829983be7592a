"""The causal-LM generator kind (any `AutoModelForCausalLM`: Llama, Qwen, GPT-2, SmolLM ...): one prompt per
retrieved passage from `model.prompt_template`, the RAG marginal from per-passage answer log-probabilities
(pipeline/model/causal.py), loss on the answer tokens only.

Decoding: RAG-Token marginalises each next token over the k passages (greedy, KV cache); RAG-Sequence decodes
one greedy candidate per passage and keeps the candidate with the best marginal over all k passages
`log sum_z p(z|x) p(y|x,z)` (what transformers' RAG-Sequence generate does, with one greedy candidate per
passage instead of a beam). Beam search is not offered for this kind yet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    RagConfig,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from pipeline.errors import ConfigError, ModelLoadError
from pipeline.model.causal import (
    answer_log_probs,
    greedy_rag_token_generate,
    greedy_rag_token_ids,
    rag_sequence_loss,
    rag_token_loss,
)
from pipeline.model.causal_inputs import (
    causal_answer_ids,
    resolve_prompt_template,
    tokenize_causal_prompts,
    tokenize_causal_training,
)
from pipeline.model.generator_kind import GeneratorKind, GeneratorLoss
from pipeline.model.registry import DEFAULT_PROMPT_TEMPLATE, RAG_HEADS

GENERATOR_DIR = "generator"  # the generator alone: AutoModelForCausalLM.from_pretrained loads it
PROMPT_FILE = "prompt_template.json"
_QUESTION_ENCODER_DIR = "question_encoder"  # written by save_rag_model beside every kind's files
_IGNORE = -100  # target padding: a causal tokenizer often pads with its eos, which is also a real target


class CausalRag(nn.Module):
    """A question encoder and a causal LM, with the RagConfig (label smoothing) and the prompt template the model
    was trained with (saved with it, so evaluation and `ask` prompt as training did)."""

    def __init__(self, question_encoder: nn.Module, generator: nn.Module, model_type: str, label_smoothing: float,
                 prompt_template: str = DEFAULT_PROMPT_TEMPLATE):
        super().__init__()
        self.prompt_template = prompt_template
        if model_type not in RAG_HEADS:
            raise ConfigError(f"model.model_type {model_type!r}: expected one of {', '.join(RAG_HEADS)}")
        self.question_encoder, self.generator, self.rag_model_type = question_encoder, generator, model_type
        self.config = RagConfig.from_question_encoder_generator_configs(
            question_encoder.config, generator.config, label_smoothing=label_smoothing)


class CausalGenerator(GeneratorKind):
    name = "causal"

    def load_generator(self, name_or_path: str, dropout: float):
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            config = AutoConfig.from_pretrained(name_or_path)
            if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config.is_decoder:
                # AutoModelForCausalLM would load BERT-like encoders too, attending both ways: not a generator.
                raise ValueError(f"its config is a {config.model_type} encoder (masked LM), neither a seq2seq "
                                 "model nor a causal LM")
            if dropout >= 0:
                for name in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
                    if hasattr(config, name):
                        setattr(config, name, dropout)
            model = AutoModelForCausalLM.from_pretrained(name_or_path, config=config)
        except (OSError, ValueError) as e:
            raise ModelLoadError(
                f"generator {name_or_path!r}: cannot load a causal-LM tokenizer/model ({str(e).splitlines()[0]})"
            ) from None
        if tokenizer.eos_token_id is None:
            raise ModelLoadError(f"generator {name_or_path!r}: its tokenizer has no eos token to end answers with")
        return tokenizer, model

    def join(self, question_encoder, generator, model_type: str, label_smoothing: float):
        return CausalRag(question_encoder, generator, model_type, label_smoothing).eval()

    def configure(self, parts, cfg) -> None:
        super().configure(parts, cfg)
        resolve_prompt_template(parts.generator_tokenizer, cfg.prompt_template)  # refused here, not mid-step
        parts.head.prompt_template = cfg.prompt_template

    def save(self, parts, directory) -> None:
        parts.head.generator.save_pretrained(Path(directory) / GENERATOR_DIR)
        parts.generator_tokenizer.save_pretrained(Path(directory) / GENERATOR_DIR)
        (Path(directory) / PROMPT_FILE).write_text(json.dumps({"prompt_template": parts.head.prompt_template}) + "\n")

    def load(self, directory, model_type: str):
        directory = Path(directory)
        try:
            generator = AutoModelForCausalLM.from_pretrained(directory / GENERATOR_DIR)
            question_encoder = AutoModel.from_pretrained(directory / _QUESTION_ENCODER_DIR)
            template = json.loads((directory / PROMPT_FILE).read_text())["prompt_template"]
        except (OSError, ValueError, KeyError) as e:
            raise ModelLoadError(f"{directory}: cannot load the saved causal RAG model "
                                 f"({str(e).splitlines()[0]})") from None
        return CausalRag(question_encoder, generator, model_type, 0.0, template).eval()

    def targets(self, tokenizer, generator_config, answers, max_length: int) -> np.ndarray:
        out = np.full((len(answers), max_length), _IGNORE, dtype=np.int64)
        for i, ids in enumerate(causal_answer_ids(tokenizer, answers, max_length)):
            out[i, : len(ids)] = ids
        return out

    def loss(self, parts, doc_scores, titles, texts, questions, labels, cfg, passage_scores=False):
        tokenizer, head = parts.generator_tokenizer, parts.head
        answers = [[token for token in row if token != _IGNORE] for row in labels.tolist()]
        template = resolve_prompt_template(tokenizer, head.prompt_template)
        ids, mask, answer_mask = tokenize_causal_training(tokenizer, titles, texts, questions, answers,
                                                          cfg.max_source_length, template, prompt_only=True)
        device = doc_scores.device
        smoothing = head.config.label_smoothing
        scores = answer_log_probs(head.generator, ids.to(device), mask.to(device), answer_mask.to(device),
                                  keep_vocab=smoothing > 0)
        marginal = rag_token_loss if head.rag_model_type == "rag_token" else rag_sequence_loss
        loss = marginal(scores, doc_scores, doc_scores.shape[1], smoothing)
        likelihood = scores.tokens.detach().sum(dim=1).view(doc_scores.shape) if passage_scores else None
        return GeneratorLoss(loss, likelihood)

    @torch.no_grad()
    def generate(self, parts, doc_scores, titles, texts, questions, cfg):
        tokenizer, generator = parts.generator_tokenizer, parts.head.generator
        template = resolve_prompt_template(tokenizer, parts.head.prompt_template)
        ids, mask = tokenize_causal_prompts(tokenizer, titles, texts, questions, cfg.max_source_length, template)
        ids, mask = ids.to(doc_scores.device), mask.to(doc_scores.device)
        if parts.head.rag_model_type == "rag_token":
            return greedy_rag_token_generate(generator, tokenizer, ids, mask, doc_scores, doc_scores.shape[1],
                                             cfg.max_target_length)
        was_training = generator.training
        generator.eval()
        try:
            return _rag_sequence_answers(parts, doc_scores, titles, texts, questions, ids, mask, cfg, template)
        finally:
            generator.train(was_training)


def _rag_sequence_answers(parts, doc_scores, titles, texts, questions, prompt_ids, prompt_mask, cfg,
                          template: str) -> list[str]:
    """One greedy candidate per passage, then per question the candidate whose marginal over its k passages,
    log sum_z p(z|x) p(y|x,z), is highest."""
    tokenizer, generator = parts.generator_tokenizer, parts.head.generator
    batch, n_docs = doc_scores.shape
    eos = tokenizer.eos_token_id
    per_passage = greedy_rag_token_ids(generator, prompt_ids, prompt_mask,
                                       doc_scores.new_zeros((batch * n_docs, 1)), 1, cfg.max_target_length, eos)
    candidates = []  # (question, answer ids with eos), each distinct candidate of a question once
    for row, tokens in enumerate(per_passage.tolist()):
        answer = (tokens[: tokens.index(eos)] if eos in tokens else tokens) + [eos]
        if (row // n_docs, answer) not in candidates:
            candidates.append((row // n_docs, answer))
    owners = [b for b, _ in candidates]
    ids, mask, answer_mask = tokenize_causal_training(
        tokenizer, [titles[b] for b in owners], [texts[b] for b in owners], [questions[b] for b in owners],
        [answer for _, answer in candidates], cfg.max_source_length, template, prompt_only=True)
    device = doc_scores.device
    scores = answer_log_probs(generator, ids.to(device), mask.to(device), answer_mask.to(device))
    doc_logprobs = functional.log_softmax(doc_scores.float(), dim=1)[owners]
    marginal = (scores.tokens.sum(dim=1).view(len(candidates), n_docs) + doc_logprobs).logsumexp(dim=1)
    best: dict[int, tuple[float, list[int]]] = {}
    for (b, answer), value in zip(candidates, marginal.tolist()):
        if b not in best or value > best[b][0]:
            best[b] = (value, answer)
    return [tokenizer.decode(best[b][1][:-1], skip_special_tokens=True).strip() for b in range(batch)]
