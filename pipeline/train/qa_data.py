"""QA examples: `question` + one or more `answers` (the first is the training target), optional `evidence`.

Files: .jsonl, .parquet, .csv/.tsv, or a seq2seq pair `x.source` + `x.target`
(one question / answer per line). `check_qa_file` streams a file once on the
driver and rejects a missing or empty question/answer with `file:row` (or
counts it, with `skip_invalid`); `read_qa_dataset` then gives the Ray Dataset
that is tokenized in `map_batches` and streamed to the training workers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.config import DataConfig
from pipeline.errors import DataError
from pipeline.table_files import (
    FORMATS,
    column_names,
    iter_checked_rows,
    read_dataset,
    require_text,
)

SEQ2SEQ_SUFFIX = ".source"


@dataclass
class QAExample:
    question: str
    answers: list[str]
    evidence: str = ""


@dataclass
class QAFileReport:
    path: str
    valid: int
    skipped: int


def _answers(value) -> list[str] | None:
    """Normalise an answers cell (string, list of strings, or numpy array) to a non-empty list, or None."""
    if isinstance(value, str):
        value = [value]
    if value is None or isinstance(value, (int, float)):
        return None
    answers = [a.strip() for a in list(value) if isinstance(a, str) and a.strip()]
    return answers or None


def _iter_seq2seq(path: Path) -> Iterator[tuple[int, dict]]:
    target = path.with_suffix(".target")
    if not target.is_file():
        raise DataError(f"{path}: seq2seq source needs its answers in {target.name}, which is missing")
    try:
        with open(path, encoding="utf-8") as sources, open(target, encoding="utf-8") as targets:
            row = 0
            for row, (question, answer) in enumerate(zip(sources, targets), start=1):
                yield row, {"question": question.rstrip("\n"), "answers": answer.rstrip("\n")}
            if sources.readline() or targets.readline():
                raise DataError(f"{path}: {path.name} and {target.name} have different line counts (after row {row})")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: text is not valid UTF-8 ({e.reason})") from None


def iter_qa_rows(path: str | Path, cfg: DataConfig) -> Iterator[tuple[int, QAExample | str]]:
    """Stream `(row, QAExample)` for valid rows and `(row, reason)` for invalid ones, row numbers from 1."""
    path = Path(path)
    if path.suffix == SEQ2SEQ_SUFFIX:
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        rows, q_col, a_col, e_col = _iter_seq2seq(path), "question", "answers", None
    else:
        q_col, a_col = cfg.question_column, cfg.answers_column
        e_col = "evidence" if "evidence" in column_names(path) else None
        rows = iter_checked_rows(path, [q_col, a_col] + ([e_col] if e_col else []))
    for row, values in rows:
        try:
            question = require_text(values[q_col], path, row, q_col)
        except DataError as e:
            yield row, str(e)
            continue
        answers = _answers(values[a_col])
        if answers is None:
            yield row, f"{path}:{row}: field {a_col!r} is missing or empty"
            continue
        yield row, QAExample(question, answers, (values.get(e_col) or "") if e_col else "")


def check_qa_file(path: str | Path, cfg: DataConfig) -> QAFileReport:
    """Validate every row before any training; DataError on the first bad row unless cfg.skip_invalid."""
    valid = skipped = 0
    for row, item in iter_qa_rows(path, cfg):
        if isinstance(item, QAExample):
            valid += 1
        elif cfg.skip_invalid:
            skipped += 1
        else:
            raise DataError(f"{item} (set data.skip_invalid to skip such rows)")
    if valid == 0:
        raise DataError(f"{path}: no valid QA rows")
    return QAFileReport(str(path), valid, skipped)


def load_qa_examples(path: str | Path, cfg: DataConfig, limit: int = -1) -> list[QAExample]:
    """All valid examples of a (small) file in order, e.g. a dev or test split; invalid rows as in check_qa_file."""
    examples = []
    for _, item in iter_qa_rows(path, cfg):
        if isinstance(item, QAExample):
            examples.append(item)
        elif not cfg.skip_invalid:
            raise DataError(item)
        if 0 <= limit <= len(examples):
            break
    return examples


def read_qa_dataset(path: str | Path, cfg: DataConfig):
    """Ray Dataset with columns question (str), answers (list[str]), evidence (str); invalid rows dropped."""
    import ray.data

    path = Path(path)
    if path.suffix == SEQ2SEQ_SUFFIX:
        questions = ray.data.read_text(str(path)).rename_columns({"text": "question"})
        answers = ray.data.read_text(str(path.with_suffix(".target"))).rename_columns({"text": "answers"})
        ds, q_col, a_col, e_col = questions.zip(answers), "question", "answers", None
    else:
        q_col, a_col = cfg.question_column, cfg.answers_column
        e_col = "evidence" if "evidence" in column_names(path) else None
        ds = read_dataset(path, [q_col, a_col] + ([e_col] if e_col else []))
    return ds.map_batches(_normalise_batch, fn_kwargs={"q_col": q_col, "a_col": a_col, "e_col": e_col},
                          batch_format="numpy")


def _normalise_batch(batch: dict, q_col: str, a_col: str, e_col: str | None) -> dict:
    questions, answers, evidence = [], [], []
    for i, question in enumerate(batch[q_col]):
        golds = _answers(batch[a_col][i])
        if not isinstance(question, str) or not question.strip() or golds is None:
            continue
        questions.append(question.strip())
        answers.append("\t".join(golds))  # tab-joined: Arrow columns of ragged lists cost more than they help here
        evidence.append(str(batch[e_col][i] or "") if e_col else "")
    return {"question": np.array(questions, dtype=object), "answers": np.array(answers, dtype=object),
            "evidence": np.array(evidence, dtype=object)}


@functools.lru_cache(maxsize=4)
def _tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


@functools.lru_cache(maxsize=4)
def _model_config(name_or_path: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name_or_path)


class QATokenizer:
    """`map_batches` function: adds fixed-length question token ids (question encoder) and target ids (generator).

    Fixed lengths so batches stack without a collate step; the tokenizers load once per Ray worker process.
    """

    def __init__(self, question_tokenizer: str, generator_tokenizer: str, max_question_length: int,
                 max_target_length: int):
        self.question_tokenizer, self.generator_tokenizer = question_tokenizer, generator_tokenizer
        self.max_question_length, self.max_target_length = max_question_length, max_target_length

    def __call__(self, batch: dict) -> dict:
        from pipeline.model.rag import tokenize_targets

        questions = [str(q) for q in batch["question"]]
        encoded = _tokenizer(self.question_tokenizer)(
            questions, padding="max_length", truncation=True, max_length=self.max_question_length, return_tensors="np")
        targets = [str(a).split("\t")[0] for a in batch["answers"]]
        labels = tokenize_targets(_tokenizer(self.generator_tokenizer), _model_config(self.generator_tokenizer),
                                  targets, self.max_target_length)
        pad = _tokenizer(self.generator_tokenizer).pad_token_id
        labels = np.pad(labels.numpy(), ((0, 0), (0, self.max_target_length - labels.shape[1])), constant_values=pad)
        batch["question_ids"] = encoded["input_ids"].astype(np.int64)
        batch["question_mask"] = encoded["attention_mask"].astype(np.int64)
        batch["labels"] = labels.astype(np.int64)
        return batch


def supported_extensions() -> list[str]:
    return sorted(set(FORMATS) | {SEQ2SEQ_SUFFIX})
