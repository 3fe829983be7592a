"""One local Ray cluster per test session, small corpora, and a built index shared by the tests.

Markers (pyproject.toml): a test that uses the session Ray cluster is marked `ray` here, by its fixtures; a test
that trains (a TorchTrainer run, a sweep, the demo generator's reading practice: `tiny_demo` includes it), builds
indexes of its own or starts a Ray cluster of its own is `slow`, marked by its fixtures here or in its module.
The loop to run after every edit is `python -m pytest -m "not slow"`; `-m "not slow and not ray"` is the unit
tests alone.
"""

from __future__ import annotations

import json
import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

TEST_NAMESPACE = "rag-tests"

WORDS = ("river stone harbor lantern orchard meadow copper violin falcon ember quartz willow summit "
         "canyon tide marble cedar thistle glacier beacon saffron hollow prism tundra").split()


def write_corpus(path, documents: int = 40, seed: int = 0) -> list[dict]:
    """A jsonl of documents with random words; every fifth one is long enough to split into passages."""
    rng = random.Random(seed)
    rows = []
    for i in range(documents):
        length = 230 if i % 5 == 0 else rng.randint(20, 90)
        rows.append({"title": f"Doc {i}", "text": " ".join(rng.choice(WORDS) for _ in range(length))})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


# Fixtures whose setup trains: a test using one is slow whatever its own body does.
_TRAINING_FIXTURES = {"tiny_demo"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "ray_cluster" in fixtures:
            item.add_marker(pytest.mark.ray)
        if fixtures & _TRAINING_FIXTURES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from pipeline.ray_session import pass_results_inline

    pass_results_inline()  # like the clusters the jobs start
    # address="local": never join a cluster someone else started on this machine with `ray start`.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, namespace=TEST_NAMESPACE)
    yield ray
    # Stop whatever a failed test left running.
    for entry in ray.util.list_named_actors(all_namespaces=True):
        try:
            ray.kill(ray.get_actor(entry["name"], namespace=entry["namespace"]), no_restart=True)
        except ValueError:
            pass
    ray.shutdown()


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "documents.jsonl"
    write_corpus(path)
    return path


@pytest.fixture(scope="session")
def flat_index(ray_cluster, corpus_file, tmp_path_factory):
    """A 2-shard exact index of the test corpus, built through the CLI entry point."""
    from jobs import build_index

    directory = tmp_path_factory.mktemp("index") / "flat"
    code = build_index.main(["--knowledge_base.documents", str(corpus_file), "--index.directory", str(directory),
                             "--index.shards", "2", "--index.embed_batch_size", "16"])
    assert code == 0
    return directory


@pytest.fixture(scope="session")
def tiny_demo(ray_cluster, tmp_path_factory):
    """A slice of the bundled demo (120 documents, the QA rows they answer) with its index built.

    Returns a dict of dotted config overrides pointing a RunConfig at it.
    """
    from pipeline.config import IndexConfig, KnowledgeBaseConfig
    from pipeline.demo.data import QUICK_READING_STEPS, ensure_demo_data
    from pipeline.index.build import build_index

    root = tmp_path_factory.mktemp("tiny_demo")
    demo = ensure_demo_data(root / "demo", reading_steps=QUICK_READING_STEPS)
    documents = [json.loads(line) for line in demo.documents.read_text().splitlines()[:120]]
    (root / "documents.jsonl").write_text("".join(json.dumps(d) + "\n" for d in documents))
    texts = [d["text"] for d in documents]
    for split, limit in (("train", 48), ("dev", 8)):
        rows = [json.loads(line) for line in getattr(demo, split).read_text().splitlines()]
        rows = [r for r in rows if any(r["evidence"] in t for t in texts)][:limit]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_index(KnowledgeBaseConfig(documents=str(root / "documents.jsonl")),
                IndexConfig(directory=str(root / "index"), embed_batch_size=32))
    return {
        "knowledge_base.documents": str(root / "documents.jsonl"), "index.directory": str(root / "index"),
        "data.train": str(root / "train.jsonl"), "data.dev": str(root / "dev.jsonl"),
        "data.test": str(root / "dev.jsonl"), "model.generator": str(demo.generator),
        "retrieval.namespace": TEST_NAMESPACE, "retrieval.actor_num_cpus": 0.1,
        "train.cpus_per_worker": 1.0, "train.batch_size": 4, "train.eval_max_examples": 8,
        "train.warmup_steps": 2, "model.max_source_length": 96,
    }


def assert_is_a_plot(path, min_ink: float = 0.01) -> None:
    """`path` is a PNG image of a real figure: it decodes, and more than `min_ink` of its pixels are not
    background (axes, lines and labels drawn), with several colours (more than one series or element)."""
    import numpy as np
    from matplotlib.image import imread

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    pixels = imread(path)[..., :3]
    assert pixels.shape[0] >= 200 and pixels.shape[1] >= 300, f"{path}: {pixels.shape} is too small for a figure"
    ink = (np.abs(pixels - pixels[0, 0]).sum(axis=-1) > 0.1).mean()
    colours = len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert ink > min_ink and colours > 8, f"{path}: {ink:.1%} drawn, {colours} colours: an empty figure"


def weights_of(module) -> dict:
    """A copy of a torch module's state dict, to compare after training."""
    return {name: p.detach().clone() for name, p in module.state_dict().items()}


def largest_change(before: dict, after: dict) -> float:
    """Largest absolute change of any weight shared by the two state dicts."""
    return max(float((after[name] - before[name]).abs().max()) for name in before if name in after)
