"""Checks a fine-tuning run makes before any worker starts: config values, models against the index."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.config import RunConfig, check_section
from pipeline.errors import ConfigError, ModelLoadError
from pipeline.index.manifest import IndexManifest


def check_run_config(cfg: RunConfig) -> None:
    """ConfigError naming the keys for combinations no run can use (single-field bounds live with the options)."""
    for section in dataclasses.fields(cfg):
        check_section(getattr(cfg, section.name), section.name)
    if cfg.retrieval.mode == "local" and cfg.train.num_workers > 1:
        raise ConfigError("retrieval.mode: 'local' loads the index in every worker; use 'ray' or 'torch' "
                          f"with train.num_workers={cfg.train.num_workers}")


def check_model_fits_index(question_encoder: str, generator: str, manifest: IndexManifest, index_dir: str) -> None:
    """ModelLoadError if a model or tokenizer is missing, or the question encoder's width differs from the index."""
    from transformers import AutoConfig, AutoTokenizer

    for role, source in (("model.question_encoder", question_encoder), ("model.generator", generator)):
        try:
            config = AutoConfig.from_pretrained(source)
            AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{role} {source!r}: cannot load config/tokenizer ({str(e).splitlines()[0]})") \
                from None
        if role == "model.question_encoder":
            width = getattr(config, "projection_dim", 0) or getattr(config, "hidden_size", None)
            if width != manifest.dimension:
                raise ModelLoadError(
                    f"model.question_encoder {source!r} gives {width}-dim vectors but index {Path(index_dir)} "
                    f"was built with dimension {manifest.dimension} (encoder {manifest.encoder!r})"
                )
