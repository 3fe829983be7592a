"""End-to-end retriever training with a live index: the context encoder's weights are re-embedded into new index
versions while training runs (both encoders learning once past their freeze steps), the group rolls forward, a
resumed run continues the schedule, a refresh that fails leaves the served version in place, and bad
refresh/rerank settings are one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import RunConfig, apply_overrides
from pipeline.errors import ConfigError, ModelLoadError
from pipeline.index.manifest import read_manifest
from pipeline.index.versions import list_versions, resolve_version
from pipeline.model.encoders import load_encoder
from pipeline.model.rag import load_rag_model
from pipeline.retrieval.group import group_status, stop_retrieval_group
from pipeline.retrieval.group_record import served_version
from pipeline.train.checks import check_run_config
from pipeline.train.finetune import prepare_run, run_finetune
from tests.conftest import TEST_NAMESPACE, largest_change, weights_of


@pytest.fixture
def own_index(tiny_demo, tmp_path):
    """A copy of the tiny demo's index location: refreshes add versions to it, and other tests share the original."""
    location = tmp_path / "index"
    shutil.copytree(tiny_demo["index.directory"], location)
    return location


def _config(tiny_demo, tmp_path, location, group, **overrides) -> RunConfig:
    return apply_overrides(RunConfig(), {
        **tiny_demo, "index.directory": str(location), "train.output_dir": str(tmp_path / "run"),
        "retrieval.group": group, "train.num_workers": 1, "model.train_context_encoder": True,
        "train.encoder_freeze_steps": 1, "train.context_encoder_freeze_steps": 1, "refresh.embed_num_cpus": 0.25,
        **overrides})


def test_background_refreshes_roll_the_group_forward_and_a_resumed_run_continues_them(tiny_demo, tmp_path,
                                                                                       own_index):
    first = _config(tiny_demo, tmp_path, own_index, "refresh", **{"refresh.every_steps": 3, "train.max_steps": 6,
                                                                  "train.encoder_lr": 1e-3,
                                                                  "train.context_encoder_lr": 1e-3})
    try:
        result = run_finetune(first)
        report = result.history[-1]
        assert report["step"] == 6 and report["refresh_failed"] == 0
        # Both encoders start from the index's encoder and learn once past their freeze step (1 here).
        _, pretrained = load_encoder("")
        trained = load_rag_model(result.model_dir)
        question_moved = largest_change(weights_of(pretrained), weights_of(trained.head.question_encoder))
        context_moved = largest_change(weights_of(pretrained), weights_of(trained.context_encoder))
        assert question_moved > 1e-4 and context_moved > 1e-4, (question_moved, context_moved)
        _, alone = load_encoder(str(result.model_dir / "context_encoder"))  # exported in HF format, loadable alone
        assert largest_change(weights_of(trained.context_encoder), weights_of(alone)) == 0.0
        # Refreshes of steps 3 and 6 were started; the one of step 6 finished as training ended (or one of them
        # was skipped because the other still ran): either way the group serves a version this run built.
        assert report["refreshes"] + report["refresh_skipped"] == 2 and report["refreshes"] >= 1
        served = served_version("refresh", TEST_NAMESPACE)
        assert served.name == resolve_version(own_index).name != "v0001"
        assert {m["version"] for m in group_status("refresh", TEST_NAMESPACE)} == {served.name}
        manifest = read_manifest(served.directory)
        assert manifest.fingerprint["trained_at_step"] in (3, 6)
        assert (served.directory / "context_encoder" / "config.json").is_file()
        # On disk: exactly what the replicas hold (the served version and the previous one, for calls in flight).
        held = {Path(d).name for m in group_status("refresh", TEST_NAMESPACE) for d in m["held_versions"]}
        assert set(list_versions(own_index)) == held and served.name in held
        # The index holds what the exported context encoder makes of the passages it was refreshed from.
        assert manifest.count == read_manifest(tiny_demo["index.directory"]).count

        resumed = run_finetune(apply_overrides(first, {"train.max_steps": 12, "train.epochs": 2}))
        again = resumed.history[-1]
        assert again["resumed_at_step"] == 6 and again["step"] == 12
        assert resumed.history[0] == result.history[0]  # the steps before the stop were not trained again
        assert again["refreshes"] + again["refresh_skipped"] == 4  # steps 9 and 12 after 3 and 6: continued
        assert again["refreshes"] > report["refreshes"] and again["served_version"] > report["served_version"]
        assert again["served_version"] == served_version("refresh", TEST_NAMESPACE).name
        assert "v0001" not in list_versions(own_index)  # two roll-forwards later no group holds it: removed
    finally:
        stop_retrieval_group("refresh", TEST_NAMESPACE)


def test_a_refresh_that_fails_leaves_the_served_version_and_the_run_going(tiny_demo, tmp_path, own_index):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the refreshed versions should go")
    cfg = _config(tiny_demo, tmp_path, own_index, "refresh-fails",
                  **{"refresh.every_steps": 2, "refresh.blocking": True, "refresh.location": str(blocker),
                     "train.max_steps": 4})
    try:
        result = run_finetune(cfg)
        report = result.history[-1]
        assert report["step"] == 4 and report["refresh_failed"] == 2 and report["refreshes"] == 0
        assert report["served_version"] == "v0001" and report["refresh_stall_s"] > 0
        assert served_version("refresh-fails", TEST_NAMESPACE).name == "v0001"
        assert list_versions(own_index) == ["v0001"]
    finally:
        stop_retrieval_group("refresh-fails", TEST_NAMESPACE)


@pytest.mark.parametrize("overrides, message", [
    ({"refresh.every_steps": -1}, r"refresh.every_steps: must be >= 0, got -1"),
    ({"refresh.every_steps": 5, "model.train_context_encoder": False},
     r"refresh.every_steps: a refresh re-embeds the passages with the trained context encoder"),
    ({"refresh.every_steps": 5, "model.train_context_encoder": True, "retrieval.mode": "local",
      "train.num_workers": 1}, r"refresh.every_steps: .* use retrieval.mode ray, not 'local'"),
    ({"retrieval.rerank_depth": 3, "model.train_context_encoder": True},
     r"retrieval.rerank_depth: 3 passages cannot be re-scored down to model.n_docs=5"),
    ({"retrieval.rerank_depth": 10}, r"retrieval.rerank_depth: re-scoring uses the trained context encoder"),
])
def test_bad_refresh_and_rerank_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        check_run_config(apply_overrides(RunConfig(), overrides))
    assert "\n" not in str(error.value)


def test_a_context_encoder_of_another_dimension_fails_before_training(ray_cluster, tiny_demo, tmp_path):
    from transformers import BertConfig, BertModel

    other = tmp_path / "encoder32"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=30522)).save_pretrained(other)
    from transformers import AutoTokenizer

    from pipeline.model.encoders import default_encoder_path

    AutoTokenizer.from_pretrained(default_encoder_path()).save_pretrained(other)
    cfg = apply_overrides(RunConfig(), {**tiny_demo, "train.output_dir": str(tmp_path / "run"),
                                        "model.train_context_encoder": True, "model.context_encoder": str(other)})
    with pytest.raises(ModelLoadError, match=r"model.context_encoder '.*encoder32' gives 32-dim vectors but index"):
        prepare_run(cfg)


def test_rerank_keeps_the_passages_the_current_context_encoder_scores_best(tiny_demo):
    from pipeline.model.encoders import encode, passage_text
    from pipeline.model.rag import build_rag_model
    from pipeline.model.rag_with_retrieval import RagWithRetrieval
    from pipeline.retrieval.local import LocalRetriever

    cfg = apply_overrides(RunConfig(), tiny_demo)
    parts = build_rag_model("", cfg.model.generator, "rag_sequence", "mean", context_encoder="")
    with torch.no_grad():  # a context encoder that no longer agrees with the index it was built with
        for p in parts.context_encoder.encoder.layer[-1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    rag = RagWithRetrieval(parts, LocalRetriever(tiny_demo["index.directory"]), cfg.model, rerank_depth=12)
    rag.eval()
    questions = ["Where was the first person born?", "Who founded the company?"]
    batch = parts.question_tokenizer(questions, padding=True, return_tensors="pt")
    with torch.no_grad():
        q = rag.question_vectors(batch["input_ids"], batch["attention_mask"])
        deep = rag.retrieve(q)
        hits, doc_vectors = rag.retrieve_and_score(q)
        for b in range(len(questions)):
            fresh = encode(parts.context_encoder, parts.context_tokenizer,
                           [passage_text(t, x) for t, x in zip(deep.titles[b], deep.texts[b])], "mean", 192)
            best = np.argsort(-(fresh @ q[b]).numpy(), kind="stable")[:5]
            assert list(hits.ids[b]) == list(deep.ids[b][best])
            np.testing.assert_allclose(doc_vectors[b].numpy(), fresh[best].numpy(), rtol=1e-4, atol=1e-5)
    assert deep.ids.shape[1] == 12 and hits.ids.shape[1] == 5
