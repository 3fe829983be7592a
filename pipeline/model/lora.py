"""LoRA adapters on the generator, either kind, through `peft` (`model.lora_r` > 0; 0 = full fine-tuning).

The base generator's weights stay frozen and only the adapters (and the encoders the run trains) learn, so a
checkpoint holds only those (`save_rag_model(..., trainable_only=True)`): it names the base generator, which a
restore loads again before putting the adapters back. The exported model holds the generator with the adapters
merged (loadable alone, like any fine-tuned generator) and the adapters alone under `generator_adapter/`.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
from transformers.pytorch_utils import Conv1D

from pipeline.errors import ConfigError
from pipeline.model.generators import kind_of
from pipeline.model.parts import RagParts

ADAPTER_DIR = "generator_adapter"


@dataclass(frozen=True)
class LoraSettings:
    """What a LoRA run adds to its generator, and the base generator it adds it to (name or path)."""

    base_generator: str
    r: int
    alpha: float
    dropout: float
    target_modules: str  # "all-linear" (every linear layer but the output head) or comma-separated names

    def peft_config(self) -> LoraConfig:
        targets = self.target_modules if self.target_modules == "all-linear" else \
            [name.strip() for name in self.target_modules.split(",") if name.strip()]
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets)

    def as_dict(self) -> dict:
        return asdict(self)


def lora_settings(model_cfg, base_generator: str) -> LoraSettings | None:
    """The run's LoRA settings (ModelConfig), or None for full fine-tuning (lora_r 0)."""
    if model_cfg.lora_r == 0:
        return None
    return LoraSettings(base_generator, model_cfg.lora_r, model_cfg.lora_alpha, model_cfg.lora_dropout,
                        model_cfg.lora_target_modules)


def check_lora_targets(generator_config, target_modules: str, generator: str) -> None:
    """ConfigError naming `model.lora_target_modules` when a named module is not in the generator (checked on
    the driver, over the model built from its config on the meta device: no weights are loaded)."""
    if target_modules == "all-linear":
        return
    wanted = [name.strip() for name in target_modules.split(",") if name.strip()]
    head = AutoModelForSeq2SeqLM if getattr(generator_config, "is_encoder_decoder", False) else AutoModelForCausalLM
    with torch.device("meta"):
        model = head.from_config(generator_config)
    names = [name for name, _ in model.named_modules()]
    missing = [w for w in wanted if not any(name == w or name.endswith("." + w) for name in names)]
    if missing:  # peft matches a name against the end of each module's dotted path, as here
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, (torch.nn.Linear, Conv1D))})  # GPT-2's projections are Conv1D
        raise ConfigError(f"model.lora_target_modules: {', '.join(missing)} not in generator {generator!r}; its "
                          f"linear layers are {', '.join(linear)} (or use all-linear)")


def add_lora(parts: RagParts, settings: LoraSettings) -> RagParts:
    """Wrap the generator with fresh (zero-effect) adapters; its own weights stop training."""
    kind_of(parts).set_generator(parts, get_peft_model(parts.head.generator, settings.peft_config()))
    parts.lora = settings
    return parts


def load_adapter(parts: RagParts, settings: LoraSettings, adapter_dir) -> RagParts:
    """Put saved adapters back on `parts`' (base) generator, trainable."""
    kind_of(parts).set_generator(parts, PeftModel.from_pretrained(parts.head.generator, adapter_dir,
                                                                   is_trainable=True))
    parts.lora = settings
    return parts


@contextmanager
def merged_generator(parts: RagParts):
    """Within the block, `parts` holds a copy of its generator with the adapters merged in (the run's own
    generator is restored after, adapters and all)."""
    wrapped = parts.head.generator
    kind = kind_of(parts)
    kind.set_generator(parts, copy.deepcopy(wrapped).merge_and_unload())
    try:
        yield wrapped
    finally:
        kind.set_generator(parts, wrapped)


def parameter_counts(parts: RagParts) -> tuple[int, int]:
    """(trainable, all) parameters of the model, the encoders included."""
    modules = [parts.model] + ([parts.context_encoder] if parts.context_encoder is not None else [])
    params = {id(p): p for module in modules for p in module.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
