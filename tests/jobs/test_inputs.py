"""Own data without surprises: every refused input gives exit code 2 and ONE `error:` line naming the file and
line (or the config key), before Ray, the retrieval group or a worker starts, leaving nothing written; demo
defaults fill only a run that names no data at all."""

from __future__ import annotations

import json
import re

import pytest

from pipeline.config import RunConfig, apply_overrides
from pipeline.demo.defaults import fill_demo_defaults, is_demo_run
from pipeline.errors import ConfigError, DataError, run_job
from pipeline.train.qa_data import check_qa_file, iter_qa_rows, load_qa_examples

GOOD = {"question": "who?", "answers": ["Ada"]}


def _jsonl(path, *rows) -> str:
    """Write rows (dicts as JSON, strings verbatim) one per line."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _run_finetune_job(monkeypatch, capsys, argv: list[str]) -> tuple[int, str]:
    """jobs/finetune.py's main as `python jobs/finetune.py ARGV` runs it, with Ray unreachable: (exit code, stderr)."""
    from jobs import finetune as finetune_job

    monkeypatch.setattr(finetune_job, "connect_ray", lambda: pytest.fail("Ray was started despite bad input"))
    with pytest.raises(SystemExit) as exit_info:
        run_job(lambda: finetune_job.main(argv))
    return exit_info.value.code, capsys.readouterr().err


def _own_data_args(tmp_path, train: str, dev: str | None = None) -> list[str]:
    dev = dev or _jsonl(tmp_path / "dev.jsonl", GOOD)
    return ["--data.train", train, "--data.dev", dev, "--model.generator", "facebook/bart-large",
            "--knowledge_base.documents", str(tmp_path / "kb.jsonl"), "--index.directory", str(tmp_path / "index"),
            "--train.output_dir", str(tmp_path / "run")]


BAD_TRAIN_FILES = {
    "not_json": ([GOOD, '{"question": "who?", answers: ["Ada"]}', GOOD],
                 r"train.jsonl:2: not valid JSON \(Expecting property name enclosed in double quotes: column 22\)"),
    "not_an_object": ([GOOD, GOOD, '["who?", "Ada"]'], r"train.jsonl:3: expected a JSON object per line, got list"),
    "answers_int": ([GOOD, GOOD, {"question": "who?", "answers": 42}],
                    r"train.jsonl:3: field 'answers' must be a string or a list of strings, got int 42"),
    "answers_list_of_ints": ([{"question": "who?", "answers": ["Ada", 7]}],
                             r"train.jsonl:1: field 'answers' must be a string or a list of strings, got a list "
                             r"holding int 7"),
    "answers_dict": ([GOOD, {"question": "who?", "answers": {"text": "Ada"}}],
                     r"train.jsonl:2: field 'answers' must be a string or a list of strings, got dict \{'text'"),
    "question_number": ([{"question": 1984, "answers": "Orwell"}],
                        r"train.jsonl:1: field 'question' must be a string, got int 1984"),
    "answers_empty": ([GOOD, {"question": "who?", "answers": ["  "]}], r"train.jsonl:2: field 'answers' is missing "
                                                                         r"or empty"),
    "blank_line_counts": ([GOOD, "", {"question": "who?"}], r"train.jsonl:3: field 'answers' is missing or empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN_FILES))
def test_a_bad_jsonl_row_stops_the_job_with_one_line_naming_file_and_line(tmp_path, monkeypatch, capsys, case):
    rows, message = BAD_TRAIN_FILES[case]
    train = _jsonl(tmp_path / "train.jsonl", *rows)
    code, err = _run_finetune_job(monkeypatch, capsys, _own_data_args(tmp_path, train))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "index").exists()


@pytest.mark.parametrize("content, message", [("", "empty file (0 bytes)"),
                                              ("\n  \n\n", "only blank lines, no rows")])
def test_an_empty_qa_file_is_one_clear_line(tmp_path, monkeypatch, capsys, content, message):
    (tmp_path / "dev.jsonl").write_text(content)
    code, err = _run_finetune_job(monkeypatch, capsys, _own_data_args(
        tmp_path, _jsonl(tmp_path / "train.jsonl", GOOD), dev=str(tmp_path / "dev.jsonl")))
    assert (code, err) == (2, f"error: {tmp_path / 'dev.jsonl'}: {message}\n")


@pytest.mark.parametrize("suffix, content", [(".csv", ""), (".csv", "question,answers\n"), (".parquet", "")])
def test_empty_csv_and_parquet_files_are_clear_errors(tmp_path, suffix, content):
    path = tmp_path / f"qa{suffix}"
    path.write_text(content)
    expected = "no rows" if content else "empty file (0 bytes)"
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: {re.escape(expected)}$"):
        check_qa_file(path, RunConfig().data)


def test_non_utf8_jsonl_names_the_line(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"question": "caf\xe9?", "answers": "x"}\n')
    with pytest.raises(DataError, match=rf"^{path}:2: text is not valid UTF-8"):
        check_qa_file(path, RunConfig().data)


def test_answers_of_the_wrong_type_are_skipped_and_counted_with_skip_invalid(tmp_path):
    path = _jsonl(tmp_path / "qa.jsonl", GOOD, {"question": "q2", "answers": 42}, {"question": "q3", "answers": "b"})
    cfg = apply_overrides(RunConfig(), {"data.skip_invalid": True}).data
    report = check_qa_file(path, cfg)
    assert (report.valid, report.skipped) == (2, 1)
    assert [e.answers for e in load_qa_examples(path, cfg)] == [["Ada"], ["b"]]


def test_source_and_target_of_different_lengths_fail_before_ray_naming_both(tmp_path, monkeypatch, capsys):
    source, target = tmp_path / "train.source", tmp_path / "train.target"
    source.write_text("q1\nq2\nq3\n")
    target.write_text("a1\na2")  # no final newline: still 2 lines
    code, err = _run_finetune_job(monkeypatch, capsys, _own_data_args(tmp_path, str(source)))
    assert (code, err) == (2, f"error: {source} has 3 lines but {target} has 2; a .source and its .target pair up "
                              f"line by line, so their line counts must match\n")


def test_source_and_target_pair_by_line_number(tmp_path):
    source, target = tmp_path / "qa.source", tmp_path / "qa.target"
    questions = [f"question {i}?" for i in range(50)]
    source.write_text("".join(q + "\n" for q in questions))
    target.write_text("".join(f"answer {i}\n" for i in range(50)))
    rows = [(row, item.question, item.answers) for row, item in iter_qa_rows(source, RunConfig().data)]
    assert rows == [(i + 1, f"question {i}?", [f"answer {i}"]) for i in range(50)]


def test_the_dataset_holds_exactly_the_validated_rows_in_line_order(ray_cluster, tmp_path):
    from pipeline.train.qa_data import read_qa_dataset

    source, target = tmp_path / "qa.source", tmp_path / "qa.target"
    source.write_text("".join(f"q{i}\n" for i in range(300)) + "\n")  # line 301: an empty question
    target.write_text("".join(f"a{i}\n" for i in range(300)) + "a300\n")
    cfg = apply_overrides(RunConfig(), {"data.skip_invalid": True}).data
    assert (check_qa_file(source, cfg).valid, check_qa_file(source, cfg).skipped) == (300, 1)
    ds = read_qa_dataset(source, cfg)
    assert ds.num_blocks() > 1  # several blocks, so the order below is not an accident of one block
    rows = ds.take_all()
    assert [(r["question"], r["answers"]) for r in rows] == [(f"q{i}", f"a{i}") for i in range(300)]


def test_documents_file_with_a_bad_json_line_names_the_line(tmp_path):
    from pipeline.config import KnowledgeBaseConfig
    from pipeline.index.build import check_documents

    docs = _jsonl(tmp_path / "docs.jsonl", {"title": "a", "text": "fine"}, '{"title": "b", "text": "cut',
                  {"title": "c", "text": "fine"})
    with pytest.raises(DataError, match=r"docs.jsonl:2: not valid JSON \(Unterminated string"):
        check_documents(KnowledgeBaseConfig(documents=docs))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"empty.jsonl: empty file \(0 bytes\)"):
        check_documents(KnowledgeBaseConfig(documents=str(tmp_path / "empty.jsonl")))


# ----------------------------------------------------------------------------- demo defaults


def test_only_a_run_that_names_no_data_is_the_demo():
    assert is_demo_run(RunConfig())
    for key in ("knowledge_base.documents", "data.train", "data.dev", "data.test", "model.generator",
                "index.directory"):
        assert not is_demo_run(apply_overrides(RunConfig(), {key: "/some/path"})), key


def test_a_run_naming_no_data_gets_every_demo_path_and_keeps_them(monkeypatch, tmp_path):
    from pipeline.demo import data as demo_data

    demo = demo_data.DemoPaths.at(tmp_path / "demo")
    monkeypatch.setattr(demo_data, "DEMO_DIR", str(demo.directory))
    monkeypatch.setattr(demo_data, "ensure_demo_data", lambda *a, **k: demo)
    cfg = fill_demo_defaults(RunConfig())
    assert (cfg.knowledge_base.documents, cfg.data.train, cfg.data.dev, cfg.data.test, cfg.model.generator) == \
        tuple(map(str, (demo.documents, demo.train, demo.dev, demo.test, demo.generator)))
    assert fill_demo_defaults(cfg) is cfg and cfg.data.train == str(demo.train)  # a second check (prepare_run)


def test_a_run_with_its_own_train_file_but_no_dev_is_refused_naming_the_key(tmp_path, monkeypatch, capsys):
    from pipeline.demo import data as demo_data

    monkeypatch.setattr(demo_data, "ensure_demo_data", lambda *a, **k: pytest.fail("generated the demo"))
    train = _jsonl(tmp_path / "train.jsonl", GOOD)
    code, err = _run_finetune_job(monkeypatch, capsys, ["--data.train", train, "--index.directory",
                                                        str(tmp_path / "index")])
    assert code == 2
    assert err == ("error: data.dev: empty (give a dev QA file); model.generator: empty (give a generator "
                   "(Hugging Face name or path, e.g. facebook/bart-large or Qwen/Qwen2.5-0.5B)); "
                   "knowledge_base.documents: empty (give "
                   "the documents file to build the index from); or name no data at all to run the bundled demo\n")


def test_a_training_run_does_not_need_a_test_file_nor_the_demo(tmp_path, monkeypatch):
    from pipeline.demo import data as demo_data

    monkeypatch.setattr(demo_data, "ensure_demo_data", lambda *a, **k: pytest.fail("generated the demo"))
    index = tmp_path / "index"
    index.mkdir()  # an index that exists: documents are not needed either
    cfg = apply_overrides(RunConfig(), {"data.train": "t.jsonl", "data.dev": "d.jsonl", "model.generator": "g",
                                        "index.directory": str(index)})
    assert fill_demo_defaults(cfg).data.test == ""


def test_own_documents_into_the_demo_index_directory_are_refused():
    cfg = apply_overrides(RunConfig(), {"knowledge_base.documents": "/data/kb.jsonl"})
    with pytest.raises(ConfigError, match=r"^index.directory: runs/demo/index is where the bundled demo's index "
                                          r"lives; name a directory for the index of /data/kb.jsonl$"):
        fill_demo_defaults(cfg, needs=("knowledge_base.documents",))


def test_evaluate_and_build_index_follow_the_same_rule(tmp_path, monkeypatch, capsys):
    from jobs import build_index, evaluate

    monkeypatch.setattr(build_index, "connect_ray", lambda: pytest.fail("Ray was started despite bad input"))
    with pytest.raises(SystemExit) as exit_info:
        run_job(lambda: build_index.main(["--index.directory", str(tmp_path / "index")]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: knowledge_base.documents: empty (give the documents file")
    with pytest.raises(SystemExit) as exit_info:
        run_job(lambda: evaluate.main(["--index.directory", str(tmp_path / "index")]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: data.test: empty (give a test QA file)")


def test_every_job_accepts_verbose_and_passes_it_to_ray_workers(monkeypatch):
    from pipeline.config import parse_config
    from pipeline.output import (
        QUIET_ENV,
        SETUP_HOOK,
        VERBOSE_ENV,
        is_verbose,
        worker_runtime_env,
    )

    monkeypatch.setenv(VERBOSE_ENV, "0")  # restored after the test: --verbose sets it for the whole process
    parse_config([], "x")
    assert not is_verbose()
    assert worker_runtime_env() == {"env_vars": QUIET_ENV, "worker_process_setup_hook": SETUP_HOOK}
    submitted = {"env_vars": {"RAY_DATA_LOG_LEVEL": "INFO"}, "worker_process_setup_hook": "mine.hook"}
    assert worker_runtime_env(already_set=submitted) == {  # a submitted job's own settings win
        "env_vars": {k: v for k, v in QUIET_ENV.items() if k != "RAY_DATA_LOG_LEVEL"}}
    parse_config(["--verbose"], "x")
    assert is_verbose() and worker_runtime_env() == {"env_vars": {VERBOSE_ENV: "1"}}


def test_connect_ray_reads_the_runtime_env_of_a_submitted_job(monkeypatch):
    from pipeline.ray_session import _submitted_job_runtime_env

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert _submitted_job_runtime_env() == {}
    job = {"runtime_env": {"working_dir": "gcs://x.zip", "env_vars": {"HF_HUB_OFFLINE": "1"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))  # as `ray job submit` sets it
    assert _submitted_job_runtime_env() == job["runtime_env"]


@pytest.mark.slow  # a TorchTrainer run
def test_an_error_raised_in_a_train_worker_is_one_error_line(ray_cluster, tmp_path, capsys):
    """A PipelineError that can only surface inside a training worker (e.g. a retrieval group that died) reaches
    the terminal as the job's one `error:` line, not as Ray Train's TrainingFailedError traceback."""
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchTrainer

    def loop(_):
        raise DataError("dev.jsonl:3: field 'answers' is missing or empty")

    def main():
        TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.1}),
                     run_config=TrainRunConfig(storage_path=str(tmp_path), name="fails",
                                               failure_config=FailureConfig(max_failures=0))).fit()
        return 0

    with pytest.raises(SystemExit) as exit_info:
        run_job(main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: dev.jsonl:3: field 'answers' is missing or empty\n"
