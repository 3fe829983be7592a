"""Generator options no run can use are refused before any worker starts, naming the keys: fp16 autocast on CPU,
a run that trains nothing, distillation with no retriever to train, LoRA adapters on a frozen generator."""

from __future__ import annotations

import pytest

from pipeline.config import RunConfig, apply_overrides
from pipeline.errors import ConfigError
from pipeline.train.checks import check_run_config

FROZEN = {"train.train_generator": False}
NO_RETRIEVER = {"model.train_question_encoder": False, "model.train_context_encoder": False}


@pytest.mark.parametrize("overrides, says", [
    ({"train.precision": "fp16"}, "train.precision: fp16 autocast runs on GPU only; use bf16 on CPU"),
    ({**FROZEN, **NO_RETRIEVER}, "train.train_generator: false with model.train_question_encoder and "
                                 "model.train_context_encoder false leaves nothing to train"),
    ({"model.retriever_loss": "distill", **NO_RETRIEVER}, "model.retriever_loss: distill trains the retriever"),
    ({"model.lora_r": 8, **FROZEN}, "model.lora_r: LoRA adapters train the generator, but train.train_generator "
                                    "is false"),
])
def test_generator_options_no_run_can_use_are_refused_naming_the_key(overrides, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")):
        check_run_config(apply_overrides(RunConfig(), overrides))


@pytest.mark.parametrize("overrides", [
    {"train.precision": "bf16"},  # bf16 runs on the CPU
    {"model.retriever_loss": "distill", **FROZEN},  # a retriever trained for a generator left as it is
    {"model.lora_r": 8, "train.precision": "bf16", "train.gradient_checkpointing": True},
])
def test_the_combinations_a_decoder_llm_run_needs_pass(overrides):
    check_run_config(apply_overrides(RunConfig(), overrides))
