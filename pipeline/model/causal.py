"""The RAG math for a causal-LM (decoder-only) generator, in plain torch: per-passage answer log-probabilities from
one forward pass, the RAG-Sequence and RAG-Token marginal NLLs over the k passages, and greedy RAG-Token decoding.

    ids, mask, answer_mask = tokenize_causal_inputs(tokenizer, titles, texts, questions, answers, max_length)
    scores = answer_log_probs(model, ids, mask, answer_mask, keep_vocab=label_smoothing > 0)
    loss = rag_sequence_loss(scores, doc_scores, k, label_smoothing)        doc_scores = q . passage vectors

The losses mirror transformers' `RagSequenceForGeneration.get_nll` / `RagTokenForGeneration.get_nll` (label
smoothing included) on answer tokens only; doc_scores enter through their log-softmax, so the gradient reaches
the question encoder as in the seq2seq heads. Rows are doc-major (row b*k + j = passage j of question b).
RAG-Sequence decoding (per-passage candidates rescored by the marginal) is in causal_generator.py; beam search is
not offered yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional


@dataclass
class AnswerLogProbs:
    """Per-row answer scores, answer token i in column i of every row (rows differ in prompt length)."""

    tokens: torch.Tensor  # float32[B*k, A]: log p(y_i | x, z, y_<i), 0 past the row's answer
    mask: torch.Tensor  # bool[B*k, A]: column i holds an answer (or eos) token
    vocab: torch.Tensor | None = None  # float32[B*k, A, V]: the full log-softmax there (label smoothing), else None


def answer_log_probs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, answer_mask: torch.Tensor,
                     keep_vocab: bool = False) -> AnswerLogProbs:
    """Score the answer tokens of right-padded rows (`tokenize_causal_inputs`) in one forward pass of a causal LM.

    Only the logits that predict answer tokens are computed (`logits_to_keep` with their positions), so a large
    vocabulary costs B*k*A*V floats, not B*k*L*V. `keep_vocab` keeps the full log-softmax for label smoothing."""
    starts = answer_mask.long().argmax(dim=1)
    lengths = answer_mask.long().sum(dim=1)
    if bool((starts < 1).any()) or bool((lengths < 1).any()):
        raise ValueError("every row needs a prompt before its answer and at least one answer token")
    columns = torch.arange(int(lengths.max()), device=input_ids.device)
    mask = columns[None, :] < lengths[:, None]
    token_positions = (starts[:, None] + columns[None, :]).clamp(max=input_ids.shape[1] - 1)
    logit_positions = token_positions - 1  # the logit at position p predicts the token at p + 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logit_positions).logits
    if logits.shape[:2] != logit_positions.shape:  # a model that ignores logits_to_keep gives every position
        logits = torch.take_along_dim(logits, logit_positions[..., None], dim=1)
    vocab = functional.log_softmax(logits.float(), dim=-1)
    tokens = vocab.gather(-1, input_ids.gather(1, token_positions)[..., None]).squeeze(-1)
    return AnswerLogProbs(tokens=tokens.masked_fill(~mask, 0.0), mask=mask,
                          vocab=vocab.masked_fill(~mask[..., None], 0.0) if keep_vocab else None)


def _doc_log_probs(scores: AnswerLogProbs, doc_scores: torch.Tensor, n_docs: int) -> torch.Tensor:
    """log p(z|x) = log_softmax(doc_scores) over the k passages, float32[B, k], after checking the shapes."""
    if doc_scores.shape[1] != n_docs or scores.tokens.shape[0] != doc_scores.shape[0] * n_docs:
        raise ValueError(f"doc_scores {tuple(doc_scores.shape)} and {scores.tokens.shape[0]} rows "
                         f"do not fit n_docs {n_docs}")
    return functional.log_softmax(doc_scores.float(), dim=1)


def _smoothed(nll: torch.Tensor, smooth_obj, scores: AnswerLogProbs, epsilon: float) -> torch.Tensor:
    """(1 - eps) * nll + eps / V * (-smooth_obj), as transformers' RAG heads combine them; nll when eps = 0."""
    if epsilon == 0:
        return nll
    if scores.vocab is None:
        raise ValueError("label smoothing needs answer_log_probs(..., keep_vocab=True)")
    return (1.0 - epsilon) * nll - epsilon / scores.vocab.shape[-1] * smooth_obj()


def rag_sequence_loss(scores: AnswerLogProbs, doc_scores: torch.Tensor, n_docs: int,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """-log sum_z p(z|x) prod_i p(y_i|x,z,y_<i) per question, mean over the B questions (a scalar).

    Label smoothing as `RagSequenceForGeneration.get_nll`: its smooth term is logsumexp over passages of
    (the sum over answer tokens and vocabulary of log-probs + V * log p(z|x))."""
    doc_logprobs = _doc_log_probs(scores, doc_scores, n_docs)
    batch = doc_scores.shape[0]
    nll = -(scores.tokens.sum(dim=1).view(batch, n_docs) + doc_logprobs).logsumexp(dim=1)

    def smooth_obj():
        vocab_size = scores.vocab.shape[-1]
        per_doc = scores.vocab.sum(dim=(1, 2)).view(batch, n_docs) + vocab_size * doc_logprobs
        return per_doc.logsumexp(dim=1)

    return _smoothed(nll, smooth_obj, scores, label_smoothing).mean()


def rag_token_loss(scores: AnswerLogProbs, doc_scores: torch.Tensor, n_docs: int,
                   label_smoothing: float = 0.0) -> torch.Tensor:
    """-sum_i log sum_z p(z|x) p(y_i|x,z,y_<i) per question, mean over the B questions (a scalar).

    Label smoothing as `RagTokenForGeneration.get_nll`: its smooth term sums, over answer tokens and vocabulary,
    the per-token marginal log-probs logsumexp_z(log p(z|x) + log p(v|x,z,y_<i))."""
    doc_logprobs = _doc_log_probs(scores, doc_scores, n_docs)
    batch, width = doc_scores.shape[0], scores.tokens.shape[1]
    question_mask = scores.mask.view(batch, n_docs, width)[:, 0]  # one answer per question: same mask on its k rows
    marginal = (scores.tokens.view(batch, n_docs, width) + doc_logprobs[:, :, None]).logsumexp(dim=1)
    nll = -(marginal * question_mask).sum(dim=1)

    def smooth_obj():
        vocab = scores.vocab.view(batch, n_docs, width, -1) + doc_logprobs[:, :, None, None]
        return (vocab.logsumexp(dim=1).sum(dim=-1) * question_mask).sum(dim=1)

    return _smoothed(nll, smooth_obj, scores, label_smoothing).mean()


@torch.no_grad()
def greedy_rag_token_ids(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, doc_scores: torch.Tensor,
                         n_docs: int, max_new_tokens: int, eos_token_id: int) -> torch.Tensor:
    """Greedy RAG-Token decoding: at each step the next token maximises logsumexp_z(log p(z|x) + log p(v|x,z,y_<t)),
    and all k rows of a question continue with it. int64[B, <= max_new_tokens]; eos, then eos, once a question ends.

    Prompts are LEFT-padded (`tokenize_causal_prompts`); positions count real tokens only, and the model's KV
    cache (`cache`, transformers 5's name for past_key_values) carries the B*k rows from one step to the next."""
    doc_logprobs = functional.log_softmax(doc_scores.float(), dim=1)[:, :, None]
    batch = doc_scores.shape[0]
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    step_ids, mask, past = input_ids, attention_mask, None
    done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    generated = []
    for _ in range(max_new_tokens):
        outputs = model(input_ids=step_ids, attention_mask=mask, position_ids=position_ids,
                        cache=past, use_cache=True, logits_to_keep=1)
        past = outputs.cache
        log_probs = functional.log_softmax(outputs.logits[:, -1].float(), dim=-1).view(batch, n_docs, -1)
        next_ids = (log_probs + doc_logprobs).logsumexp(dim=1).argmax(dim=-1)
        next_ids = torch.where(done, torch.full_like(next_ids, eos_token_id), next_ids)
        generated.append(next_ids)
        done |= next_ids == eos_token_id
        if bool(done.all()):
            break
        step_ids = next_ids.repeat_interleave(n_docs)[:, None]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        position_ids = position_ids[:, -1:] + 1
    return torch.stack(generated, dim=1) if generated else input_ids.new_zeros((batch, 0))


def greedy_rag_token_generate(model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              doc_scores: torch.Tensor, n_docs: int, max_new_tokens: int) -> list[str]:
    """One answer string per question (B) by `greedy_rag_token_ids`, cut at eos, special tokens dropped, stripped.
    Runs in eval mode and restores the model's mode after."""
    was_training = model.training
    model.eval()
    try:
        ids = greedy_rag_token_ids(model, input_ids, attention_mask, doc_scores, n_docs, max_new_tokens,
                                   tokenizer.eos_token_id)
    finally:
        model.train(was_training)
    answers = []
    for row in ids.tolist():
        row = row[: row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
        answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers
