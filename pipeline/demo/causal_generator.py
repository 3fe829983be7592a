"""The demo's causal generator: a tiny Llama with the demo's tokenizer that has practised reading, for
`configs/demo_causal.yaml` (the decoder-only path on the same knowledge base and questions as the BART demo).

It is made as the BART one is (pipeline/demo/generator.py): a copy-friendly initialisation (identity value/output
projections, tied embeddings, so a position attending to a passage token carries that token to the output layer)
and reading practice on the shadow worlds, here with the causal RAG loss on one passage
("title / text // question" prompt, then the answer and eos). Built on first use beside the demo's files, in a
temporary sibling directory renamed into place, stamped with its seed and steps.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from pipeline.demo.generated import DemoPaths
from pipeline.demo.generator import READING_BATCH, ReadingExample, practise
from pipeline.model.causal import answer_log_probs
from pipeline.model.causal_inputs import tokenize_causal_inputs
from pipeline.storage import storage_errors

CAUSAL_DIR = "causal_generator"  # under the demo's directory
CAUSAL_READING_STEPS = 3000
_STAMP = "causal_generator.json"


def tiny_llama_config(vocab_size: int) -> LlamaConfig:
    """A 4-layer, 128-wide Llama with the demo tokenizer's ids (<s>=0 bos, <pad>=1, </s>=2 eos)."""
    return LlamaConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                       bos_token_id=0, pad_token_id=1, eos_token_id=2, tie_word_embeddings=True)


def copy_friendly_init(model: LlamaForCausalLM) -> None:
    """Identity value/output projections and scaled-down MLP outputs, as the BART demo generator's."""
    with torch.no_grad():
        for layer in model.model.layers:
            for linear in (layer.self_attn.v_proj, layer.self_attn.o_proj):
                linear.weight.copy_(torch.eye(linear.weight.shape[0]))
            layer.mlp.down_proj.weight.mul_(0.1)


def practise_causal_reading(model, tokenizer, examples: list[ReadingExample], seed: int, steps: int,
                            batch_size: int = READING_BATCH, lr: float = 1e-3, log=print) -> list[float]:
    """Train `model` to answer from the one passage it is given, with the prompts and loss RAG fine-tuning uses
    (n_docs = 1: the marginal is the answer's NLL, here per answer token); the mean loss of each 100 steps."""
    def loss_of(batch: list[ReadingExample]):
        ids, mask, answer_mask = tokenize_causal_inputs(
            tokenizer, [[e.title] for e in batch], [[e.text] for e in batch], [e.question for e in batch],
            [e.answer for e in batch], 160)
        scores = answer_log_probs(model, ids, mask, answer_mask)
        return -scores.tokens.sum() / scores.mask.sum()

    return practise(model, loss_of, examples, seed, steps, batch_size, lr, log, "causal generator")


def ensure_causal_generator(demo: DemoPaths, reading: Callable[[], list[ReadingExample]], seed: int = 0,
                            steps: int = CAUSAL_READING_STEPS) -> Path:
    """The demo's causal generator directory under `demo.directory`, built first if absent or stamped otherwise
    (`reading()` gives the shadow-world examples; called only when a build is needed)."""
    directory = demo.directory / CAUSAL_DIR
    stamp = {"seed": seed, "reading_steps": steps}
    try:
        if json.loads((directory / _STAMP).read_text()) == stamp:
            return directory
    except (OSError, ValueError):
        pass
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{CAUSAL_DIR}-", dir=demo.directory))
    os.chmod(tmp, 0o755)
    try:
        with storage_errors(directory, "generating"):
            _build(tmp, demo.generator, reading() if steps else [], seed, steps)
            (tmp / _STAMP).write_text(json.dumps(stamp) + "\n")
            if directory.exists():
                shutil.rmtree(directory)
            os.rename(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"demo data: built the causal generator {directory} in {time.perf_counter() - start:.1f}s", flush=True)
    return directory


def _build(directory: Path, tokenizer_dir: Path, reading: list[ReadingExample], seed: int, steps: int) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)  # the BART demo's: names and answers are whole tokens
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_llama_config(len(tokenizer)))
        copy_friendly_init(model)
        if steps:
            practise_causal_reading(model, tokenizer, reading, seed, steps, log=lambda line: print(line, flush=True))
    tokenizer.save_pretrained(directory)
    hf_logging.disable_progress_bar()
    model.save_pretrained(directory)
