"""BUILD: documents file -> passages (<= N words) -> embeddings (Ray Data actor pool) -> index directory.

The build writes into a temporary sibling directory and renames it into place
only when complete, so a failed or interrupted build never leaves anything that
`read_manifest` accepts.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from pipeline.config import IndexConfig, KnowledgeBaseConfig, check_section
from pipeline.errors import (
    ConfigError,
    DataError,
    IndexFormatError,
    unwrap_pipeline_error,
)
from pipeline.index.manifest import (
    PASSAGES,
    VECTORS,
    IndexManifest,
    even_shard_offsets,
    open_vectors,
    shard_file,
)
from pipeline.model.encoders import PassageEmbedder, resolve_encoder
from pipeline.progress import Progress
from pipeline.table_files import iter_checked_rows, read_dataset, require_text

_ADD_CHUNK = 65_536


def split_into_passages(text: str, max_words: int) -> list[str]:
    """Consecutive chunks of at most `max_words` whitespace-separated words."""
    words = text.split()
    return [" ".join(words[i:i + max_words]) for i in range(0, len(words), max_words)]


def _split_batch(batch: dict, max_words: int) -> dict:
    titles, texts = [], []
    for title, text in zip(batch["title"], batch["text"]):
        for passage in split_into_passages(text, max_words):
            titles.append(title or "")
            texts.append(passage)
    return {"title": np.array(titles, dtype=object), "text": np.array(texts, dtype=object)}


def check_documents(kb: KnowledgeBaseConfig) -> int:
    """Stream the documents file once on the driver; DataError names file:row and field. Returns the row count."""
    count = 0
    for row, values in iter_checked_rows(kb.documents, [kb.title_column, kb.text_column]):
        require_text(values[kb.text_column], kb.documents, row, kb.text_column)
        title = values[kb.title_column]
        if title is not None and not isinstance(title, str):
            raise DataError(f"{kb.documents}:{row}: field {kb.title_column!r} must be text, got {type(title).__name__}")
        count = row
    return count


def check_factory(factory: str, dimension: int = 8) -> None:
    """ConfigError unless FAISS accepts the factory string (checked before any embedding work)."""
    try:
        faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1][:200]
        raise ConfigError(f"index.factory: FAISS does not accept {factory!r} ({reason})") from None


def _write_passages_and_vectors(ds, tmp: Path, log_every_s: float = 10.0) -> tuple[int, int, float]:
    """Stream embedded batches into passages.parquet and vectors.f32; returns (count, dimension, seconds)."""
    schema = pa.schema([("id", pa.int64()), ("title", pa.string()), ("text", pa.string())])
    count, dimension, started = 0, None, time.perf_counter()
    progress = Progress("build_index", None, "passages", every_s=log_every_s)  # their number is known only at the end
    with pq.ParquetWriter(tmp / PASSAGES, schema) as writer, open(tmp / VECTORS, "wb") as vectors_out:
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            vectors = np.ascontiguousarray(batch["vector"], dtype=np.float32)
            dimension = dimension or vectors.shape[1]
            ids = np.arange(count, count + len(vectors), dtype=np.int64)
            writer.write_table(pa.table(
                {"id": ids, "title": list(batch["title"]), "text": list(batch["text"])}, schema=schema))
            vectors_out.write(vectors.tobytes())
            count += len(vectors)
            progress.update(len(vectors))
    if count == 0:
        raise DataError("the documents produced no passages")
    return count, dimension, time.perf_counter() - started


def _build_shard(vectors: np.ndarray, factory: str, train_sample: int, seed: int = 0) -> faiss.Index:
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(len(vectors), min(train_sample, len(vectors)), replace=False))
        try:
            index.train(np.ascontiguousarray(vectors[sample]))
        except RuntimeError as e:
            raise ConfigError(
                f"index.factory {factory!r}: training on {len(sample)} vectors failed "
                f"({str(e).strip().splitlines()[-1][:200]}); use more passages or a smaller index"
            ) from None
    for start in range(0, len(vectors), _ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[start:start + _ADD_CHUNK]))
    return index


def build_index(kb: KnowledgeBaseConfig, cfg: IndexConfig) -> IndexManifest:
    """Build `cfg.directory` from `kb.documents`; prints progress and timings. Needs a connected Ray."""
    out = Path(cfg.directory)
    check_section(kb, "knowledge_base")
    check_section(cfg, "index")
    check_factory(cfg.factory)
    if out.exists() and not cfg.overwrite:
        raise IndexFormatError(f"{out}: already exists; pass --index.overwrite true to replace it")
    documents = check_documents(kb)
    print(f"[build_index] {kb.documents}: {documents} documents", flush=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        manifest = _build_into(tmp, kb, cfg)
        if out.exists():
            trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(trash)
            shutil.rmtree(trash)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"[build_index] wrote {out}", flush=True)
    return manifest


def _build_into(tmp: Path, kb: KnowledgeBaseConfig, cfg: IndexConfig) -> IndexManifest:
    encoder = resolve_encoder(cfg.encoder)
    ds = read_dataset(kb.documents, [kb.title_column, kb.text_column])
    ds = ds.rename_columns({kb.title_column: "title", kb.text_column: "text"})
    ds = ds.map_batches(_split_batch, fn_kwargs={"max_words": kb.passage_words}, batch_format="numpy")
    ds = ds.map_batches(
        PassageEmbedder,
        fn_constructor_kwargs={"encoder": encoder, "pooling": cfg.pooling, "max_length": cfg.max_length,
                               "use_gpu": cfg.embed_num_gpus > 0, "num_threads": max(1, int(cfg.embed_num_cpus))},
        batch_size=cfg.embed_batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=cfg.embed_concurrency),
        num_cpus=cfg.embed_num_cpus, num_gpus=cfg.embed_num_gpus,
    )
    try:
        count, dimension, embed_s = _write_passages_and_vectors(ds, tmp)
    except Exception as e:
        raise unwrap_pipeline_error(e)
    print(f"[build_index] embedded {count} passages in {embed_s:.1f}s ({count / embed_s:.0f} passages/s)", flush=True)
    if cfg.shards > count:
        raise ConfigError(f"index.shards: {cfg.shards} shards for only {count} passages")

    manifest = IndexManifest(
        encoder=encoder, pooling=cfg.pooling, max_length=cfg.max_length, dimension=dimension,
        metric="inner_product", count=count, factory=cfg.factory,
        shard_offsets=even_shard_offsets(count, cfg.shards),
    )
    vectors = open_vectors(tmp, manifest)
    started = time.perf_counter()
    for shard in range(manifest.num_shards):
        start, end = manifest.shard_range(shard)
        index = _build_shard(vectors[start:end], cfg.factory, cfg.train_sample)
        faiss.write_index(index, str(tmp / shard_file(shard)))
        print(f"[build_index] shard {shard}: {end - start} vectors, {cfg.factory}", flush=True)
    print(f"[build_index] FAISS build {time.perf_counter() - started:.1f}s", flush=True)
    manifest.write(tmp)
    return manifest
