"""One local Ray cluster per test session, small corpora, and a built index shared by the tests."""

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


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace=TEST_NAMESPACE)
    yield ray
    from pipeline.retrieval.group import list_members  # noqa: F401  (stop whatever a failed test left)

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
