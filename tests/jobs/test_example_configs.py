"""configs/: every example YAML loads (unknown keys or bad values would fail), the demo's spells out exactly the
defaults, the sweep's is a valid sweep, and every `configs/*.yaml` the docs and --help texts cite exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.config import RunConfig, known_keys, parse_config
from pipeline.train.checks import check_run_config
from pipeline.tune.search_space import check_sweep_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
CITED = re.compile(r"configs/[\w.-]+\.yaml")


def _cited() -> dict[str, list[str]]:
    """configs/x.yaml -> the files that mention it (README, docs, jobs and pipeline code, the configs)."""
    sources = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "jobs").glob("*.py"),
               *(REPO / "pipeline").rglob("*.py"), *CONFIGS]
    cited: dict[str, list[str]] = {}
    for source in sources:
        for name in CITED.findall(source.read_text()):
            cited.setdefault(name, []).append(str(source.relative_to(REPO)))
    return cited


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_loads_and_passes_the_run_checks(path):
    config, _ = parse_config(["--config", str(path)], "x")
    check_run_config(config)


def test_the_demo_config_is_exactly_the_defaults_with_every_option_spelled_out():
    config, _ = parse_config(["--config", str(REPO / "configs" / "demo.yaml")], "x")
    assert config.to_dict() == RunConfig().to_dict()
    assert config.explicit_keys == set(known_keys())  # no option left out of the file users start from


def test_the_sweep_config_is_a_valid_sweep_over_more_than_the_default_space():
    config, _ = parse_config(["--config", str(REPO / "configs" / "sweep.yaml")], "x")
    space = check_sweep_config(config)
    assert set(space) > set(RunConfig().tune.search_space)


def test_every_cited_config_exists_and_every_config_is_cited():
    cited = _cited()
    missing = {name: sources for name, sources in cited.items() if not (REPO / name).is_file()}
    assert not missing, f"cited but not in configs/: {missing}"
    uncited = [p.name for p in CONFIGS if f"configs/{p.name}" not in cited or
               cited[f"configs/{p.name}"] == [f"configs/{p.name}"]]
    assert not uncited, f"no doc or --help text points at: {uncited}"
    expected = {"configs/demo.yaml", "configs/real_model.yaml", "configs/cluster_run.yaml", "configs/sweep.yaml"}
    assert expected <= set(cited)
