"""The causal generator's training step on a GPU with bf16 autocast: what a decoder LLM fine-tune runs. Needs no
Ray and no FAISS (the GPU machine this project is sometimes lent has neither); skipped where CUDA is absent."""

from __future__ import annotations

import time

import pytest
import torch

from pipeline.config import RunConfig, apply_overrides
from pipeline.model.generators import kind_of
from pipeline.model.rag import build_rag_model
from pipeline.model.rag_with_retrieval import RagWithRetrieval
from tests.model.test_causal_rag import save_tiny_causal_lm
from tests.model.test_generator_kinds import ExactPassages
from tests.model.test_rag import save_tiny_bert
from tests.model.tiny_text import ANSWERS, QUESTIONS, K

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("model_type", ["rag_sequence", "rag_token"])
def test_a_bf16_causal_step_on_the_gpu_lowers_the_loss(tmp_path, model_type):
    save_tiny_causal_lm(tmp_path / "llama", "llama", hidden=64)
    cfg = apply_overrides(RunConfig(), {"model.n_docs": K, "model.model_type": model_type,
                                        "model.max_source_length": 40, "train.precision": "bf16"})
    parts = build_rag_model(str(save_tiny_bert(tmp_path / "bert")), str(tmp_path / "llama"), model_type, "mean",
                            dropout=0.0)
    kind_of(parts).configure(parts, cfg.model)
    rag = RagWithRetrieval(parts, ExactPassages(32), cfg.model).cuda().train()
    batch = parts.question_tokenizer(QUESTIONS, padding=True, return_tensors="pt").to("cuda")
    labels = torch.as_tensor(rag.kind.targets(parts.generator_tokenizer, parts.head.config.generator, ANSWERS,
                                              8)).cuda()
    optimizer = torch.optim.AdamW(rag.parameters(), lr=1e-3)
    losses, seconds = [], []
    for _ in range(20):
        torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = rag(QUESTIONS, batch["input_ids"], batch["attention_mask"], labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        losses.append(loss.item())
    print(f"[gpu] {model_type}: {sorted(seconds)[len(seconds) // 2] * 1e3:.1f} ms per step (p50 of 20)")
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert len(rag.answer(QUESTIONS)[0]) == len(QUESTIONS)
