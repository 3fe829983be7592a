"""The layering docs/architecture.md states, read from the imports themselves (top-level and function-local):
components never import the layers above them, the model side imports no Ray, retrieval imports no torch but
in its torch.distributed baseline, and no two modules of ours import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _imports() -> dict[str, set[str]]:
    """module -> every module it imports (absolute names, any depth of the file)."""
    found = {}
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        found[_module(path)] = names
    return found


IMPORTS = _imports()


def _ours(names: set[str]) -> set[str]:
    return {n for n in names if n.startswith("pipeline.")}


# Package -> packages of ours it must not import (what the layer diagram puts above it).
FORBIDDEN = {
    "pipeline.index": ("pipeline.retrieval", "pipeline.train", "pipeline.tune", "pipeline.bench"),
    "pipeline.retrieval": ("pipeline.model", "pipeline.train", "pipeline.tune", "pipeline.bench"),
    "pipeline.model": ("pipeline.index.build", "pipeline.retrieval.group", "pipeline.retrieval.client",
                       "pipeline.train", "pipeline.tune", "pipeline.bench"),
    "pipeline.train": ("pipeline.tune", "pipeline.bench"),
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_components_never_import_the_layers_above_them(package):
    wrong = {module: sorted(n for n in _ours(names) if n.startswith(FORBIDDEN[package]))
             for module, names in IMPORTS.items() if module.startswith(package + ".") or module == package}
    assert not {m: n for m, n in wrong.items() if n}


def test_the_model_side_imports_no_ray_and_retrieval_no_torch_but_its_baseline():
    model_ray = [m for m, names in IMPORTS.items() if m.startswith("pipeline.model")
                 and any(n == "ray" or n.startswith("ray.") for n in names)]
    retrieval_torch = [m for m, names in IMPORTS.items() if m.startswith("pipeline.retrieval")
                       and m != "pipeline.retrieval.torch_distributed"
                       and any(n == "torch" or n.startswith("torch.") for n in names)]
    assert model_ray == [] and retrieval_torch == []


def test_no_two_modules_of_ours_import_each_other():
    ours = {m: {n for n in _ours(names) if n in IMPORTS} for m, names in IMPORTS.items()}
    cycles = []

    def visit(module, path):
        for name in ours[module]:
            if name == path[0]:
                cycles.append(" -> ".join(path + [name]))
            elif name not in path and len(path) < 8:
                visit(name, path + [name])

    for module in ours:
        visit(module, [module])
    assert not cycles, cycles[:5]


def test_function_local_imports_of_our_modules_say_why():
    """An import of ours inside a function hides a dependency: only typing-only imports are allowed."""
    hidden = []
    for path in sorted((REPO / "pipeline").rglob("*.py")) + sorted((REPO / "jobs").glob("*.py")):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
                        hidden.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert hidden == []
