"""Evaluation of a RAG model on QA examples: answers generated with retrieved passages, scored.

Metrics: exact_match and f1 (SQuAD normalisation, best over all gold answers),
hit@k (a gold answer string occurs in the k retrieved passages), and, over
rows that know their evidence sentence, recall@1 / recall@k of the gold
passage. Works on one process or spread over the ranks of a training group
(every rank makes the same number of retrieval calls, which the torch
retrieval mode needs).
"""

from __future__ import annotations

import math

import torch

from pipeline.index.settings import IndexSettings
from pipeline.model.encoders import encode, load_encoder
from pipeline.model.rag import load_rag_model
from pipeline.model.rag_with_retrieval import RagWithRetrieval
from pipeline.progress import Progress
from pipeline.train.metrics import score_answer, score_retrieval, summarize
from pipeline.train.qa_data import QAExample


def score_row(example: QAExample, prediction: str, passages: list[str]) -> dict:
    """One prediction scored against its example (answer and retrieval parts, see pipeline.train.metrics)."""
    return {"question": example.question, "prediction": prediction, "answers": example.answers,
            **score_answer(prediction, example.answers),
            **score_retrieval(passages, example.answers, example.evidence), "passages": passages}


def summarize_rows(rows: list[dict], prefix: str = "") -> dict:
    """`pipeline.train.metrics.summarize` with keys prefixed (e.g. dev_exact_match); None becomes NaN for reports."""
    return {f"{prefix}{key}": float("nan") if value is None else value for key, value in summarize(rows).items()}


def predict(module, examples: list[QAExample], batch_size: int, rank: int = 0, world: int = 1,
            progress_label: str = "") -> list[dict]:
    """Scored rows for this rank's share (every world-th example); all ranks make equal numbers of calls.

    With `progress_label`, rank 0 prints progress lines (its own share, with rate and ETA).
    """
    mine = examples[rank::world]
    batches = math.ceil(math.ceil(len(examples) / world) / batch_size)
    progress = Progress(progress_label, len(mine), "questions") if progress_label and rank == 0 else None
    rows = []
    was_training = module.training
    module.eval()
    for b in range(batches):
        chunk = mine[b * batch_size:(b + 1) * batch_size]
        # A rank that has run out still joins the call with a stand-in question, and drops its answer.
        questions = [e.question for e in chunk] or [examples[0].question]
        answers, hits = module.answer(questions)
        rows.extend(score_row(e, answers[i], hits.texts[i]) for i, e in enumerate(chunk))
        if progress:
            progress.update(len(chunk))
    module.train(was_training)
    return rows


def gather_rows(rows: list[dict], world: int) -> list[dict]:
    """All ranks' rows on every rank (torch.distributed object gather), or `rows` when alone."""
    if world == 1 or not torch.distributed.is_initialized():
        return rows
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, rows)
    return [row for part in gathered for row in part]


def evaluate_model(model_dir: str, examples: list[QAExample], retriever, config,
                   batch_size: int = 32) -> tuple[dict, list[dict]]:
    """Load a saved RAG model (HF format) and score it on `examples` in this process: (metrics, rows).

    `config` is the run's RunConfig: its model section, and for a model with a trained context encoder the
    rerank depth and the index's passage length (passages are re-encoded as training encoded them)."""
    rag = RagWithRetrieval.for_run(load_rag_model(model_dir), retriever, config,
                                   IndexSettings.read(config.index.directory))
    rows = predict(rag, examples, batch_size)
    return summarize_rows(rows), rows


@torch.no_grad()
def retrieval_metrics(encoder: str, pooling: str, max_length: int, examples: list[QAExample], retriever, k: int,
                      batch_size: int = 64) -> dict:
    """hit@k / recall@1 / recall@k of a question encoder alone (no generation), e.g. before fine-tuning."""
    tokenizer, model = load_encoder(encoder)
    model.eval()
    records = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        vectors = encode(model, tokenizer, [e.question for e in chunk], pooling, max_length)
        hits = retriever.retrieve(vectors.numpy(), k)
        records += [score_retrieval(hits.texts[i], e.answers, e.evidence) for i, e in enumerate(chunk)]
    return summarize(records)
