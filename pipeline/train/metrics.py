"""Answer and retrieval metrics: SQuAD exact match and F1, answer hits and evidence recall.

Per question, `score_answer` and `score_retrieval` give one record; `summarize` averages records:

    record = {**score_answer(prediction, answers), **score_retrieval(passage_texts, answers, evidence)}
    summarize([record, ...]) -> {"count", "exact_match", "f1", "k", "hit@k", "evidence_count", "recall@1", "recall@k"}
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: list[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0 (0.0 without golds)."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(gold) for gold in golds))


def f1_score(prediction: str, golds: list[str]) -> float:
    """SQuAD token F1 against the best-matching gold answer, in [0, 1] (0.0 without golds)."""
    return max((_token_f1(prediction, gold) for gold in golds), default=0.0)


def _token_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)  # SQuAD v2: two empty answers agree
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def _contains(passage: str, phrase: str) -> bool:
    """Whole-word containment of a normalised phrase in a normalised passage ("art" is not in "party")."""
    return bool(phrase) and f" {phrase} " in f" {passage} "


def answer_hit(passage_texts: list[str], golds: list[str]) -> bool:
    """Whether any non-empty normalised gold answer occurs, as whole words, in any normalised passage."""
    answers = [normalize_answer(gold) for gold in golds]
    return any(_contains(normalize_answer(text), answer) for text in passage_texts for answer in answers)


def evidence_rank(passage_texts: list[str], evidence: str) -> int | None:
    """1-based rank of the first passage containing the (normalised) evidence sentence; None if none does
    or the evidence is empty."""
    sentence = normalize_answer(evidence)
    for rank, text in enumerate(passage_texts, start=1):
        if _contains(normalize_answer(text), sentence):
            return rank
    return None


def score_answer(prediction: str, golds: list[str]) -> dict:
    """One question's answer record: {"exact_match": float, "f1": float}."""
    return {"exact_match": exact_match(prediction, golds), "f1": f1_score(prediction, golds)}


def score_retrieval(passage_texts: list[str], golds: list[str], evidence: str | None = None) -> dict:
    """One question's retrieval record over its ranked passages: {"k": int, "hit": bool,
    "has_evidence": bool, "evidence_rank": int | None}."""
    has_evidence = bool(evidence and normalize_answer(evidence))
    return {"k": len(passage_texts), "hit": answer_hit(passage_texts, golds), "has_evidence": has_evidence,
            "evidence_rank": evidence_rank(passage_texts, evidence) if has_evidence else None}


def summarize(records: list[dict]) -> dict:
    """Means over per-question records (from `score_answer` and/or `score_retrieval`).

    exact_match / f1 over records that have them, hit@k over records with a retrieval part, recall@1 and
    recall@k (evidence found in the top 1 / top k) only over records that have evidence. A metric with no
    record to average is None; k is the largest k seen.
    """
    answered = [r for r in records if "exact_match" in r]
    retrieved = [r for r in records if "hit" in r]
    with_evidence = [r for r in retrieved if r["has_evidence"]]
    return {
        "count": len(records),
        "exact_match": _mean(r["exact_match"] for r in answered),
        "f1": _mean(r["f1"] for r in answered),
        "k": max((r["k"] for r in retrieved), default=None),
        "hit@k": _mean(r["hit"] for r in retrieved),
        "evidence_count": len(with_evidence),
        "recall@1": _mean(r["evidence_rank"] == 1 for r in with_evidence),
        "recall@k": _mean(r["evidence_rank"] is not None for r in with_evidence),
    }


def _mean(values) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None
