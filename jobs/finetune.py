"""TRAIN: fine-tune a RAG model (question encoder + generator) against the retrieval group.

    python jobs/finetune.py                                   # the bundled demo, on a local Ray cluster
    python jobs/finetune.py --config configs/real_model.yaml --train.lr 3e-5 --retrieval.replicas 2
    ray job submit --working-dir . -- python jobs/finetune.py --config configs/cluster_run.yaml

Builds the index if it is missing, starts the retrieval group if it is not running (reuses it if it is),
streams the QA data with Ray Data into a TorchTrainer, evaluates on dev every epoch, checkpoints, resumes
a stopped run from its latest checkpoint, and exports the final model in Hugging Face format.
A run that names no data (no data.*, knowledge_base.documents, model.generator; index.directory at its default)
is the bundled demo; any other run must name its train and dev files and generator (configs/ has examples).
Every input is checked before Ray starts.
"""

from pipeline.config import parse_config
from pipeline.errors import run_job
from pipeline.progress import say
from pipeline.ray_session import connect_ray
from pipeline.train.finetune import (
    format_summary,
    group_lifetime_note,
    run_finetune,
    stop_group_unless_kept,
)
from pipeline.train.qa_data import check_training_inputs


def main(argv=None) -> int:
    config, _ = parse_config(argv, __doc__)
    check_training_inputs(config)  # bad input fails here, before the cluster, the group or a worker starts
    note = group_lifetime_note(config, connect_ray(), "finetune")
    if note:
        say(note)
    try:
        result = run_finetune(config)
    finally:
        stop_group_unless_kept(config)
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    run_job(main)
