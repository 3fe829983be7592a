"""Configuration: bounds declared once with each option hold for the command line, YAML, Tune and code alike."""

from __future__ import annotations

import pytest

from pipeline.config import (
    RetrievalConfig,
    RunConfig,
    apply_overrides,
    build_parser,
    parse_config,
)
from pipeline.errors import ConfigError
from pipeline.options import check_section
from pipeline.train.checks import check_run_config


@pytest.mark.parametrize("argv, message", [
    (["--train.batch_size", "0"], "--train.batch_size: must be >= 1, got 0"),
    (["--train.lr", "0"], "--train.lr: must be > 0, got 0.0"),
    (["--model.label_smoothing", "1"], "--model.label_smoothing: must be in [0, 1), got 1.0"),
    (["--model.dropout", "1.5"], "--model.dropout: must be < 1, got 1.5"),
])
def test_command_line_values_outside_their_bounds_name_the_option(argv, message):
    with pytest.raises(ConfigError) as error:
        parse_config(argv, "x")
    assert str(error.value) == message


def test_yaml_values_outside_their_bounds_name_the_file_and_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("retrieval:\n  replicas: 0\n")
    with pytest.raises(ConfigError, match=r"run.yaml: retrieval.replicas: must be >= 1, got 0$"):
        parse_config(["--config", str(path)], "x")


def test_values_on_the_boundary_are_accepted():
    cfg = apply_overrides(RunConfig(), {"train.batch_size": 1, "model.label_smoothing": 0.0,
                                        "train.warmup_steps": 0, "train.max_failures": -1})
    check_run_config(cfg)
    assert (cfg.train.batch_size, cfg.train.max_failures) == (1, -1)


def test_sections_built_in_code_are_checked_too():
    with pytest.raises(ConfigError, match=r"^retrieval.replicas: must be >= 1, got 0$"):
        check_section(RetrievalConfig(replicas=0), "retrieval")
    with pytest.raises(ConfigError, match=r"^retrieval.mode: 'grpc' is not one of ray, torch, local$"):
        check_section(RetrievalConfig(mode="grpc"), "retrieval")
    cfg = RunConfig()
    cfg.train.epochs = 0
    with pytest.raises(ConfigError, match=r"^train.epochs: must be >= 1, got 0$"):
        check_run_config(cfg)


def test_help_states_each_bound():
    text = build_parser("x").format_help()
    assert "Must be in [0, 1)" in " ".join(text.split())
    assert "Must be >= 1" in text
