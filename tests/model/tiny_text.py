"""The small vocabulary, questions and word-level tokenizer both generator kinds' tests build tiny models on."""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

WORDS = ("river stone harbor lantern orchard meadow copper violin falcon ember quartz willow summit canyon "
         "tide marble cedar thistle glacier beacon doc key of is what the a").split()
SYMBOLS = ["/", "//", "?", ".", *map(str, range(10))]
TITLES = [["Doc 1", "Doc 2", "Doc 3"], ["Doc 4", "Doc 5", "Doc 6"]]
QUESTIONS = ["what is the key of river ?", "what is the key of quartz ?"]
ANSWERS = ["stone", "willow copper ember"]  # different lengths, so answers are padded
K = 3


def word_tokenizer(specials: list[str], template: str | None, **special_tokens) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over WORDS + SYMBOLS; `template` ($A = the text) adds special tokens around
    each sequence (None: none, as GPT-2's)."""
    vocab = {token: i for i, token in enumerate(specials + WORDS + SYMBOLS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if template:
        used = [token for token in specials if token in template]
        tokenizer.post_processor = TemplateProcessing(single=template, special_tokens=[(t, vocab[t]) for t in used])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", **special_tokens)
