"""QA examples: `question` + one or more `answers` (the first is the training target), optional `evidence`.

Files: .jsonl, .parquet, .csv/.tsv, or a seq2seq pair `x.source` + `x.target`
(one question / answer per line, paired by line number). `check_qa_file` streams
a file once on the driver and refuses a bad row with `file:row` and what was
found (or counts it, with `skip_invalid`); `read_qa_dataset` gives the Ray
Dataset of exactly the rows that passed, tokenized in `map_batches` and streamed
to the training workers, so no data error can first appear inside a worker.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import ray.data
from transformers import AutoConfig, AutoTokenizer

from pipeline.config import DataConfig, RunConfig
from pipeline.demo.defaults import fill_demo_defaults
from pipeline.errors import DataError
from pipeline.model.generators import kind_of_config
from pipeline.table_files import (
    check_not_empty,
    describe_value,
    iter_checked_rows,
    require_text,
)
from pipeline.train.checks import check_run_config

SEQ2SEQ_SUFFIX = ".source"
_BLOCK_ROWS = 2048  # rows per Arrow block handed to Ray Data: enough blocks for parallel tokenization


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


def _answers_or_reason(value, path: Path, row: int, field: str) -> list[str] | str:
    """The non-empty answers of an answers cell (a string, or a list / numpy array of strings), else why not."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, (list, tuple)) and value is not None:
        return f"{path}:{row}: field {field!r} must be a string or a list of strings, got {describe_value(value)}"
    if value and not all(isinstance(a, str) for a in value):
        wrong = next(a for a in value if not isinstance(a, str))
        return (f"{path}:{row}: field {field!r} must be a string or a list of strings, got a list holding "
                f"{describe_value(wrong)}")
    answers = [a.strip() for a in value or () if a.strip()]
    return answers or f"{path}:{row}: field {field!r} is missing or empty"


def _line_count(path: Path) -> int:
    """Lines of a text file, a last line without its newline included."""
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            count, last = count + chunk.count(b"\n"), chunk[-1:]
    return count + (last != b"\n")


def _iter_seq2seq(path: Path) -> Iterator[tuple[int, dict]]:
    """(line, {"question", "answers"}) of a .source and its .target, paired by line number (counts checked first)."""
    target = path.with_suffix(".target")
    if not target.is_file():
        raise DataError(f"{path}: seq2seq source needs its answers in {target.name}, which is missing")
    for part in (path, target):
        check_not_empty(part)
    sources, targets = _line_count(path), _line_count(target)
    if sources != targets:
        raise DataError(f"{path} has {sources} lines but {target} has {targets}; a .source and its .target pair "
                        f"up line by line, so their line counts must match")
    with open(path, "rb") as questions, open(target, "rb") as answers:
        for line_no, (question, answer) in enumerate(zip(questions, answers), start=1):
            try:
                yield line_no, {"question": question.decode("utf-8"), "answers": answer.decode("utf-8")}
            except UnicodeDecodeError as e:
                raise DataError(f"{path if e.object is question else target}:{line_no}: text is not valid UTF-8 "
                                f"({e.reason})") from None


def iter_qa_rows(path: str | Path, cfg: DataConfig) -> Iterator[tuple[int, QAExample | str]]:
    """Stream `(row, QAExample)` for valid rows and `(row, reason)` for invalid ones, row numbers from 1."""
    path = Path(path)
    if path.suffix == SEQ2SEQ_SUFFIX:
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        rows, q_col, a_col = _iter_seq2seq(path), "question", "answers"
    else:
        q_col, a_col = cfg.question_column, cfg.answers_column
        rows = iter_checked_rows(path, [q_col, a_col], optional=["evidence"])
    for row, values in rows:
        try:
            question = require_text(values[q_col], path, row, q_col)
            evidence = values.get("evidence") or ""
            if not isinstance(evidence, str):
                raise DataError(f"{path}:{row}: field 'evidence' must be a string, got {describe_value(evidence)}")
        except DataError as e:
            yield row, str(e)
            continue
        answers = _answers_or_reason(values[a_col], path, row, a_col)
        yield row, (QAExample(question, answers, evidence) if isinstance(answers, list) else answers)


def _file_key(path: Path, cfg: DataConfig) -> tuple:
    """What a validation result depends on: the file(s) as they are now and the options that read them."""
    files = [path, path.with_suffix(".target")] if path.suffix == SEQ2SEQ_SUFFIX else [path]
    stats = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.is_file())
    return stats, cfg.question_column, cfg.answers_column, cfg.skip_invalid


_checked: dict[tuple, QAFileReport] = {}


def check_qa_file(path: str | Path, cfg: DataConfig) -> QAFileReport:
    """Validate every row before any training; DataError on the first bad row unless cfg.skip_invalid.

    A file already checked, unchanged since, with the same options, is not read again (a job checks its
    files before starting Ray, and the run's preparation checks them again).
    """
    path = Path(path)
    key = _file_key(path, cfg) if path.is_file() else None
    if key in _checked:
        return _checked[key]
    valid = skipped = 0
    for _, item in iter_qa_rows(path, cfg):
        if isinstance(item, QAExample):
            valid += 1
        elif cfg.skip_invalid:
            skipped += 1
        else:
            raise DataError(f"{item} (set data.skip_invalid to skip such rows)")
    if valid == 0:
        raise DataError(f"{path}: no valid QA rows ({skipped} invalid rows skipped)")
    _checked[key] = QAFileReport(str(path), valid, skipped)
    return _checked[key]


def check_training_inputs(cfg: RunConfig) -> dict[str, QAFileReport]:
    """What a fine-tuning run (or sweep) can check without Ray, for a job to call before it connects: demo
    defaults or the keys a run must name (`fill_demo_defaults`), option combinations, every row of data.train
    and data.dev. Returns the split reports; `prepare_run` repeats these checks at no cost (files not re-read)."""
    fill_demo_defaults(cfg)
    check_run_config(cfg)
    return {split: check_qa_file(getattr(cfg.data, split), cfg.data) for split in ("train", "dev")}


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
    """Ray Dataset with columns question (str), answers (str: the answers joined by tabs), evidence (str).

    Built on the driver from the rows `check_qa_file` accepts (invalid rows skipped as it counts them), so the
    dataset holds exactly what was validated, a .source/.target pair joined by line number. The QA text lives
    in the object store (about 200 bytes a row); Ray Data tokenizes it in parallel blocks.
    """
    import pyarrow as pa

    examples = [item for _, item in iter_qa_rows(path, cfg) if isinstance(item, QAExample)]
    if not examples:
        raise DataError(f"{path}: no valid QA rows")
    table = pa.table({"question": [e.question for e in examples],
                      # tab-joined: Arrow columns of ragged lists cost more than they help here
                      "answers": ["\t".join(e.answers) for e in examples],
                      "evidence": [e.evidence for e in examples]})
    block_rows = min(_BLOCK_ROWS, max(1, math.ceil(len(examples) / 8)))
    return ray.data.from_arrow([table.slice(start, block_rows) for start in range(0, len(examples), block_rows)])


@functools.lru_cache(maxsize=4)
def _tokenizer(name_or_path: str):

    return AutoTokenizer.from_pretrained(name_or_path)


@functools.lru_cache(maxsize=4)
def _model_config(name_or_path: str):

    return AutoConfig.from_pretrained(name_or_path)


class QATokenizer:
    """`map_batches` function: adds fixed-length question token ids (question encoder) and target ids (the
    generator kind's `targets`).

    Fixed lengths so batches stack without a collate step; the tokenizers load once per Ray worker process.
    """

    def __init__(self, question_tokenizer: str, generator_tokenizer: str, max_question_length: int,
                 max_target_length: int):
        self.question_tokenizer, self.generator_tokenizer = question_tokenizer, generator_tokenizer
        self.max_question_length, self.max_target_length = max_question_length, max_target_length

    def __call__(self, batch: dict) -> dict:

        questions = [str(q) for q in batch["question"]]
        encoded = _tokenizer(self.question_tokenizer)(
            questions, padding="max_length", truncation=True, max_length=self.max_question_length, return_tensors="np")
        targets = [str(a).split("\t")[0] for a in batch["answers"]]
        config = _model_config(self.generator_tokenizer)
        labels = kind_of_config(config).targets(_tokenizer(self.generator_tokenizer), config, targets,
                                                self.max_target_length)
        batch["question_ids"] = encoded["input_ids"].astype(np.int64)
        batch["question_mask"] = encoded["attention_mask"].astype(np.int64)
        batch["labels"] = labels.astype(np.int64)
        return batch
