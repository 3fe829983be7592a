"""Checks a fine-tuning run makes before any worker starts: config values, models against the index."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from pipeline.config import RunConfig
from pipeline.errors import ConfigError, ModelLoadError
from pipeline.index.settings import IndexSettings
from pipeline.model.causal_inputs import resolve_prompt_template
from pipeline.model.encoders import resolve_encoder
from pipeline.model.generators import kind_of_config
from pipeline.model.lora import check_lora_targets
from pipeline.options import check_section
from pipeline.retrieval.modes import MODES, retrieval_mode


def check_run_config(cfg: RunConfig) -> None:
    """ConfigError naming the keys for combinations no run can use (single-field bounds live with the options)."""
    for section in dataclasses.fields(cfg):
        check_section(getattr(cfg, section.name), section.name)
    m, r, refresh = cfg.model, cfg.retrieval, cfg.refresh
    mode = retrieval_mode(r.mode)
    if mode.max_workers is not None and cfg.train.num_workers > mode.max_workers:
        others = [m.name for m in MODES.values() if m.max_workers is None]
        raise ConfigError(f"retrieval.mode: {r.mode!r} serves {mode.max_workers} worker(s) ({mode.summary}); "
                          f"use {' or '.join(map(repr, others))} with train.num_workers={cfg.train.num_workers}")
    if r.rerank_depth and r.rerank_depth < m.n_docs:
        raise ConfigError(f"retrieval.rerank_depth: {r.rerank_depth} passages cannot be re-scored down to "
                          f"model.n_docs={m.n_docs}; use a depth >= {m.n_docs} (or 0: no rerank)")
    if r.rerank_depth and not m.train_context_encoder:
        raise ConfigError("retrieval.rerank_depth: re-scoring uses the trained context encoder; "
                          "set model.train_context_encoder true (or rerank_depth 0)")
    if refresh.every_steps and not m.train_context_encoder:
        raise ConfigError("refresh.every_steps: a refresh re-embeds the passages with the trained context encoder; "
                          "set model.train_context_encoder true (or refresh.every_steps 0)")
    t = cfg.train
    if t.precision == "fp16" and not t.use_gpu:
        raise ConfigError("train.precision: fp16 autocast runs on GPU only; use bf16 on CPU (or train.use_gpu true)")
    retriever_trains = m.train_question_encoder or m.train_context_encoder
    if not (t.train_generator or retriever_trains):
        raise ConfigError("train.train_generator: false with model.train_question_encoder and "
                          "model.train_context_encoder false leaves nothing to train")
    if m.lora_r and not t.train_generator:
        raise ConfigError("model.lora_r: LoRA adapters train the generator, but train.train_generator is false; "
                          "set model.lora_r 0 or train.train_generator true")
    if m.retriever_loss == "distill" and not retriever_trains:
        raise ConfigError("model.retriever_loss: distill trains the retriever; set model.train_question_encoder "
                          "(or model.train_context_encoder) true")
    if refresh.every_steps and not mode.uses_group:
        raise ConfigError(f"refresh.every_steps: a refreshed index is served by rolling the retrieval group "
                          f"forward; use retrieval.mode ray, not {r.mode!r}")


def check_config_fits_index(cfg: RunConfig, index: IndexSettings) -> None:
    """ConfigError naming both values when an index setting the user gave (index.encoder, pooling, max_length)
    differs from what the served index was built with: a run embeds questions and passages as its index did."""
    given = {"index.encoder": resolve_encoder(cfg.index.encoder), "index.pooling": cfg.index.pooling,
             "index.max_length": cfg.index.max_length}
    built = {"index.encoder": index.encoder, "index.pooling": index.pooling, "index.max_length": index.max_length}
    for key, value in given.items():
        if cfg.is_set(key) and value != built[key]:
            raise ConfigError(f"{key}: {value!r} given, but index {Path(cfg.index.directory)} was built with "
                              f"{built[key]!r}; leave {key} out (a run uses the index's own) or build another index")


def check_model_fits_index(cfg: RunConfig, index: IndexSettings) -> None:
    """ConfigError if the index holds fewer passages than a question asks for; ModelLoadError if a model or
    tokenizer is missing, or an encoder's width differs from the index's."""
    depth = max(cfg.model.n_docs, cfg.retrieval.rerank_depth)
    if depth > index.count:
        raise ConfigError(f"model.n_docs: {depth} passages per question (or retrieval.rerank_depth), but index "
                          f"{Path(cfg.index.directory)} holds {index.count}")
    roles = [("model.question_encoder", index.question_encoder(cfg.model.question_encoder)),
             ("model.generator", cfg.model.generator)]
    if cfg.model.train_context_encoder:
        roles.append(("model.context_encoder", index.context_encoder(cfg.model.context_encoder)))
    for role, source in roles:
        try:
            config = AutoConfig.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{role} {source!r}: cannot load config/tokenizer ({str(e).splitlines()[0]})") \
                from None
        if role == "model.generator" and kind_of_config(config).name == "causal":
            resolve_prompt_template(tokenizer, cfg.model.prompt_template)  # a template the tokenizer can fill
        if role == "model.generator" and cfg.model.lora_r:
            check_lora_targets(config, cfg.model.lora_target_modules, source)
        if role != "model.generator":
            width = getattr(config, "projection_dim", 0) or getattr(config, "hidden_size", None)
            if width != index.dimension:
                raise ModelLoadError(
                    f"{role} {source!r} gives {width}-dim vectors but index {Path(cfg.index.directory)} "
                    f"was built with dimension {index.dimension} (encoder {index.encoder!r})"
                )
