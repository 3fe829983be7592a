"""jobs/benchmark_generators.py's pieces on tiny models: every generator does the same work (the same questions
and fixed passages), each is timed on both calls, and the report is written as JSON and a real plot."""

from __future__ import annotations

import json

import torch

from jobs.benchmark_generators import plot
from pipeline.bench.generators import FixedPassages, bench_questions, compare_generators
from pipeline.bench.report_files import write_report_files
from tests.conftest import assert_is_a_plot
from tests.model.test_causal_rag import save_tiny_causal_lm
from tests.model.test_rag import save_tiny_bart, save_tiny_bert

DOCUMENTS = [{"title": f"Doc {i}", "text": f"the key of river {i} is stone"} for i in range(8)]
ROWS = [{"question": f"what is the key of river {i} ?", "answers": ["stone"], "evidence": f"river {i} is"}
        for i in range(8)]


def test_each_question_gets_its_gold_passage_first_and_distinct_others():
    batch = bench_questions(DOCUMENTS, ROWS, count=4, n_docs=3)
    assert len(batch) == 4
    for i, question in enumerate(batch):
        assert question.passages[0] == ("Doc " + str(i), DOCUMENTS[i]["text"])
        assert len(set(question.passages)) == 3


def test_the_fixed_retriever_gives_every_call_the_same_passages_as_unit_vectors():
    batch = bench_questions(DOCUMENTS, ROWS, count=2, n_docs=3)
    hits = FixedPassages(batch, 16).retrieve(None, 3)
    assert hits.vectors.shape == (2, 3, 16)
    assert torch.allclose(torch.as_tensor(hits.vectors).norm(dim=2), torch.ones(2, 3), atol=1e-5)
    assert hits.titles[1][0] == "Doc 1"


def test_both_kinds_are_timed_on_the_same_work_and_reported(tmp_path):
    save_tiny_causal_lm(tmp_path / "llama", "llama")
    generators = {"bart": str(save_tiny_bart(tmp_path / "bart")), "llama": str(tmp_path / "llama")}
    batch = bench_questions(DOCUMENTS, ROWS, count=2, n_docs=3)
    results = compare_generators(str(save_tiny_bert(tmp_path / "bert")), generators, batch, "rag_token", turns=2)
    assert {r["kind"] for r in results.values()} == {"seq2seq", "causal"}
    for r in results.values():
        assert len(r["train_step_s"]) == len(r["answer_batch_s"]) == 2  # the warm-up turn is not counted
        assert r["train_step_s_p50"] > 0 and r["answer_batch_s_p50"] > 0 and r["generator_parameters"] > 0
    report = {"model_type": "rag_token", "batch": 2, "n_docs": 3, "threads": 1, "generators": results}
    json_path, png_path = write_report_files(report, tmp_path / "out", "generators", plot)
    assert json.loads(json_path.read_text())["generators"]["llama"]["kind"] == "causal"
    assert_is_a_plot(png_path)
