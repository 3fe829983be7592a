"""The demo's generator: a BPE tokenizer trained on the demo text and a tiny, randomly
initialised BART, saved as an ordinary Hugging Face directory.

Trained on the knowledge base itself, the tokenizer keeps most fictional names and
answers whole (one token each), which a small model copies far more easily than
subword pieces. Ids and special tokens follow BART, so the RAG heads treat it like
facebook/bart-*: `<s>`=0 (bos), `<pad>`=1, `</s>`=2 (eos, decoder start), `<unk>`=3,
`<mask>`=4; `tokenizer(text)` gives `<s> ... </s>`.
"""

from __future__ import annotations

from pathlib import Path

VOCAB_SIZE = 6000
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def train_tokenizer(corpus: list[str], vocab_size: int = VOCAB_SIZE):
    """A `PreTrainedTokenizerFast` with byte-level BPE learned on `corpus` and BART's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
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


def build_generator(directory: Path, corpus: list[str], seed: int) -> None:
    """Write tokenizer + randomly initialised BART (safetensors) to `directory`, loadable offline."""
    import torch
    from transformers import BartForConditionalGeneration
    from transformers.utils import logging as hf_logging

    tokenizer = train_tokenizer(corpus)
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    # fork_rng: a fixed init without disturbing the caller's random state.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BartForConditionalGeneration(tiny_bart_config(len(tokenizer)))
    model.generation_config = tiny_bart_generation_config()
    tokenizer.save_pretrained(directory)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the demo reports itself in one line
    try:
        model.save_pretrained(directory, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
