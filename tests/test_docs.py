"""Every test the README and docs/ cite by path (`tests/x/test_y.py` or `tests/x/test_y.py::test_name`, and a
following `::test_other` of the same file) exists, so a moved or renamed test cannot leave a doc pointing at
nothing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITED = re.compile(r"(tests/[\w/]+\.py)((?:::\w+)?)((?:`, `::\w+)*)")


def _test_names(path: Path) -> set[str]:
    return {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}


def test_every_cited_test_file_and_test_exists():
    missing = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for file, first, more in CITED.findall(doc.read_text()):
            path = REPO / file
            if not path.is_file():
                missing.append(f"{doc.name}: {file}")
                continue
            names = [n for n in [first.removeprefix("::")] + re.findall(r"::(\w+)", more) if n]
            missing += [f"{doc.name}: {file}::{n}" for n in names if n not in _test_names(path)]
    assert not missing, missing
