"""An index version as stock transformers' `RagRetriever` reads it (index_name="custom"):

    <output>/passages       a `datasets` folder (`Dataset.save_to_disk`): title, text, embeddings; row = passage id
    <output>/index.faiss    one FAISS index over all passages (inner product), ids = rows of passages

    RagRetriever.from_pretrained(model_dir, index_name="custom", passages_path=..., index_path=...)

transformers' RAG heads retrieve with `question_encoder(input_ids, attention_mask)[0]`: a DPR question encoder's
pooler output, but a BERT-style AutoModel's token states [B, L, d]. So a model is exported with the index only
when that first output is the vector our retrieval pools (checked on probe questions): `pooling: pooler` on a
DPR question encoder (or `cls` where DPR has no projection). Anything else is refused with a line that says so;
the index files alone (no model) serve a caller that passes its own pooled vectors as `question_hidden_states`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch

from pipeline.errors import ConfigError, IndexFormatError
from pipeline.index.build import build_one_index
from pipeline.index.manifest import (
    PASSAGES,
    IndexManifest,
    open_vectors,
    read_manifest,
    shard_file,
)
from pipeline.index.versions import resolve_version
from pipeline.model.encoders import pool
from pipeline.model.rag import load_rag_model
from pipeline.storage import replace_directory, storage_errors

PASSAGES_DIR = "passages"
INDEX_FILE = "index.faiss"
_PROBES = ["who wrote the first book of the series?", "where is the harbor", "a"]


@dataclass(frozen=True)
class HfRetrieverFiles:
    passages_path: Path
    index_path: Path
    count: int
    dimension: int


def export_hf_retriever(index: str | Path, output: str | Path, model_dir: str | Path | None = None) -> HfRetrieverFiles:
    """Write the CURRENT version of index location `index` (or a version directory) as `output`/passages and
    `output`/index.faiss, replacing any earlier `output` whole (nothing half-written). With `model_dir` (a
    `save_rag_model` directory), first check that the stock RAG heads would retrieve with its question encoder
    as we do: ConfigError otherwise. Streams the passages one Arrow batch at a time."""
    version = resolve_version(index).directory
    manifest = read_manifest(version, checksums=True)
    if model_dir is not None:
        check_stock_retrieval_fits(model_dir, manifest)
    output = Path(output)

    def fill(tmp: Path) -> None:
        _write_passages(version, manifest, tmp)
        _write_index(version, manifest, tmp / INDEX_FILE)

    replace_directory(output, fill)
    return HfRetrieverFiles(output / PASSAGES_DIR, output / INDEX_FILE, manifest.count, manifest.dimension)


@torch.no_grad()
def check_stock_retrieval_fits(model_dir: str | Path, manifest: IndexManifest) -> None:
    """ConfigError unless the saved model's question encoder gives, as its first output (what transformers' RAG
    heads hand RagRetriever), the vector our retrieval pools for it, of the index's dimension."""
    parts = load_rag_model(model_dir)
    encoder = parts.head.question_encoder
    batch = parts.question_tokenizer(_PROBES, padding=True, return_tensors="pt")
    outputs = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], return_dict=True)
    stock, ours = outputs[0].float(), pool(outputs, batch["attention_mask"], parts.pooling).float()
    if ours.shape[-1] != manifest.dimension:
        raise ConfigError(f"{model_dir}: question vectors of {ours.shape[-1]} dims, the index's are "
                          f"{manifest.dimension}")
    if stock.shape != ours.shape or not torch.allclose(stock, ours, atol=1e-5):
        raise ConfigError(
            f"{model_dir}: transformers' RAG heads retrieve with question_encoder(...)[0] "
            f"({type(encoder).__name__}: shape {list(stock.shape)} on {len(_PROBES)} questions), this model pools "
            f"{parts.pooling!r} {list(ours.shape)}: a stock RagRetriever would retrieve other passages (it fits a "
            f"DPR question encoder with pooling 'pooler'); export without --model and pass pooled question "
            f"vectors as question_hidden_states")


def _write_passages(version: Path, manifest: IndexManifest, tmp: Path) -> None:
    """The passages with their exact vectors as an Arrow stream file in `tmp`, saved by `datasets` as its folder."""
    import datasets  # optional dependency (the `hf` extra): only this export and its tests need it

    vectors = open_vectors(version, manifest)
    stream = tmp / "passages.stream.arrow"
    schema = pa.schema([("title", pa.string()), ("text", pa.string()), ("embeddings", pa.list_(pa.float32()))])
    start = 0
    with storage_errors(stream), pa.memory_map(str(version / PASSAGES)) as source, \
            pa.ipc.new_stream(str(stream), schema) as writer:
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            end = start + batch.num_rows
            flat = pa.array(vectors[start:end].reshape(-1), pa.float32())
            embeddings = pa.FixedSizeListArray.from_arrays(flat, manifest.dimension).cast(pa.list_(pa.float32()))
            writer.write_batch(pa.record_batch([batch.column("title"), batch.column("text"), embeddings],
                                               schema=schema))
            start = end
    if start != manifest.count:
        raise IndexFormatError(f"{version / PASSAGES}: {start} passages, manifest says {manifest.count}")
    with storage_errors(tmp / PASSAGES_DIR):
        datasets.Dataset.from_file(str(stream)).save_to_disk(str(tmp / PASSAGES_DIR))
    stream.unlink()


def _write_index(version: Path, manifest: IndexManifest, path: Path) -> None:
    """One FAISS file over every passage: a one-shard version's own file (searched as we search it), else one
    index of the manifest's factory built over vectors.f32 (exact for Flat; an approximate index is a new one)."""
    if manifest.num_shards == 1:
        with storage_errors(path):
            shutil.copyfile(version / shard_file(0), path)
        return
    build_one_index(open_vectors(version, manifest), manifest.factory, path)
