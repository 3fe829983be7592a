"""TUNE: a Ray Tune sweep over whole fine-tuning runs, every trial sharing ONE index and retrieval group.

    python jobs/tune.py                                   # 2 trials on the bundled demo (generator x encoder lr)
    python jobs/tune.py --config configs/sweep.yaml --tune.num_samples 8 --tune.max_concurrent_trials 2
    ray job submit --working-dir . -- python jobs/tune.py --config configs/sweep.yaml

A trial is one TorchTrainer fine-tuning run with its sampled overrides (tune.search_space: dotted keys ->
{uniform|loguniform: [lo, hi]}, {choice: [...]} or {randint: [lo, hi)}); ASHA stops weak trials on the
per-epoch tune.metric. The index is built and the retrieval group started once, before the first trial.
Under tune.output_dir: results.csv/.json, a per-epoch plot, best_config.yaml (for finetune.py --config)
and best_model/. Running the same command again resumes an interrupted sweep; finished trials are kept.
"""

from pipeline.config import parse_config
from pipeline.errors import run_job
from pipeline.progress import say
from pipeline.ray_session import connect_ray
from pipeline.train.finetune import group_lifetime_note, stop_group_unless_kept
from pipeline.train.qa_data import check_training_inputs
from pipeline.tune.results import format_trials
from pipeline.tune.search_space import check_sweep_config
from pipeline.tune.sweep import run_tune


def main(argv=None) -> int:
    config, _ = parse_config(argv, __doc__)
    check_sweep_config(config)  # bad search space, metric or input: fail before starting Ray
    check_training_inputs(config)
    note = group_lifetime_note(config, connect_ray(), "tune")
    if note:
        say(note)
    try:
        result = run_tune(config)
    finally:
        stop_group_unless_kept(config)
    print(format_trials(result.trials, config.tune.metric, result.best["trial_id"]))
    for name, path in result.files.items():
        print(f"[tune] {name}: {path}")
    return 0


if __name__ == "__main__":
    run_job(main)
