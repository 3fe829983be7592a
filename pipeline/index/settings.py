"""What an index decides for everything that talks to it: the encoder its vectors came from, how that encoder
pooled, the passage token limit, the vector width. Read from the manifest into a frozen object that the driver
hands to the training workers beside the run's config: the user's config is never rewritten with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from pipeline.index.manifest import IndexManifest, read_manifest


@dataclass(frozen=True)
class IndexSettings:
    encoder: str  # name or path of the encoder the index's vectors came from
    pooling: str  # how it pooled (pipeline/model/registry.py POOLINGS)
    max_length: int  # token limit of a passage when embedded
    dimension: int
    count: int  # passages
    num_shards: int
    factory: str

    @classmethod
    def of(cls, manifest: IndexManifest) -> "IndexSettings":
        return cls(manifest.encoder, manifest.pooling, manifest.max_length, manifest.dimension, manifest.count,
                   manifest.num_shards, manifest.factory)

    @classmethod
    def read(cls, directory: str | Path) -> "IndexSettings":
        """The settings of the version `directory` serves (a location: its CURRENT)."""
        return cls.of(read_manifest(directory))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def question_encoder(self, name_or_path: str) -> str:
        """`model.question_encoder`, or this index's encoder when it is empty."""
        return name_or_path or self.encoder

    def context_encoder(self, name_or_path: str) -> str:
        """`model.context_encoder`, or this index's encoder when it is empty."""
        return name_or_path or self.encoder
