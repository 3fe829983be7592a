"""Synthetic index directories for benchmarks and tests: real FAISS shards over generated vectors, no encoder.

The vectors imitate what makes real passage embeddings searchable approximately: they lie near a
low-dimensional subspace and form clusters (topics). Isotropic random vectors, by contrast, have no
neighbourhood structure at all, and every approximate index scores near-zero recall on them, which says
nothing about the index on real data. The shape used here is an assumption, stated as such with the results.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.index.build import build_shards
from pipeline.index.manifest import (
    MANIFEST,
    VECTORS,
    IndexManifest,
    PassagesWriter,
    even_shard_offsets,
    read_manifest,
)

_CHUNK = 50_000


def synthetic_vectors(count: int, dimension: int, seed: int = 0, latent: int = 64, topics: int = 1024,
                      chunk: int = _CHUNK):
    """Yields float32[<= chunk, dimension] blocks, `count` rows in all: `topics` cluster centres in a random
    `latent`-dimensional subspace, each row a centre plus spread within the subspace and a little noise outside."""
    rng = np.random.default_rng(seed)
    latent = min(latent, dimension)
    basis = np.linalg.qr(rng.standard_normal((dimension, latent)))[0].T.astype(np.float32)  # [latent, d]
    centres = rng.standard_normal((topics, latent)).astype(np.float32)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        z = centres[rng.integers(topics, size=n)] + 0.6 * rng.standard_normal((n, latent), dtype=np.float32)
        yield z @ basis + 0.05 * rng.standard_normal((n, dimension), dtype=np.float32)


def write_synthetic_index(directory: str | Path, count: int, dimension: int, factory: str, shards: int = 1,
                          seed: int = 0, train_sample: int = 100_000, recall_queries: int = 0) -> IndexManifest:
    """An index directory over `synthetic_vectors` with dummy passages, built by the real build's shard step
    (`build_shards`: FAISS files, recall into the manifest). Reused when one with the same shape is there."""
    directory = Path(directory)
    if (directory / MANIFEST).is_file():
        manifest = read_manifest(directory)
        if (manifest.count, manifest.dimension, manifest.factory, manifest.num_shards) == (
                count, dimension, factory, shards):
            return manifest
        raise ValueError(f"{directory}: holds {manifest.count} x {manifest.dimension} {manifest.factory} in "
                         f"{manifest.num_shards} shard(s), not {count} x {dimension} {factory} in {shards}")
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / VECTORS, "wb") as out, PassagesWriter(directory) as passages:
        written = 0
        for block in synthetic_vectors(count, dimension, seed):
            out.write(block.tobytes())
            ids = range(written, written + len(block))
            passages.add([f"Passage {i}" for i in ids], [f"synthetic passage number {i} of the index" for i in ids])
            written += len(block)
    manifest = IndexManifest(encoder="synthetic", pooling="none", max_length=0, dimension=dimension,
                             metric="inner_product", count=count, factory=factory,
                             shard_offsets=even_shard_offsets(count, shards))
    build_shards(directory, manifest, train_sample, recall_queries)
    return manifest
