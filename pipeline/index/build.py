"""BUILD: documents file -> passages (<= N words) -> embeddings (Ray Data actor pool) -> a new index version.

A build writes a new version into the index location (pipeline/index/versions.py): into a hidden directory,
renamed to the next vNNNN and made CURRENT only when complete, so a failed or interrupted build never leaves
anything that `read_manifest` accepts, and a retrieval group serving an older version keeps its files. The
refresh during training (pipeline/train/refresh_task.py) goes through the same `embed_passages`,
`write_passages_and_vectors` and `build_shards`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import faiss
import numpy as np
import ray.data

from pipeline.config import IndexConfig, KnowledgeBaseConfig
from pipeline.errors import (
    ConfigError,
    DataError,
    IndexFormatError,
    unwrap_pipeline_error,
)
from pipeline.index.manifest import (
    MANIFEST,
    PASSAGES,
    VECTOR_DTYPES,
    VECTORS,
    IndexManifest,
    PassagesWriter,
    even_shard_offsets,
    open_vectors,
    shard_file,
)
from pipeline.index.precomputed import (
    EmbeddedSource,
    check_adoptable,
    check_embedded_rows,
    embedded_source,
    read_embedded_dataset,
)
from pipeline.index.recall import measure_recall
from pipeline.index.versions import (
    begin_version,
    discard_building,
    is_location,
    publish_version,
    resolve_version,
)
from pipeline.model.encoders import (
    PassageEmbedder,
    load_encoder,
    resolve_encoder,
    weights_sha256,
)
from pipeline.options import check_section
from pipeline.progress import Progress
from pipeline.storage import storage_errors
from pipeline.table_files import iter_checked_rows, read_dataset, require_text

_ADD_CHUNK = 65_536


def split_into_passages(text: str, max_words: int) -> list[str]:
    """Consecutive chunks of at most `max_words` whitespace-separated words."""
    words = text.split()
    return [" ".join(words[i:i + max_words]) for i in range(0, len(words), max_words)]


def _split_batch(batch: dict, max_words: int) -> dict:
    titles, texts = [], []
    for title, text in zip(batch["title"], batch["text"]):
        # check_documents let only text or null titles through, and Ray Data's JSON reader (pandas) reads a
        # null as NaN: anything but a string is an empty title.
        title = title if isinstance(title, str) else ""
        for passage in split_into_passages(text, max_words):
            titles.append(title)
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


def check_vector_dtype(cfg: IndexConfig) -> None:
    """ConfigError for float16 exact vectors under an exact index, which would save nothing: a Flat shard is
    searched over the exact vectors themselves, and its FAISS file holds them in float32 anyway."""
    if cfg.vector_dtype != "float32" and cfg.factory.strip() == "Flat":
        raise ConfigError(f"index.vector_dtype {cfg.vector_dtype}: only for approximate index.factory values "
                          f"(IVF..., HNSW...), whose exact vectors serve the re-ranking; Flat keeps float32")


def embed_passages(ds, encoder: str, pooling: str, max_length: int, batch_size: int, concurrency: int,
                   num_cpus: float, num_gpus: float):
    """`ds` of {title, text} -> the same rows with float32 `vector`, embedded by a pool of PassageEmbedder actors."""
    return ds.map_batches(
        PassageEmbedder,
        fn_constructor_kwargs={"encoder": encoder, "pooling": pooling, "max_length": max_length,
                               "use_gpu": num_gpus > 0, "num_threads": max(1, int(num_cpus))},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus, num_gpus=num_gpus,
    )


def write_passages_and_vectors(ds, directory: Path, progress_label: str | None = "build_index",
                               total: int | None = None, log_every_s: float = 10.0) -> tuple[int, int, float]:
    """Stream embedded batches into passages.arrow and vectors.f32; returns (count, dimension, seconds).

    Progress lines under `progress_label` (None: silent); `total` passages when known (a refresh knows it, a
    build learns it only at the end)."""
    count, dimension, started = 0, None, time.perf_counter()
    progress = Progress(progress_label, total, "passages", every_s=log_every_s) if progress_label else None
    # One path for the two files written together: pyarrow's error on a full disk names no file.
    with storage_errors(f"{directory}/{{{PASSAGES},{VECTORS}}}"), PassagesWriter(directory) as passages, \
            open(directory / VECTORS, "wb") as vectors_out:
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            vectors = np.ascontiguousarray(batch["vector"], dtype=np.float32)
            dimension = dimension or vectors.shape[1]
            passages.add(list(batch["title"]), list(batch["text"]))
            vectors_out.write(vectors.tobytes())
            count += len(vectors)
            if progress:
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
            index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
        except RuntimeError as e:
            raise ConfigError(
                f"index.factory {factory!r}: training on {len(sample)} vectors failed "
                f"({str(e).strip().splitlines()[-1][:200]}); use more passages or a smaller index"
            ) from None
    for start in range(0, len(vectors), _ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[start:start + _ADD_CHUNK], dtype=np.float32))
    return index


def build_one_index(vectors: np.ndarray, factory: str, path: Path, train_sample: int = 100_000) -> None:
    """Write one inner-product FAISS index of `factory` over [n, d] `vectors` (ids 0..n-1; float32, or float16
    read as float32) to `path`."""
    index = _build_shard(vectors, factory, train_sample)
    with storage_errors(path):
        faiss.write_index(index, str(path))


def build_index(kb: KnowledgeBaseConfig, cfg: IndexConfig) -> IndexManifest:
    """Build a new version of the index location `cfg.directory` from `kb.documents` and make it CURRENT.

    Prints progress and timings. Needs a connected Ray. With `cfg.overwrite` on a location that already holds
    versions, the new one is added beside them (the caller removes the ones no retrieval group holds:
    `pipeline.retrieval.group_record.prune_unused_versions`; the index knows nothing of groups).
    """
    location = Path(cfg.directory)
    check_section(kb, "knowledge_base")
    check_section(cfg, "index")
    check_factory(cfg.factory)
    check_vector_dtype(cfg)
    _check_build_target(location, cfg.overwrite)
    source = _check_input(kb, cfg)
    created = _first_missing(location)
    try:
        building = begin_version(location)
        try:
            manifest = _build_into(building, kb, cfg, source)
            version = publish_version(location, building)
        except BaseException:
            discard_building(building)
            raise
    except BaseException:
        if created is not None:  # a location this build made (with any parents it made) goes with it
            shutil.rmtree(created, ignore_errors=True)
        raise
    print(f"[build_index] wrote {version.directory} (CURRENT)", flush=True)
    return manifest


def _check_input(kb: KnowledgeBaseConfig, cfg: IndexConfig) -> EmbeddedSource | None:
    """Check the documents (or precomputed passages) on the driver; returns the precomputed source, if any."""
    source = embedded_source(kb)
    if cfg.adopt_faiss and (source is None or cfg.shards != 1):
        raise ConfigError("index.adopt_faiss: a .faiss file is adopted only over precomputed vectors "
                          "(knowledge_base.embeddings_column or a datasets folder), as the one shard (index.shards 1)")
    if source is None:
        print(f"[build_index] {kb.documents}: {check_documents(kb)} documents", flush=True)
        return None
    if not cfg.encoder:
        raise ConfigError(f"index.encoder: {source.path} holds precomputed vectors; name the encoder they came from "
                          f"(it is recorded in the manifest and encodes the questions)")
    count, dimension = check_embedded_rows(source)
    if cfg.adopt_faiss:
        check_adoptable(cfg.adopt_faiss, source, count, dimension)
    print(f"[build_index] {source.path}: {count} passages with {dimension}-dim vectors of {cfg.encoder} "
          f"(precomputed: no encoder loaded)", flush=True)
    return source


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of `path` that does not exist yet (what a build creates), or None."""
    missing = None
    for candidate in [path, *path.parents]:
        if candidate.exists():
            break
        missing = candidate
    return missing


def _check_build_target(location: Path, overwrite: bool) -> None:
    """IndexFormatError unless `location` is absent, empty, or (with overwrite) an index location."""
    if not location.exists():
        return
    if is_location(location):
        if not overwrite:
            raise IndexFormatError(
                f"{location}: already holds index version {resolve_version(location).name} (CURRENT); pass "
                f"--index.overwrite true to build a new version beside it")
        return
    if (location / MANIFEST).is_file():
        raise IndexFormatError(f"{location}: is an index version directory, not a location; build into a new "
                               f"--index.directory (versions are kept side by side there)")
    if not location.is_dir() or any(location.iterdir()):
        raise IndexFormatError(f"{location}: exists and is not an index location (no CURRENT); refusing to write "
                               f"into it: choose an empty or new --index.directory")


def _build_into(tmp: Path, kb: KnowledgeBaseConfig, cfg: IndexConfig, source: EmbeddedSource | None) -> IndexManifest:
    if source is None:
        encoder = resolve_encoder(cfg.encoder)
        ds = read_dataset(kb.documents, [kb.title_column, kb.text_column])
        ds = ds.rename_columns({kb.title_column: "title", kb.text_column: "text"})
        ds = ds.map_batches(_split_batch, fn_kwargs={"max_words": kb.passage_words}, batch_format="numpy")
        ds = embed_passages(ds, encoder, cfg.pooling, cfg.max_length, cfg.embed_batch_size, cfg.embed_concurrency,
                            cfg.embed_num_cpus, cfg.embed_num_gpus)
    else:
        encoder, ds = cfg.encoder, read_embedded_dataset(source)
    try:
        count, dimension, embed_s = write_passages_and_vectors(ds, tmp)
    except Exception as e:
        raise unwrap_pipeline_error(e)
    done = "embedded" if source is None else "wrote"
    print(f"[build_index] {done} {count} passages in {embed_s:.1f}s ({count / embed_s:.0f} passages/s)", flush=True)
    if cfg.shards > count:
        raise ConfigError(f"index.shards: {cfg.shards} shards for only {count} passages")

    manifest = IndexManifest(
        encoder=encoder, pooling=cfg.pooling, max_length=cfg.max_length, dimension=dimension,
        metric="inner_product", count=count, factory=cfg.factory,
        shard_offsets=even_shard_offsets(count, cfg.shards), vector_dtype=cfg.vector_dtype,
        fingerprint=_fingerprint(encoder, count, source, cfg.adopt_faiss),
    )
    build_shards(tmp, manifest, cfg.train_sample, cfg.recall_queries, adopt=cfg.adopt_faiss or None)
    return manifest


def _fingerprint(encoder: str, count: int, source: EmbeddedSource | None, adopt: str = "") -> dict:
    if source is not None:  # the vectors' encoder is a name the user gave: nothing of it is loaded to hash
        return {"encoder": encoder, "precomputed": str(source.path), "count": count, "adopted_faiss": adopt}
    return {"encoder": encoder, "weights_sha256": weights_sha256(load_encoder(encoder)[1]), "count": count}


def build_shards(directory: Path, manifest: IndexManifest, train_sample: int, recall_queries: int,
                 log=print, adopt: str | None = None) -> None:
    """Write one FAISS index per shard of `manifest` over `directory`/vectors.f32 (or copy the checked .faiss
    file `adopt` as the one shard), store the exact vectors as `manifest.vector_dtype`, measure an approximate
    index's recall@10 against exact float32 search, then write the manifest (last: it marks the build complete).
    `log` takes the progress lines (None: they go nowhere)."""
    log = log or (lambda line: None)
    vectors = open_vectors(directory, manifest, "float32")
    started = time.perf_counter()
    if adopt:
        with storage_errors(directory / shard_file(0)):
            shutil.copyfile(adopt, directory / shard_file(0))
        log(f"[build_index] shard 0: adopted {adopt} ({manifest.count} vectors)")
    for shard in range(manifest.num_shards) if not adopt else ():
        start, end = manifest.shard_range(shard)
        build_one_index(vectors[start:end], manifest.factory, directory / shard_file(shard), train_sample)
        log(f"[build_index] shard {shard}: {end - start} vectors, {manifest.factory}")
    log(f"[build_index] FAISS build {time.perf_counter() - started:.1f}s")
    indexes = [faiss.read_index(str(directory / shard_file(s)), faiss.IO_FLAG_MMAP_IFC)
               for s in range(manifest.num_shards)]
    served = _store_vectors(directory, manifest, vectors)
    manifest.recall_at_10_vs_exact = measure_recall(indexes, served, manifest.shard_offsets, recall_queries,
                                                    exact=vectors)
    if served is not vectors:
        with storage_errors(directory / VECTORS):
            (directory / VECTORS).unlink()
    for row in manifest.recall_at_10_vs_exact:
        setting = ", ".join(f"{key} {value}" for key, value in row.items() if key not in ("recall", "queries"))
        log(f"[build_index] recall@10 vs exact with {setting}: {row['recall']:.3f}")
    manifest.write(directory)


def _store_vectors(directory: Path, manifest: IndexManifest, vectors: np.ndarray) -> np.ndarray:
    """`vectors` (the float32 file) written again as `manifest.vector_dtype`, chunk by chunk so a 64 GB file
    needs no 64 GB of memory; returns the stored file memory-mapped (`vectors` itself for float32)."""
    if manifest.vector_dtype == "float32":
        return vectors
    numpy_type = VECTOR_DTYPES[manifest.vector_dtype][1]
    path = directory / manifest.vectors_file
    with storage_errors(path), open(path, "wb") as out:
        for start in range(0, len(vectors), _ADD_CHUNK):
            with np.errstate(over="ignore"):  # an overflow is refused next, naming the passage
                stored = np.ascontiguousarray(vectors[start:start + _ADD_CHUNK], dtype=numpy_type)
            _check_representable(stored, start, manifest.vector_dtype)
            out.write(stored.tobytes())
    return open_vectors(directory, manifest)


def _check_representable(stored: np.ndarray, first_row: int, dtype: str) -> None:
    """ConfigError naming the first passage whose vector overflowed `dtype` (a float16 holds |x| <= 65504), which
    would be stored as infinity and score every question as +-inf."""
    finite = np.isfinite(stored).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise ConfigError(f"index.vector_dtype {dtype}: the vector of passage {first_row + row} has values beyond "
                          f"{dtype}'s range (largest {float(np.finfo(stored.dtype).max):g}); keep float32")
