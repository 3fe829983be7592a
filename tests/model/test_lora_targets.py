"""LoRA target modules are checked on the driver against the generator's own module names (built on the meta
device from its config, no weights): a name the model does not have is one error naming the key."""

from __future__ import annotations

import pytest
from transformers import BartConfig, GPT2Config, LlamaConfig

from pipeline.errors import ConfigError
from pipeline.model.lora import check_lora_targets

LLAMA = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1)
BART = BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                  decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)
GPT2 = GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2)


@pytest.mark.parametrize("config, targets", [
    (LLAMA, "q_proj,v_proj"), (LLAMA, "self_attn.o_proj"), (LLAMA, "all-linear"),
    (BART, "q_proj, k_proj, fc1"), (GPT2, "c_attn"),
])
def test_modules_the_generator_has_pass(config, targets):
    check_lora_targets(config, targets, "tiny")


@pytest.mark.parametrize("config, targets, missing, has", [
    (LLAMA, "q_proj,c_attn", "c_attn", "q_proj"),  # a GPT-2 name on a Llama
    (GPT2, "q_proj", "q_proj", "c_attn"),
    (BART, "gate_proj", "gate_proj", "fc1"),
])
def test_a_module_the_generator_lacks_is_named_with_the_ones_it_has(config, targets, missing, has):
    with pytest.raises(ConfigError, match=rf"model.lora_target_modules: {missing} not in generator 'tiny'; "
                                          rf"its linear layers are .*{has}"):
        check_lora_targets(config, targets, "tiny")
