"""The jobs over a damaged index: `retrieval_service.py start` and `finetune.py` end with one `error:` line
naming the file (exit 2), not a FAISS RuntimeError or an ActorDiedError traceback."""

from __future__ import annotations

import shutil

import pytest

from pipeline.errors import run_job
from pipeline.retrieval.group_record import list_members
from tests.conftest import TEST_NAMESPACE
from tests.index.test_index_integrity import flip_byte


def run(main, argv: list[str], capsys) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of a job's main run as `python jobs/x.py ARGV` runs it (in the test cluster)."""
    with pytest.raises(SystemExit) as exit_info:
        run_job(lambda: main(argv))
    return exit_info.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_starting_a_group_on_a_damaged_shard_is_one_error_line(ray_cluster, flat_index, tmp_path, capsys):
    from jobs import retrieval_service

    location = shutil.copytree(flat_index, tmp_path / "index")
    flip_byte(location / "v0001" / "shard_1.faiss", 40)
    code, err = run(retrieval_service.main, ["start", "--index.directory", str(location), "--retrieval.group",
                                             "damaged-job", "--retrieval.namespace", TEST_NAMESPACE,
                                             "--retrieval.actor_num_cpus", "0.1"], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {location}/v0001/shard_1.faiss: damaged (crc32 "), err
    assert list_members("damaged-job", TEST_NAMESPACE) == []


def test_fine_tuning_over_a_damaged_index_is_one_error_line_before_training(tiny_demo, tmp_path, capsys):
    from jobs import finetune

    location = shutil.copytree(tiny_demo["index.directory"], tmp_path / "index")
    with open(location / "v0001" / "shard_0.faiss", "r+b") as f:
        f.truncate(1000)  # cut short, as after a failed copy
    overrides = {**tiny_demo, "index.directory": str(location), "retrieval.group": "damaged-finetune",
                 "train.output_dir": str(tmp_path / "run"), "train.epochs": 1}
    argv = [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
    code, err = run(finetune.main, argv, capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {location}/v0001/shard_0.faiss: 1000 bytes, manifest "
                                               f"says "), err
    assert not (tmp_path / "run" / "model").exists()
