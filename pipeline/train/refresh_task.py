"""REFRESH: re-embed an index's passages with new context-encoder weights into a new index version, then roll
the retrieval group forward to it. Runs as a Ray task started by the training loop (pipeline/train/
refresh_schedule.py), beside training, through the same Ray Data embedding pipeline as `build_index`:

    weights (object store) -> <location>/.building-x/context_encoder/   (save_pretrained: the exact weights)
    passages of the served version (memory-mapped, read in row ranges by Ray Data tasks)
      -> PassageEmbedder actors (refresh.embed_*: CPU or GPU, fractional) -> passages.arrow + vectors.f32
      -> FAISS shards like the served version's (factory, shard layout) -> manifest.json
    publish as the next vNNNN (+ CURRENT) -> roll_group_forward -> versions no group holds are removed

A refresh that fails removes what it wrote and raises; the group keeps serving what it served.
"""

from __future__ import annotations

import time

import numpy as np
import ray

from pipeline.config import config_from_dict
from pipeline.index.build import (
    build_shards,
    embed_passages,
    write_passages_and_vectors,
)
from pipeline.index.manifest import IndexManifest, open_passages, read_manifest
from pipeline.index.versions import begin_version, discard_building, publish_version
from pipeline.model.encoders import load_encoder, weights_sha256
from pipeline.retrieval.group_record import served_version
from pipeline.retrieval.rollout import roll_group_forward

_ROWS_PER_READ = 4096


def _read_passage_rows(batch: dict, directory: str) -> dict:
    """Ray Data map_batches: row ids -> their titles and texts, read from the memory-mapped passages file."""
    table = open_passages(directory)
    rows = table.take(batch["id"])
    return {"title": np.array(rows.column("title").to_pylist(), dtype=object),
            "text": np.array(rows.column("text").to_pylist(), dtype=object)}


@ray.remote(num_cpus=0)  # the coordinator waits; the embedding actors hold the CPUs (refresh.embed_num_cpus)
def refresh_index(location: str, base_encoder: str, weights: list, step: int, run: dict) -> dict:
    """Embed the served version's passages with `weights` (a one-element list holding the ObjectRef of a context
    encoder state dict, so Ray hands the reference, not the tensors, to this task), publish the result as a new
    version of `location` and roll the group forward. Returns the refresh's statistics."""
    cfg = config_from_dict(run)
    started = time.perf_counter()
    source = served_version(cfg.retrieval.group, cfg.retrieval.namespace).directory
    served = read_manifest(source)
    building = begin_version(location)
    try:
        tokenizer, encoder = load_encoder(base_encoder)
        encoder.load_state_dict(ray.get(weights[0]))
        encoder.save_pretrained(building / "context_encoder")
        tokenizer.save_pretrained(building / "context_encoder")
        passages = ray.data.range(served.count, override_num_blocks=max(1, served.count // _ROWS_PER_READ))
        passages = passages.map_batches(_read_passage_rows, fn_kwargs={"directory": str(source)},
                                        batch_format="numpy", batch_size=None)
        ds = embed_passages(passages, str(building / "context_encoder"), served.pooling, served.max_length,
                            cfg.refresh.embed_batch_size, cfg.refresh.embed_concurrency, cfg.refresh.embed_num_cpus,
                            cfg.refresh.embed_num_gpus)
        count, dimension, embed_s = write_passages_and_vectors(ds, building, progress_label=None)
        manifest = IndexManifest(
            encoder=served.encoder, pooling=served.pooling, max_length=served.max_length, dimension=dimension,
            metric=served.metric, count=count, factory=served.factory, shard_offsets=served.shard_offsets,
            vector_dtype=served.vector_dtype,
            fingerprint={"encoder": served.encoder, "weights_sha256": weights_sha256(encoder), "count": count,
                         "trained_at_step": step, "weights": "context_encoder"},
        )
        build_started = time.perf_counter()
        build_shards(building, manifest, cfg.index.train_sample, cfg.index.recall_queries,
                     log=None)  # a refresh reports once, through the training loop (refresh_schedule)
        build_s = time.perf_counter() - build_started
        version = publish_version(location, building)
    except BaseException:
        discard_building(building)
        raise
    rollout = roll_group_forward(cfg.retrieval.group, cfg.retrieval.namespace, version)
    return {"version": version.name, "passages": count, "from_step": step, "embed_s": round(embed_s, 2),
            "build_s": round(build_s, 2), "swap_s": rollout.swap_s, "removed": rollout.removed,
            "total_s": round(time.perf_counter() - started, 2)}
