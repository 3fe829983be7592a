"""What the generator reads and writes, as token ids: "title / text // question" per retrieved passage
(`format_contexts`, `tokenize_contexts`) and the answer targets the RAG heads score (`tokenize_targets`).
Plain tokenizer work, no model weights: the demo's reading practice uses it too.
"""

from __future__ import annotations

import torch

from pipeline.model.parts import RagParts


def special_token_ids(generator_config) -> dict:
    """The generator's bos/eos/pad/decoder-start ids; None where it has none (T5 has no bos)."""
    names = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    return {name: getattr(generator_config, name, None) for name in names}


def format_contexts(titles: list[list[str]], texts: list[list[str]], questions: list[str],
                    prefix: str = "") -> list[str]:
    """B*k generator inputs, doc-major per question (row b*k + j = passage j of question b), in
    transformers' RAG format: prefix + title + " / " + text + " // " + question, double spaces collapsed."""
    return [_context_string(title, text, question, prefix)
            for row_titles, row_texts, question in zip(titles, texts, questions, strict=True)
            for title, text in zip(row_titles, row_texts, strict=True)]


def _context_string(title: str, text: str, question: str, prefix: str) -> str:
    title = title.removeprefix('"').removesuffix('"')  # as RagRetriever does
    return (prefix + title + " / " + text + " // " + question).replace("  ", " ")


def tokenize_contexts(parts: RagParts, titles: list[list[str]], texts: list[list[str]], questions: list[str],
                      max_length: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Generator inputs for `format_contexts`: (input_ids, attention_mask), both int64[B*k, <= max_length].

    Too-long rows lose the end of the passage, not the question: plain right truncation (what
    RagRetriever does) would cut off the question after a long passage.
    """
    tokenizer = parts.generator_tokenizer
    prefix = getattr(parts.head.config.generator, "prefix", None) or ""
    strings = format_contexts(titles, texts, questions, prefix)
    encoded = tokenizer(strings, add_special_tokens=True, return_special_tokens_mask=True)
    k = len(strings) // len(questions)
    tail_lengths = [len(ids) for ids in
                    tokenizer([" // " + q for q in questions], add_special_tokens=False)["input_ids"]]
    rows = []
    for i, (ids, special) in enumerate(zip(encoded["input_ids"], encoded["special_tokens_mask"])):
        rows.append(_keep_tail(ids, tail_lengths[i // k] + _trailing_ones(special), max_length))
    batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def _trailing_ones(mask: list[int]) -> int:
    """How many special tokens (eos, ...) close a sequence, from its special-tokens mask."""
    count = 0
    while count < len(mask) and mask[len(mask) - 1 - count] == 1:
        count += 1
    return count


def _keep_tail(ids: list[int], tail: int, max_length: int) -> list[int]:
    """`ids` cut to max_length by dropping tokens just before its last `tail` ones (the question and eos)."""
    if len(ids) <= max_length:
        return ids
    tail = min(tail, max_length - 1)  # a question longer than the budget keeps the start token and its end
    return ids[: max_length - tail] + ids[len(ids) - tail:]


def tokenize_targets(generator_tokenizer, generator_config, answers: list[str], max_length: int) -> torch.Tensor:
    """Decoder inputs the RAG heads score, int64[B, <= max_length]: decoder start token, the tokenizer's
    encoding of the answer (BART keeps its <s>), eos, then the generator's pad id. `generator_config` is
    the generator's own (`parts.head.config.generator`, or AutoConfig of the generator path).

    The start token is prepended when the tokenizer does not begin with it (T5: pad; BART: </s>, so
    BART sees "</s> <s> answer </s>" as in its own pretraining and in generate()).
    """
    special = special_token_ids(generator_config)
    start, eos, pad = special["decoder_start_token_id"], special["eos_token_id"], special["pad_token_id"]
    probe = generator_tokenizer("", add_special_tokens=True)["input_ids"]
    add_start = not probe or probe[0] != start
    add_eos = not probe or probe[-1] != eos
    budget = max_length - add_start - add_eos
    encoded = generator_tokenizer(answers, add_special_tokens=True, truncation=True, max_length=budget)["input_ids"]
    rows = [[start] * add_start + ids + [eos] * add_eos for ids in encoded]
    width = max(len(row) for row in rows)
    return torch.tensor([row + [pad] * (width - len(row)) for row in rows], dtype=torch.long)
