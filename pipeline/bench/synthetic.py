"""Synthetic index directories for benchmarks and tests: real FAISS shards over generated vectors, no encoder.

The vectors imitate what makes real passage embeddings searchable approximately: they lie near a
low-dimensional subspace and form overlapping clusters (topics). Isotropic random vectors, by contrast, have
no neighbourhood structure at all, and every approximate index scores near-zero recall on them, which says
nothing about the index on real data; tight, well-separated clusters err the other way (IVF finds nearly
everything in one list). The default spread sits between: the topics overlap enough that IVF with 1 list of
256 finds about 2/3 of the exact top-10 and HNSW needs efSearch ~64 for ~0.97. The shape is an assumption,
stated as such with every result measured on it.
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


def synthetic_vectors(count: int, dimension: int, seed: int = 0, draw: int = 0, latent: int = 64,
                      topics: int = 1024, spread: float = 1.0, chunk: int = _CHUNK):
    """Yields float32[<= chunk, dimension] blocks, `count` rows in all: `topics` cluster centres in a random
    `latent`-dimensional subspace, each row a centre plus spread within the subspace and a little noise outside.

    `seed` fixes the distribution (subspace, centres); `draw` the rows drawn from it: another draw of the same
    seed gives fresh rows of the same corpus, e.g. held-out questions.
    """
    rng = np.random.default_rng(seed)
    latent = min(latent, dimension)
    basis = np.linalg.qr(rng.standard_normal((dimension, latent)))[0].T.astype(np.float32)  # [latent, d]
    centres = rng.standard_normal((topics, latent)).astype(np.float32)
    # Off-subspace noise drawn from a pool of rows: drawing count x dimension normals costs more than the rest.
    noise = 0.05 * rng.standard_normal((16_384, dimension), dtype=np.float32)
    rng = np.random.default_rng([seed, draw])
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        z = centres[rng.integers(topics, size=n)] + spread * rng.standard_normal((n, latent), dtype=np.float32)
        yield z @ basis + noise[rng.integers(len(noise), size=n)]


def write_synthetic_corpus(directory: str | Path, count: int, dimension: int, seed: int = 0,
                           passage_words: int = 8) -> None:
    """vectors.f32 (`synthetic_vectors`) and passages.arrow ('Passage i', `passage_words` words) in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / VECTORS, "wb") as out, PassagesWriter(directory) as passages:
        written = 0
        for block in synthetic_vectors(count, dimension, seed):
            out.write(block.tobytes())
            ids = range(written, written + len(block))
            passages.add([f"Passage {i}" for i in ids], [_passage_text(i, passage_words) for i in ids])
            written += len(block)


def write_synthetic_index(directory: str | Path, count: int, dimension: int, factory: str, shards: int = 1,
                          seed: int = 0, train_sample: int = 100_000, recall_queries: int = 0,
                          passage_words: int = 8, vector_dtype: str = "float32") -> IndexManifest:
    """An index directory over `synthetic_vectors` with dummy passages of `passage_words` words, built by the
    real build's shard step (`build_shards`: FAISS files, exact vectors stored as `vector_dtype`, recall into
    the manifest). Reused when one with the same shape is there."""
    directory = Path(directory)
    if (directory / MANIFEST).is_file():
        manifest = read_manifest(directory)
        shape = (manifest.count, manifest.dimension, manifest.factory, manifest.num_shards, manifest.vector_dtype)
        if shape == (count, dimension, factory, shards, vector_dtype):
            return manifest
        raise ValueError(f"{directory}: holds {shape} (count, dimension, factory, shards, vector dtype), not "
                         f"{(count, dimension, factory, shards, vector_dtype)}")
    write_synthetic_corpus(directory, count, dimension, seed, passage_words)
    manifest = IndexManifest(encoder="synthetic", pooling="none", max_length=0, dimension=dimension,
                             metric="inner_product", count=count, factory=factory,
                             shard_offsets=even_shard_offsets(count, shards), vector_dtype=vector_dtype)
    build_shards(directory, manifest, train_sample, recall_queries)
    return manifest


_FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore".split()


def _passage_text(i: int, words: int) -> str:
    """'synthetic passage <i>' then filler words, `words` words in all (at least the first three)."""
    head = ["synthetic", "passage", str(i)]
    return " ".join(head + [_FILLER[(i + j) % len(_FILLER)] for j in range(max(0, words - len(head)))])
