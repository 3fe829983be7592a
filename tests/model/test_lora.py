"""LoRA on the generator, both kinds (pipeline/model/lora.py): adapters start as a no-op and are all that trains in
the generator; a checkpoint holds only the trainable weights and restores the same model; the export holds the
generator with the adapters merged (loadable alone) and the adapters alone. No Ray."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from pipeline.model.lora import ADAPTER_DIR, add_lora, lora_settings, parameter_counts
from pipeline.model.rag import load_rag_model, save_rag_model
from pipeline.model.rag_with_retrieval import RagWithRetrieval
from tests.model.test_causal_rag import save_tiny_causal_lm
from tests.model.test_generator_kinds import batch_for, rag_for, run_config
from tests.model.test_rag import save_tiny_bart, save_tiny_bert


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    save_tiny_causal_lm(root / "llama", "llama")
    return {"bert": str(save_tiny_bert(root / "bert")), "bart": str(save_tiny_bart(root / "bart")),
            "llama": str(root / "llama")}


def lora_rag(paths, generator: str) -> RagWithRetrieval:
    rag = rag_for(paths, generator, **{"model.dropout": 0.0})
    cfg = run_config(**{"model.lora_r": 4, "model.lora_dropout": 0.0})
    add_lora(rag.parts, lora_settings(cfg.model, paths[generator]))
    return rag


def loss_of(rag: RagWithRetrieval) -> float:
    rag.eval()
    with torch.no_grad():
        return rag(*batch_for(rag)).item()


@pytest.mark.parametrize("generator", ["bart", "llama"])
def test_fresh_adapters_change_nothing_and_are_all_that_trains_in_the_generator(paths, generator):
    plain = loss_of(rag_for(paths, generator, **{"model.dropout": 0.0}))
    rag = lora_rag(paths, generator)
    assert loss_of(rag) == pytest.approx(plain, abs=1e-5)
    trained = [name for name, p in rag.parts.head.generator.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in name for name in trained)
    trainable, total = parameter_counts(rag.parts)
    encoder = sum(p.numel() for p in rag.parts.head.question_encoder.parameters())
    assert encoder < trainable < total


@pytest.mark.parametrize("generator", ["bart", "llama"])
def test_a_checkpoint_holds_only_trainable_weights_and_restores_the_same_model(paths, generator, tmp_path):
    rag = lora_rag(paths, generator)
    rag.train()
    optimizer = torch.optim.AdamW([p for p in rag.parameters() if p.requires_grad], lr=1e-2)
    rag(*batch_for(rag)).backward()
    optimizer.step()
    trained_loss = loss_of(rag)
    save_rag_model(rag.parts, tmp_path / "checkpoint", trainable_only=True)
    save_rag_model(rag.parts, tmp_path / "export")
    sizes = {name: sum(f.stat().st_size for f in (tmp_path / name).rglob("*.safetensors"))
             for name in ("checkpoint", "export")}
    generator_bytes = 4 * sum(p.numel() for n, p in rag.parts.head.generator.named_parameters() if "lora_" not in n)
    assert sizes["export"] - sizes["checkpoint"] > 0.9 * generator_bytes  # the base generator is left out
    restored = load_rag_model(tmp_path / "checkpoint")
    assert restored.lora is not None
    again = RagWithRetrieval(restored, rag.retriever, rag.cfg, passage_max_length=64)
    assert loss_of(again) == pytest.approx(trained_loss, abs=1e-5)
    assert any(p.requires_grad for n, p in restored.head.generator.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("generator", ["bart", "llama"])
def test_the_export_has_the_merged_generator_and_the_adapters_alone(paths, generator, tmp_path):
    rag = lora_rag(paths, generator)
    with torch.no_grad():  # adapters that do something
        for name, p in rag.parts.head.generator.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    expected = loss_of(rag)
    save_rag_model(rag.parts, tmp_path / "model")
    exported = load_rag_model(tmp_path / "model")
    assert exported.lora is None  # a plain model now: the adapters are inside its generator
    assert loss_of(RagWithRetrieval(exported, rag.retriever, rag.cfg, passage_max_length=64)) == \
        pytest.approx(expected, abs=1e-4)
    auto = AutoModelForSeq2SeqLM if generator == "bart" else AutoModelForCausalLM
    base = auto.from_pretrained(paths[generator])
    adapted = PeftModel.from_pretrained(base, tmp_path / "model" / ADAPTER_DIR).merge_and_unload()
    exported_generator = exported.head.generator
    for (name, a), b in zip(adapted.state_dict().items(), exported_generator.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    if generator == "llama":
        AutoModelForCausalLM.from_pretrained(tmp_path / "model" / "generator")
