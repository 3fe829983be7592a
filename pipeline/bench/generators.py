"""The generator kinds side by side on the same work: seconds per training step (loss, backward, AdamW step) and
per answer batch, for each generator given, on the same questions, the same k passages per question (the gold
passage and k - 1 others, fixed), the same question encoder and the same batch; turns interleaved so that load
from elsewhere hits every generator alike. The retrieval call is left out on purpose: it is the same for every
kind and measured by jobs/benchmark_retrieval.py.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config import RunConfig, apply_overrides
from pipeline.model.generators import kind_of
from pipeline.model.rag import build_rag_model
from pipeline.model.rag_with_retrieval import RagWithRetrieval
from pipeline.retrieval.result import RetrievalResult
from pipeline.train.loop import _autocast


@dataclass
class BenchQuestion:
    question: str
    answer: str
    passages: list[tuple[str, str]]  # (title, text): the gold passage first, then k - 1 others


class FixedPassages:
    """The retrieval contract answering every call with the next batch's fixed passages (random unit vectors)."""

    def __init__(self, batch: list[BenchQuestion], dimension: int):
        rng = np.random.default_rng(0)
        k = len(batch[0].passages)
        vectors = rng.standard_normal((len(batch), k, dimension)).astype(np.float32)
        self.result = RetrievalResult(np.arange(len(batch) * k).reshape(len(batch), k), np.zeros((len(batch), k),
                                      np.float32), vectors / np.linalg.norm(vectors, axis=2, keepdims=True),
                                      [[t for t, _ in q.passages] for q in batch],
                                      [[x for _, x in q.passages] for q in batch])

    def retrieve(self, queries: np.ndarray, k: int) -> RetrievalResult:
        return self.result


def bench_questions(documents: list[dict], qa_rows: list[dict], count: int, n_docs: int,
                    seed: int = 0) -> list[BenchQuestion]:
    """`count` questions whose evidence is in `documents`, each with its gold passage and n_docs - 1 random others."""
    rng = random.Random(seed)
    by_text = {d["text"]: d for d in documents}
    out = []
    for row in qa_rows:
        gold = next((d for t, d in by_text.items() if row["evidence"] in t), None)
        if gold is None:
            continue
        others = rng.sample([d for d in documents if d is not gold], n_docs - 1)
        out.append(BenchQuestion(row["question"], row["answers"][0],
                                 [(d["title"], d["text"]) for d in [gold, *others]]))
        if len(out) == count:
            break
    return out


def _rag_for(encoder: str, generator: str, cfg: RunConfig, batch: list[BenchQuestion]) -> RagWithRetrieval:
    parts = build_rag_model(encoder, generator, cfg.model.model_type, "mean", dropout=0.0)
    kind_of(parts).configure(parts, cfg.model)
    dimension = parts.head.question_encoder.config.hidden_size
    return RagWithRetrieval(parts, FixedPassages(batch, dimension), cfg.model)


def _step_inputs(rag: RagWithRetrieval, batch: list[BenchQuestion], cfg: RunConfig):
    parts = rag.parts
    questions = [q.question for q in batch]
    encoded = parts.question_tokenizer(questions, padding=True, truncation=True,
                                       max_length=cfg.model.max_question_length, return_tensors="pt")
    labels = torch.as_tensor(rag.kind.targets(parts.generator_tokenizer, parts.head.config.generator,
                                              [q.answer for q in batch], cfg.model.max_target_length))
    return questions, encoded["input_ids"], encoded["attention_mask"], labels


def compare_generators(encoder: str, generators: dict[str, str], batch: list[BenchQuestion], model_type: str,
                       turns: int, precision: str = "no") -> dict:
    """Per generator: parameters, kind, seconds per train step and per answer batch (p50 over turns)."""
    cfg = apply_overrides(RunConfig(), {"model.model_type": model_type, "model.n_docs": len(batch[0].passages),
                                        "train.precision": precision})
    rags = {name: _rag_for(encoder, path, cfg, batch) for name, path in generators.items()}
    optimizers = {name: torch.optim.AdamW([p for p in rag.parameters() if p.requires_grad], lr=1e-5)
                  for name, rag in rags.items()}
    seconds = {name: {"train_step": [], "answer": []} for name in rags}
    for turn in range(turns + 1):  # turn 0 warms up and is not counted
        for name, rag in rags.items():
            inputs = _step_inputs(rag, batch, cfg)
            rag.train()
            started = time.perf_counter()
            with _autocast(cfg, torch.device("cpu")):
                loss = rag(*inputs)
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            train_s = time.perf_counter() - started
            started = time.perf_counter()
            rag.answer(inputs[0])
            answer_s = time.perf_counter() - started
            if turn:
                seconds[name]["train_step"].append(train_s)
                seconds[name]["answer"].append(answer_s)
    report = {}
    for name, rag in rags.items():
        generator = rag.parts.head.generator
        report[name] = {"path": generators[name], "kind": rag.kind.name,
                        "generator_parameters": sum(p.numel() for p in generator.parameters()),
                        "train_step_s_p50": float(np.median(seconds[name]["train_step"])),
                        "answer_batch_s_p50": float(np.median(seconds[name]["answer"])),
                        "train_step_s": seconds[name]["train_step"], "answer_batch_s": seconds[name]["answer"]}
    return report
