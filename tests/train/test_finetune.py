"""TRAIN: Ray Data -> TorchTrainer (2 workers) -> retrieval group -> RAG loss, checkpoints, bad input
(resume: tests/train/test_refresh.py, tests/train/test_faults.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.config import RunConfig, apply_overrides, parse_config
from pipeline.errors import ConfigError, DataError, ModelLoadError
from pipeline.index.versions import resolve_version
from pipeline.model.rag import load_rag_model
from pipeline.retrieval.group import stop_retrieval_group
from pipeline.retrieval.group_record import list_members
from pipeline.train.finetune import prepare_run, run_finetune
from pipeline.train.qa_data import QATokenizer, check_qa_file, read_qa_dataset
from tests.conftest import TEST_NAMESPACE


def _config(tiny_demo, tmp_path, **overrides) -> RunConfig:
    return apply_overrides(RunConfig(), {**tiny_demo, "train.output_dir": str(tmp_path / "run"),
                                         "retrieval.group": "ft", **overrides})


@pytest.fixture
def stop_group():
    yield
    stop_retrieval_group("ft", TEST_NAMESPACE)


def test_two_workers_train_against_the_group_and_export_a_hf_model(tiny_demo, tmp_path, stop_group):
    cfg = _config(tiny_demo, tmp_path, **{"train.num_workers": 2, "train.epochs": 3, "train.profile": True})
    result = run_finetune(cfg)
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    steps_per_epoch = 48 // (4 * 2)
    assert [h["step"] for h in result.history] == [steps_per_epoch, 2 * steps_per_epoch, 3 * steps_per_epoch]
    best = result.history[result.best_epoch - 1]
    assert best["dev_count"] == 8
    # The exported model's retrieval, recomputed by hand, is what its epoch reported.
    assert best["dev_hit@k"] == pytest.approx(_hit_at_k_by_hand(result.model_dir, tiny_demo, k=cfg.model.n_docs))
    assert result.history[-1]["retrieval_s_per_call"] > 0
    assert [(m.shard, m.replica) for m in list_members("ft", TEST_NAMESPACE)] == [(0, 0)]
    parts = load_rag_model(result.model_dir)
    assert parts.model_type == "rag_sequence" and parts.pooling == "mean"
    assert (result.model_dir / "question_encoder" / "config.json").is_file()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == result.history


def _hit_at_k_by_hand(model_dir, tiny_demo, k: int) -> float:
    """hit@k of an exported question encoder on the dev questions, without the pipeline's retrieval: masked-mean
    pooled question vectors, exact inner-product top k over the index's stored vectors, gold answer as words."""
    import numpy as np
    import pyarrow as pa
    import torch
    from transformers import AutoModel, AutoTokenizer

    from pipeline.train.metrics import answer_hit

    tokenizer = AutoTokenizer.from_pretrained(model_dir / "question_encoder")
    encoder = AutoModel.from_pretrained(model_dir / "question_encoder").eval()
    rows = [json.loads(line) for line in open(tiny_demo["data.dev"])]
    batch = tokenizer([r["question"] for r in rows], padding=True, truncation=True, max_length=32,
                      return_tensors="pt")
    with torch.no_grad():
        states = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    questions = ((states * mask).sum(1) / mask.sum(1)).numpy()
    index = resolve_version(tiny_demo["index.directory"]).directory  # the version the group served
    dimension = json.loads((index / "manifest.json").read_text())["dimension"]
    vectors = np.fromfile(index / "vectors.f32", dtype=np.float32).reshape(-1, dimension)
    texts = pa.ipc.open_file(str(index / "passages.arrow")).read_all().column("text").to_pylist()
    top = np.argsort(-(questions @ vectors.T), axis=1)[:, :k]
    return float(np.mean([answer_hit([texts[i] for i in ids], r["answers"]) for ids, r in zip(top, rows)]))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "source"])
def test_every_qa_format_streams_through_ray_data_tokenized(ray_cluster, tiny_demo, tmp_path, fmt):
    rows = [json.loads(line) for line in open(tiny_demo["data.dev"])]
    path = tmp_path / f"qa.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "parquet":
        pd.DataFrame(rows).to_parquet(path)
    elif fmt == "csv":
        pd.DataFrame([{"question": r["question"], "answers": r["answers"][0]} for r in rows]).to_csv(path, index=False)
    else:
        path.write_text("".join(r["question"] + "\n" for r in rows))
        path.with_suffix(".target").write_text("".join(r["answers"][0] + "\n" for r in rows))
    cfg = RunConfig()
    assert check_qa_file(path, cfg.data).valid == len(rows)
    tokenizer = QATokenizer(tiny_demo["index.directory"] and _encoder(), tiny_demo["model.generator"], 32, 24)
    batch = read_qa_dataset(path, cfg.data).map_batches(tokenizer, batch_format="numpy").take_batch(100)
    assert sorted(batch["question"]) == sorted(r["question"] for r in rows)
    pairs = {q: a.split("\t")[0] for q, a in zip(batch["question"], batch["answers"])}
    assert pairs == {r["question"]: r["answers"][0] for r in rows}  # each question keeps its own answer
    assert batch["question_ids"].shape == (len(rows), 32) and batch["labels"].shape == (len(rows), 24)


def _encoder() -> str:
    from pipeline.model.encoders import default_encoder_path

    return default_encoder_path()


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bad_qa_rows_are_refused_with_file_and_row(ray_cluster, tiny_demo, tmp_path):
    bad = _write(tmp_path / "bad.jsonl", [{"question": "q1?", "answers": ["a"]}, {"question": "q2?", "answers": []},
                                          {"question": " ", "answers": ["c"]}])
    cfg = _config(tiny_demo, tmp_path, **{"data.train": bad})
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'answers' is missing or empty"):
        prepare_run(cfg)
    skipping = apply_overrides(cfg, {"data.skip_invalid": True})
    report = check_qa_file(bad, skipping.data)
    assert (report.valid, report.skipped) == (1, 2)


def test_unknown_qa_columns_are_named(ray_cluster, tiny_demo, tmp_path):
    bad = _write(tmp_path / "cols.jsonl", [{"query": "q?", "answers": ["a"]}])
    with pytest.raises(DataError, match=r"cols.jsonl: missing column 'question'; found query, answers"):
        prepare_run(_config(tiny_demo, tmp_path, **{"data.train": bad}))


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--train.learning_rate", "1e-3"], "x")
    assert exit_info.value.code == 2 and "unrecognized arguments: --train.learning_rate" in capsys.readouterr().err
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"run.yaml: train.learning_rate: unknown key 'train.learning_rate'"):
        parse_config(["--config", str(config)], "x")
    config.write_text("train:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"run.yaml: train.lr: expected float, got 'fast'"):
        parse_config(["--config", str(config)], "x")


def test_missing_generator_tokenizer_fails_before_training(ray_cluster, tiny_demo, tmp_path):
    with pytest.raises(ModelLoadError, match=r"model.generator '.*no_such_generator': cannot load"):
        prepare_run(_config(tiny_demo, tmp_path, **{"model.generator": str(tmp_path / "no_such_generator")}))


def test_question_encoder_of_another_dimension_fails_before_training(ray_cluster, tiny_demo, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    other = tmp_path / "encoder32"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(other)
    AutoTokenizer.from_pretrained(_encoder()).save_pretrained(other)
    with pytest.raises(ModelLoadError, match=r"gives 32-dim vectors but index .* was built with dimension 384"):
        prepare_run(_config(tiny_demo, tmp_path, **{"model.question_encoder": str(other)}))


def test_a_job_turns_a_pipeline_error_into_one_line_and_exit_code_2(capsys):
    from pipeline.errors import run_job

    def main():
        raise DataError("qa.jsonl:7: field 'answers' is missing or empty")

    with pytest.raises(SystemExit) as exit_info:
        run_job(main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err == "error: qa.jsonl:7: field 'answers' is missing or empty\n"
