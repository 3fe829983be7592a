"""The demo's generator: a BPE tokenizer trained on the demo text and a tiny BART that has
already learned to read, saved as an ordinary Hugging Face directory.

A real RAG run starts from a pretrained generator (facebook/bart-large) that can already pick an
answer out of a passage; RAG fine-tuning then adapts it and, through the doc scores, teaches the
question encoder which passages help. A randomly initialised 2+2-layer BART cannot read after the
few thousand steps a CPU demo affords (in development runs: under 1% dev exact match given the gold
passage, after 2,500 steps), and while it cannot, the doc-score gradient is noise that drags retrieval down. So the
demo generator is pretrained here, in two steps:

* a copy-friendly initialisation: the attention value/output projections start as the identity,
  so from the first step a decoder position that attends to a passage token carries that token's
  embedding, and the tied output layer already favours it; what remains to learn is where to look;
* reading practice on *shadow worlds* (`build_knowledge_base(shadow=n)`): the same vocabulary,
  templates and question forms, but other people with independently drawn facts, given the
  passage that states each fact. Its facts are drawn independently of the real demo world's, so
  answering the demo's questions still takes retrieving the right passage (the random-passage
  ablation of `jobs/benchmark_demo.py` checks exactly that).

docs/results.md gives how long 3,000 steps of 16 take on 2 cores. `jobs/benchmark_demo.py` reports
what the RAG model answers as fine-tuning starts and after it; the tests only check that reading practice
lowers the loss.

Trained on the knowledge base itself, the tokenizer keeps most fictional names and
answers whole (one token each), which a small model copies far more easily than
subword pieces. Ids and special tokens follow BART, so the RAG heads treat it like
facebook/bart-*: `<s>`=0 (bos), `<pad>`=1, `</s>`=2 (eos, decoder start), `<unk>`=3,
`<mask>`=4; `tokenizer(text)` gives `<s> ... </s>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.model.contexts import format_contexts

VOCAB_SIZE = 6000
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def train_tokenizer(corpus: list[str], vocab_size: int = VOCAB_SIZE):
    """A `PreTrainedTokenizerFast` with byte-level BPE learned on `corpus` and BART's special tokens."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    # A prefix space on every word (as mid-sentence) gives an answer the same tokens
    # alone as inside a passage, so copying it is an identity the model can learn.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        mask_token="<mask>", cls_token="<s>", sep_token="</s>", model_max_length=256)


def tiny_bart_config(vocab_size: int):
    """A 2+2-layer, 128-wide BART: small enough to fine-tune on two CPU cores in minutes."""
    from transformers import BartConfig

    return BartConfig(
        vocab_size=vocab_size, d_model=128, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512,
        max_position_embeddings=256, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    )


def tiny_bart_generation_config():
    """As facebook/bart-*: labels are "<s> answer </s>", so decoding starts at </s> and is forced to <s>."""
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
                            forced_bos_token_id=0, forced_eos_token_id=2)


READING_STEPS = 3000
READING_BATCH = 16


def copy_friendly_init(model) -> None:
    """Identity value/output projections in every attention block, and feed-forward outputs scaled
    down, so that token identities pass through to the tied output layer (see the module docstring)."""
    import torch

    def identity(linear):
        linear.weight.copy_(torch.eye(linear.weight.shape[0]))
        linear.bias.zero_()

    with torch.no_grad():
        for layer in list(model.model.encoder.layers) + list(model.model.decoder.layers):
            for attention in (getattr(layer, "self_attn", None), getattr(layer, "encoder_attn", None)):
                if attention is not None:
                    identity(attention.v_proj)
                    identity(attention.out_proj)
            layer.fc2.weight.mul_(0.1)


@dataclass
class ReadingExample:
    """A passage (title, text), a question about it, and its answer."""

    title: str
    text: str
    question: str
    answer: str


def practise_reading(model, tokenizer, examples: list[ReadingExample], seed: int, steps: int = READING_STEPS,
                     batch_size: int = READING_BATCH, lr: float = 1e-3, log=print) -> list[float]:
    """Train `model` to answer from the passage, with inputs formatted as RAG fine-tuning formats them
    ("title / text // question"); returns the mean loss of each 100 steps. Deterministic for a seed."""
    def loss_of(batch: list[ReadingExample]):
        contexts = format_contexts([[e.title] for e in batch], [[e.text] for e in batch], [e.question for e in batch])
        inputs = tokenizer(contexts, return_tensors="pt", padding=True, truncation=True, max_length=128)
        labels = tokenizer([e.answer for e in batch], return_tensors="pt", padding=True)["input_ids"]
        labels[labels == tokenizer.pad_token_id] = -100
        return model(**inputs, labels=labels).loss

    return practise(model, loss_of, examples, seed, steps, batch_size, lr, log, "generator")


def practise(model, loss_of, examples: list[ReadingExample], seed: int, steps: int, batch_size: int, lr: float,
             log, label: str) -> list[float]:
    """The reading practice loop any demo generator runs: AdamW with warm-up and linear decay on `loss_of(batch)`
    for `steps` batches drawn from `examples`; the mean loss of each 100 steps. Deterministic for a seed."""
    import random

    import torch

    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    warmup = min(50, steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1.0 - s / steps))
    model.train()
    losses, means = [], []
    for step in range(1, steps + 1):
        loss = loss_of(rng.sample(examples, batch_size))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == steps:
            means.append(sum(losses) / len(losses))
            losses = []
            if step % 500 == 0 or step == steps:
                log(f"demo data: {label} reading practice, step {step}/{steps}, loss {means[-1]:.3f}")
    model.eval()
    return means


def build_generator(directory: Path, corpus: list[str], reading: list[ReadingExample], seed: int,
                    steps: int = READING_STEPS) -> None:
    """Write tokenizer + a tiny BART that has practised reading (safetensors) to `directory`, loadable offline.

    `corpus` trains the tokenizer; `reading` are shadow-world examples (see the module docstring)."""
    import torch
    from transformers import BartForConditionalGeneration
    from transformers.utils import logging as hf_logging

    tokenizer = train_tokenizer(corpus)
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    # fork_rng: fixed weights without disturbing the caller's random state.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BartForConditionalGeneration(tiny_bart_config(len(tokenizer)))
        copy_friendly_init(model)
        if steps:
            practise_reading(model, tokenizer, reading, seed, steps, log=lambda line: print(line, flush=True))
    model.generation_config = tiny_bart_generation_config()
    tokenizer.save_pretrained(directory)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the demo reports itself in one line
    try:
        model.save_pretrained(directory, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
