"""TRAIN with a decoder-only generator: the same Ray Data -> TorchTrainer -> retrieval group run as the seq2seq
one, with a tiny Llama built from the demo's tokenizer; then `jobs/evaluate.py` and `jobs/ask.py` unchanged on the
exported model, and LM-supervised retriever training with the generator frozen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from jobs import ask, evaluate
from pipeline.config import RunConfig, apply_overrides
from pipeline.demo.causal_generator import ensure_causal_generator
from pipeline.demo.generated import DemoPaths
from pipeline.model.encoders import default_encoder_path, load_encoder
from pipeline.model.generators import kind_of
from pipeline.model.rag import load_rag_model
from pipeline.retrieval.group import stop_retrieval_group
from pipeline.train.finetune import run_finetune
from tests.conftest import TEST_NAMESPACE

pytestmark = pytest.mark.slow  # TorchTrainer runs


@pytest.fixture(scope="module")
def causal_generator(tiny_demo):
    """An untrained tiny Llama with the demo tokenizer (no reading practice: these tests check the plumbing)."""
    demo = DemoPaths.at(Path(tiny_demo["model.generator"]).parent)
    return str(ensure_causal_generator(demo, lambda: [], steps=0))


@pytest.fixture
def stop_group():
    yield
    stop_retrieval_group("causal", TEST_NAMESPACE)


def _config(tiny_demo, causal_generator, tmp_path, **overrides) -> RunConfig:
    return apply_overrides(RunConfig(), {**tiny_demo, "model.generator": causal_generator,
                                         "train.output_dir": str(tmp_path / "run"), "retrieval.group": "causal",
                                         "model.max_target_length": 8, **overrides})


def _cli(tiny_demo, causal_generator, tmp_path) -> list[str]:
    keys = ("index.directory", "retrieval.namespace", "retrieval.actor_num_cpus")
    return [arg for key in keys for arg in (f"--{key}", str(tiny_demo[key]))] + [
        "--model.generator", causal_generator, "--train.output_dir", str(tmp_path / "run"),
        "--retrieval.group", "causal", "--retrieval.mode", "local"]


def test_two_workers_fine_tune_a_causal_generator_and_the_jobs_use_it(tiny_demo, causal_generator, tmp_path,
                                                                      stop_group, capsys):
    cfg = _config(tiny_demo, causal_generator, tmp_path, **{"train.num_workers": 2, "train.epochs": 2,
                                                            "model.model_type": "rag_token"})
    result = run_finetune(cfg)
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 2 and losses[-1] < losses[0]
    assert result.history[-1]["dev_count"] == 8
    parts = load_rag_model(result.model_dir)
    assert kind_of(parts).name == "causal" and parts.model_type == "rag_token"
    AutoModelForCausalLM.from_pretrained(result.model_dir / "generator")  # the generator alone loads
    cli = _cli(tiny_demo, causal_generator, tmp_path)
    capsys.readouterr()
    assert evaluate.main(cli + ["--qa_file", tiny_demo["data.dev"]]) == 0
    metrics = json.loads(capsys.readouterr().out.split("\n[evaluate]")[0])
    # evaluate scores the exported model as the run's own evaluation of that epoch did
    assert metrics["exact_match"] == pytest.approx(result.history[result.best_epoch - 1]["dev_exact_match"])
    assert ask.main(cli + ["Where was Brenlon Damla born?"]) == 0
    assert capsys.readouterr().out.startswith("answer: ")


def test_distillation_trains_the_retriever_of_a_frozen_causal_generator(tiny_demo, causal_generator, tmp_path,
                                                                       stop_group):
    cfg = _config(tiny_demo, causal_generator, tmp_path, **{
        "train.num_workers": 1, "train.epochs": 1, "train.train_generator": False,
        "model.retriever_loss": "distill", "train.encoder_freeze_steps": 0, "train.precision": "bf16"})
    result = run_finetune(cfg)
    exported = load_rag_model(result.model_dir)
    start = AutoModelForCausalLM.from_pretrained(causal_generator)
    for before, after in zip(start.parameters(), exported.head.generator.parameters(), strict=True):
        assert torch.equal(before, after)  # the generator never moved
    _, original = load_encoder(default_encoder_path())  # the question encoder started as the index's encoder
    moved = [not torch.equal(a, b) for a, b in zip(original.parameters(), exported.head.question_encoder.parameters())]
    assert any(moved)


def test_a_lora_run_resumes_from_its_adapter_checkpoint_and_exports_a_merged_generator(
        tiny_demo, causal_generator, tmp_path, stop_group):
    lora = {"train.num_workers": 1, "model.lora_r": 4, "train.lr": 1e-3}
    first = run_finetune(_config(tiny_demo, causal_generator, tmp_path, **lora, **{"train.epochs": 1}))
    assert first.history[-1]["checkpoint_mb"] > 0  # reported with the epoch that saved a checkpoint
    resumed = run_finetune(_config(tiny_demo, causal_generator, tmp_path, **lora, **{"train.epochs": 2}))
    assert resumed.history[-1]["resumed_at_step"] == first.history[-1]["step"]
    assert resumed.history[-1]["step"] == 2 * first.history[-1]["step"]
    exported = load_rag_model(resumed.model_dir)
    assert exported.lora is None and (resumed.model_dir / "generator_adapter" / "adapter_config.json").is_file()
    AutoModelForCausalLM.from_pretrained(resumed.model_dir / "generator")
