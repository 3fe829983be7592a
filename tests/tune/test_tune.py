"""TUNE: the sweep's input checks (no Ray), and a real 2-trial sweep: Ray Tune trials that are each a whole
TorchTrainer fine-tuning run, all served by ONE retrieval group, on the session's small exact index."""

from __future__ import annotations

import json
import re
import threading
import uuid
from pathlib import Path

import pytest

from pipeline.config import RunConfig, load_yaml, set_key
from pipeline.errors import ConfigError
from pipeline.tune.search_space import (
    DATA_CPUS,
    TRIAL_DRIVER_CPUS,
    check_sweep_config,
    concurrent_trials,
    reported_metrics,
    to_tune_domains,
)
from tests.conftest import TEST_NAMESPACE


def _config(search_space: dict | None = None, **keys) -> RunConfig:
    cfg = RunConfig()
    if search_space is not None:
        cfg.tune.search_space = search_space
    for key, value in keys.items():
        set_key(cfg, key.replace("__", "."), value)
    return cfg


# ----------------------------------------------------------------------------- input checks, no Ray

@pytest.mark.parametrize("space, message", [
    ({"train.lrr": {"uniform": [1e-4, 1e-3]}}, "tune.search_space: train.lrr: not a training option"),
    ({"optimizer.lr": {"uniform": [1e-4, 1e-3]}}, "tune.search_space: optimizer.lr: not a training option"),
    ({"train.lr": {"uniform": [1]}}, "tune.search_space: train.lr: uniform needs [low, high]"),
    ({"train.lr": {"choice": []}}, "tune.search_space: train.lr: choice needs a non-empty list"),
    ({"train.lr": {"normal": [0, 1]}}, "tune.search_space: train.lr: unknown distribution 'normal'"),
    ({"train.lr": 3e-4}, "tune.search_space: train.lr: expected one distribution"),
    ({"train.lr": {"uniform": [1e-3, 1e-4]}}, "tune.search_space: train.lr: uniform needs low < high"),
    ({"train.lr": {"loguniform": [0, 1e-3]}}, "tune.search_space: train.lr: loguniform needs low > 0"),
    ({"train.lr": {"uniform": ["fast", 1]}}, "tune.search_space: train.lr: uniform bounds must be finite numbers"),
    ({"train.epochs": {"uniform": [1, 3]}}, "tune.search_space: train.epochs: uniform samples floats"),
    ({"train.warmup_steps": {"randint": [0, 2.5]}}, "tune.search_space: train.warmup_steps: randint bounds"),
    ({"train.batch_size": {"randint": [0, 8]}}, "tune.search_space: train.batch_size: must be >= 1"),
    ({"model.label_smoothing": {"choice": [0.0, 1.5]}}, "tune.search_space: model.label_smoothing: must be in [0, 1)"),
    ({"model.model_type": {"choice": ["rag_token", "rag_tokn"]}}, "tune.search_space: model.model_type: 'rag_tokn'"),
    ({"train.epochs": {"choice": [2, "three"]}}, "tune.search_space: train.epochs: expected int"),
])
def test_bad_search_space_is_a_config_error_naming_the_key(space, message):
    with pytest.raises(ConfigError) as error:
        check_sweep_config(_config(space))
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("key", ["index.factory", "retrieval.group", "knowledge_base.documents", "data.train",
                                 "model.generator", "model.max_target_length", "train.output_dir"])
def test_keys_every_trial_shares_cannot_be_swept(key):
    with pytest.raises(ConfigError, match=f"tune.search_space: {key}: every trial shares one index"):
        check_sweep_config(_config({key: {"choice": ["a", "b"]}}))


def test_metric_that_is_never_reported_is_a_config_error():
    with pytest.raises(ConfigError, match="tune.metric: 'dev_em' is never reported; the training loop reports "
                                          "epoch, step, .*dev_exact_match, dev_f1"):
        check_sweep_config(_config(tune__metric="dev_em"))
    with pytest.raises(ConfigError, match="tune.metric: 'retrieval_s_per_call' is never reported"):
        check_sweep_config(_config(tune__metric="retrieval_s_per_call"))
    check_sweep_config(_config(tune__metric="retrieval_s_per_call", train__profile=True))
    reported = set(reported_metrics(RunConfig()))
    assert {"dev_exact_match", "dev_f1", "dev_hit@k", "dev_recall@1", "dev_recall@k"} <= reported


@pytest.mark.parametrize("keys, message", [
    ({"tune__num_samples": 0}, "tune.num_samples: must be >= 1"),
    ({"tune__grace_period": 3, "train__epochs": 2}, "tune.grace_period: 3 epochs, but trials run at most 2"),
    ({"retrieval__mode": "local"}, "retrieval.mode: the trials of a sweep share one retrieval group"),
])
def test_sweep_settings_are_checked(keys, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        check_sweep_config(_config(**keys))


def test_search_space_becomes_tune_domains_of_the_keys_types():
    from ray.tune.search.sample import Categorical, Float, Integer

    # As a YAML file or --tune.search_space gives it: YAML 1.1 reads 3e-4 as a string.
    space = check_sweep_config(_config({
        "train.lr": {"loguniform": ["3e-4", "3e-3"]}, "train.weight_decay": {"uniform": [0, 0.1]},
        "train.warmup_steps": {"randint": [0, 10]}, "model.label_smoothing": {"choice": ["0.0", 0.1]},
    }))
    domains = to_tune_domains(space)
    assert isinstance(domains["train.lr"], Float)
    assert (domains["train.lr"].lower, domains["train.lr"].upper) == (3e-4, 3e-3)
    assert isinstance(domains["train.weight_decay"], Float)
    assert isinstance(domains["train.warmup_steps"], Integer) and domains["train.warmup_steps"].upper == 10
    assert isinstance(domains["model.label_smoothing"], Categorical)
    assert domains["model.label_smoothing"].categories == [0.0, 0.1]


def test_concurrent_trials_fit_the_cluster_cpus():
    cfg = _config(train__num_workers=2, train__cpus_per_worker=1.0, tune__max_concurrent_trials=8)
    space = check_sweep_config(cfg)
    # 16 CPUs - 1 for the retrieval group - DATA_CPUS for Ray Data, 2 CPUs (+ the driver's share) per trial.
    expected = int((16 - 1 - DATA_CPUS) // (2 + TRIAL_DRIVER_CPUS))
    assert concurrent_trials(cfg, space, {"CPU": 16.0}, reserved_cpus=1.0) == expected == 6
    assert concurrent_trials(cfg, space, {"CPU": 2.0}, reserved_cpus=1.0) == 1  # never below one
    # The largest sampled worker count sizes a trial.
    cfg.tune.search_space = {"train.num_workers": {"choice": [1, 4]}}
    assert concurrent_trials(cfg, check_sweep_config(cfg), {"CPU": 16.0}, reserved_cpus=1.0) == 3
    cfg.tune.max_concurrent_trials = 2
    assert concurrent_trials(cfg, check_sweep_config(cfg), {"CPU": 64.0}, reserved_cpus=1.0) == 2


@pytest.mark.parametrize("epochs, grace_period", [(2, 1), (5, 1), (6, 1), (16, 1), (6, 2), (3, 3), (4, 3)])
def test_asha_never_stops_a_trial_at_its_last_epoch_and_prunes_before_it(epochs, grace_period):
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from pipeline.tune.sweep import make_scheduler

    # A stop kills the trial's Train driver; at the last report that saves nothing and only risks its resources.
    cfg = _config(train__epochs=epochs, tune__grace_period=grace_period)
    scheduler = make_scheduler(cfg, check_sweep_config(cfg))
    scheduler.set_search_properties(cfg.tune.metric, cfg.tune.mode)
    trials = [Trial("trial", stub=True) for _ in range(8)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    stopped_at = {}
    for epoch in range(1, epochs + 1):  # trials report in step, each worse than those before it
        for i, trial in enumerate(trials):
            if i in stopped_at:
                continue
            action = scheduler.on_trial_result(None, trial, {"epoch": epoch, cfg.tune.metric: -float(i)})
            if action == TrialScheduler.STOP:
                stopped_at[i] = epoch
    assert all(epoch < epochs for epoch in stopped_at.values()), stopped_at
    if grace_period < epochs:  # a rung before the last epoch exists, and it prunes the weakest trials there
        assert stopped_at and stopped_at[len(trials) - 1] == grace_period
    else:
        assert stopped_at == {}


def test_tune_job_rejects_a_bad_search_space_before_starting_ray(monkeypatch):
    from jobs import tune as tune_job

    monkeypatch.setattr(tune_job, "connect_ray", lambda: pytest.fail("connected to Ray despite a bad config"))
    with pytest.raises(ConfigError, match="tune.search_space: train.lrr"):
        tune_job.main(["--tune.search_space", "{train.lrr: {uniform: [1e-4, 1e-3]}}"])


# ----------------------------------------------------------------------------- a real sweep

@pytest.fixture(scope="module")
def tiny_qa(tmp_path_factory):
    """4 training and 8 dev questions of the demo, and the demo's tiny BART generator."""
    from pipeline.demo.data import QUICK_READING_STEPS, ensure_demo_data

    root = tmp_path_factory.mktemp("tune_data")
    demo = ensure_demo_data(root / "demo", reading_steps=QUICK_READING_STEPS)
    for split, rows in (("train", 4), ("dev", 8)):
        lines = getattr(demo, split).read_text().splitlines()[:rows]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return {"train": root / "train.jsonl", "dev": root / "dev.jsonl", "generator": demo.generator}


def _sweep_config(corpus_file, flat_index, tiny_qa, tune_dir, group) -> RunConfig:
    # 1 step per epoch, 2 epochs, 2 trials at once: each trial is 1 worker x 1 CPU of the session's 4.
    return _config(
        {"train.lr": {"loguniform": [3e-4, 3e-3]}, "model.label_smoothing": {"choice": [0.0, 0.1]}},
        knowledge_base__documents=str(corpus_file), index__directory=str(flat_index),
        data__train=str(tiny_qa["train"]), data__dev=str(tiny_qa["dev"]), data__test=str(tiny_qa["dev"]),
        model__generator=str(tiny_qa["generator"]), train__output_dir=str(tune_dir / "unused"),
        train__num_workers=1, train__cpus_per_worker=1.0, train__max_steps=2, train__epochs=2, train__batch_size=4,
        train__eval_max_examples=8, train__warmup_steps=1, retrieval__group=group,
        retrieval__namespace=TEST_NAMESPACE, retrieval__actor_num_cpus=0.1, tune__output_dir=str(tune_dir),
        tune__num_samples=2, tune__max_concurrent_trials=2, tune__grace_period=1,
    )


MEMBER_NAME = re.compile(r"^(?P<group>.+)\.shard\d+\.replica\d+$")  # see retrieval.group.actor_name


class GroupWatcher(threading.Thread):
    """Samples the retrieval groups of the test namespace while the sweep runs: {group: {actor name: pid}}."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[dict] = []
        self.stop = threading.Event()

    def groups(self) -> dict:
        import ray

        from pipeline.retrieval.group import group_status

        names = {m["group"] for e in ray.util.list_named_actors(all_namespaces=True)
                 if e["namespace"] == TEST_NAMESPACE and (m := MEMBER_NAME.match(e["name"]))}
        return {g: {(row["shard"], row["replica"]): row.get("pid") for row in group_status(g, TEST_NAMESPACE)}
                for g in names}

    def run(self):
        while not self.stop.wait(1.0):
            self.samples.append(self.groups())


@pytest.mark.slow  # a real sweep: two whole fine-tuning runs (about a minute on an idle 2-core machine)
@pytest.mark.timeout(900)
def test_sweep_trials_share_one_retrieval_group_and_export_the_best_model(
        ray_cluster, corpus_file, flat_index, tiny_qa, tmp_path):
    import torch
    from ray.tune.schedulers import AsyncHyperBandScheduler

    from pipeline.model.rag import load_rag_model
    from pipeline.retrieval.group import group_status, stop_retrieval_group
    from pipeline.train.checkpoints import MODEL_DIR, read_history
    from pipeline.tune.sweep import run_tune

    group = f"tune-test-{uuid.uuid4().hex[:6]}"
    tune_dir = tmp_path / "tune"
    watcher = GroupWatcher()
    groups_before = set(watcher.groups())
    watcher.start()
    try:
        result = run_tune(_sweep_config(corpus_file, flat_index, tiny_qa, tune_dir, group))
        watcher.stop.set()
        watcher.join()

        # Both trials ran every epoch and reported the metric; each one's run lives in its own directory.
        assert [row["status"] for row in result.trials] == ["terminated", "terminated"]
        ids = [row["trial_id"] for row in result.trials]
        for row in result.trials:
            assert [h["epoch"] for h in row["history"]] == [1, 2]
            # What the trial reported to Tune is what its last checkpoint's own history file says.
            saved = read_history(row["checkpoint_path"])[-1]
            assert (saved["epoch"], saved["dev_exact_match"]) == (2, row["metrics"]["dev_exact_match"])
            assert set(row["overrides"]) == {"train.lr", "model.label_smoothing"}
            assert Path(row["checkpoint_path"]).is_relative_to(tune_dir.resolve() / "trials" / row["trial_id"])

        # ASHA judged the trials on their per-epoch reports: both sit in its grace-period rung (epoch 1).
        assert isinstance(result.scheduler, AsyncHyperBandScheduler)
        rungs = dict(result.scheduler._brackets[0]._rungs)  # ASHA's bookkeeping: milestone -> {trial: metric}
        assert set(rungs[1]) == set(ids)

        # ONE group, started once: same members in the same processes throughout; no trial made another.
        samples = [s[group] for s in watcher.samples if group in s]
        assert samples, "the watcher never saw the retrieval group"
        assert all(s == samples[0] for s in samples) and len(samples[0]) == 2  # the index's 2 shards
        assert {g for s in watcher.samples for g in s} - groups_before == {group}
        status = group_status(group, TEST_NAMESPACE)
        assert {(r["shard"], r["replica"]): r["pid"] for r in status} == samples[0]
        assert all(r["calls"] > 0 for r in status)  # the trials' workers did retrieve through it

        # Outputs: table (CSV, JSON), plot, best config (loadable by finetune.py --config) and model.
        files = result.files
        csv_lines = files["results_csv"].read_text().splitlines()
        assert csv_lines[0].startswith("trial_id,status,model.label_smoothing,train.lr,epoch,")
        assert sorted(line.split(",")[0] for line in csv_lines[1:]) == ids
        summary = json.loads(files["results_json"].read_text())
        assert summary["best_trial"] == result.best["trial_id"] and len(summary["trials"]) == 2
        assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        best = load_yaml(files["best_config"])
        assert best.train.lr == pytest.approx(result.best["overrides"]["train.lr"])
        assert best.model.label_smoothing == result.best["overrides"]["model.label_smoothing"]
        # best_model is the best trial's last checkpoint, not the other trial's.
        exported = load_rag_model(files["best_model"]).model.state_dict()
        other = next(row for row in result.trials if row["trial_id"] != result.best["trial_id"])
        for row, same in ((result.best, True), (other, False)):
            saved = load_rag_model(Path(row["checkpoint_path"]) / MODEL_DIR).model.state_dict()
            assert all(torch.equal(saved[k], exported[k]) for k in exported) == same, row["trial_id"]

        # Running it again resumes the finished sweep: same trials, no Train run started again.
        checkpoints = sorted(p.name for p in tune_dir.glob("trials/*/ray_train/finetune/checkpoint_*"))
        again = run_tune(_sweep_config(corpus_file, flat_index, tiny_qa, tune_dir, group))
        assert again.restored and [row["trial_id"] for row in again.trials] == ids
        assert sorted(p.name for p in tune_dir.glob("trials/*/ray_train/finetune/checkpoint_*")) == checkpoints
        assert {(r["shard"], r["replica"]): r["pid"] for r in group_status(group, TEST_NAMESPACE)} == samples[0]
    finally:
        watcher.stop.set()
        stop_retrieval_group(group, TEST_NAMESPACE)


@pytest.mark.slow  # one whole (two-step) fine-tuning run with two index refreshes
@pytest.mark.timeout(900)
def test_a_trial_that_refreshes_its_index_gets_a_group_of_its_own(ray_cluster, corpus_file, flat_index, tiny_qa,
                                                                   tmp_path):
    from pipeline.index.manifest import read_manifest
    from pipeline.index.versions import list_versions
    from pipeline.retrieval.group import stop_retrieval_group
    from pipeline.retrieval.group_record import served_version
    from pipeline.tune.sweep import run_tune

    group = f"tune-refresh-{uuid.uuid4().hex[:6]}"
    tune_dir = tmp_path / "tune"
    cfg = _sweep_config(corpus_file, flat_index, tiny_qa, tune_dir, group)
    cfg.tune.search_space = {"refresh.every_steps": {"choice": [1]}, "train.context_encoder_lr": {"choice": [1e-4]}}
    for key, value in {"tune.num_samples": 1, "model.train_context_encoder": True,
                       "refresh.blocking": True, "refresh.embed_num_cpus": 0.25}.items():
        set_key(cfg, key, value)
    watcher = GroupWatcher()
    watcher.start()
    try:
        result = run_tune(cfg)
        watcher.stop.set()
        watcher.join()
        trial = result.trials[0]
        assert trial["status"] == "terminated" and trial["metrics"]["refreshes"] == 2
        own = f"{group}.{trial['trial_id']}"
        assert any(own in sample for sample in watcher.samples)  # the trial's own group served it...
        assert own not in watcher.groups()  # ...and was stopped with the trial
        # The shared group still serves the shared index; the trial's versions went to its own location.
        assert served_version(group, TEST_NAMESPACE).directory == (flat_index / "v0001").resolve()
        assert list_versions(flat_index) == ["v0001"]
        location = tune_dir / "trials" / trial["trial_id"] / "index"
        assert read_manifest(location).fingerprint["trained_at_step"] == 2
    finally:
        watcher.stop.set()
        stop_retrieval_group(group, TEST_NAMESPACE)
