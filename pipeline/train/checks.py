"""Checks a fine-tuning run makes before any worker starts: config values, models against the index."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import RunConfig
from pipeline.errors import ConfigError, ModelLoadError
from pipeline.index.manifest import IndexManifest


def check_run_config(cfg: RunConfig) -> None:
    """ConfigError naming the key for values no run can use."""
    t, m = cfg.train, cfg.model
    positive = {"train.num_workers": t.num_workers, "train.epochs": t.epochs, "train.batch_size": t.batch_size,
                "train.grad_accum": t.grad_accum, "train.checkpoint_every_epochs": t.checkpoint_every_epochs,
                "model.n_docs": m.n_docs, "model.max_source_length": m.max_source_length,
                "model.max_target_length": m.max_target_length, "retrieval.replicas": cfg.retrieval.replicas}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}")
    for key, value in {"train.lr": t.lr, "train.encoder_lr": t.encoder_lr}.items():
        if not value > 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
    if not 0 <= m.label_smoothing < 1:
        raise ConfigError(f"model.label_smoothing: must be in [0, 1), got {m.label_smoothing}")
    if m.dropout >= 1:
        raise ConfigError(f"model.dropout: must be < 1 (negative keeps the checkpoint's), got {m.dropout}")
    if cfg.retrieval.mode == "local" and t.num_workers > 1:
        raise ConfigError("retrieval.mode: 'local' loads the index in every worker; use 'ray' or 'torch' "
                          f"with train.num_workers={t.num_workers}")


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
