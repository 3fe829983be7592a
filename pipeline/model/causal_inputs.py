"""What a causal-LM (decoder-only) generator reads, as token ids: one prompt per retrieved passage, filled from a
template ("{title} / {text} // {question}\n" by default), then for training the answer and eos after it.

Rows are doc-major as `contexts.format_contexts` (row b*k + j = passage j of question b). A row too long for
`max_length` loses the end of its passage text, never the question, the template's other words or the answer;
a question + answer that cannot fit even with an empty passage is refused with a DataError naming its row.

Padding: training rows are right-padded, generation prompts left-padded (so every row's next token is in the
last column). A tokenizer without a pad token (GPT-2, Llama) pads with its eos token (`pad_token_id`); padded
positions are masked out by attention_mask and answer_mask, so the pad id's value never reaches a loss.
"""

from __future__ import annotations

import re

import torch

from pipeline.errors import ConfigError, DataError
from pipeline.model.registry import DEFAULT_PROMPT_TEMPLATE

_FIELD = re.compile(r"\{(title|text|question)\}")


def check_prompt_template(template: str) -> None:
    """ConfigError unless `template` holds `{question}` (`{title}` and `{text}`, the passage, are optional)."""
    if "{question}" not in template:
        raise ConfigError(f"model.prompt_template {template!r}: expected a template containing {{question}} "
                          "(and {title}, {text} for the passage)")


def pad_token_id(tokenizer) -> int:
    """The id that pads rows: the tokenizer's pad token, else its eos (GPT-2 and Llama tokenizers have no pad)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ConfigError(f"generator tokenizer {tokenizer.name_or_path!r}: has neither a pad nor an eos token")
    return pad


def _start_ids(tokenizer) -> list[int]:
    """[bos] when the tokenizer itself starts a sequence with bos (Llama does; GPT-2 and Qwen2 do not), else []."""
    bos = tokenizer.bos_token_id
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return [bos] if bos is not None and with_special[:1] == [bos] and without[:1] != [bos] else []


def _render(template: str, title: str, text: str, question: str) -> tuple[str, int, int]:
    """The prompt string and the character span [start, end) of the passage text inside it."""
    title = title.removeprefix('"').removesuffix('"')  # as RagRetriever does
    values = {"title": title, "text": text, "question": question}
    pieces, span, length, cursor = [], (0, 0), 0, 0
    for match in _FIELD.finditer(template):
        literal = template[cursor:match.start()]
        value = values[match.group(1)]
        pieces += [literal, value]
        length += len(literal)
        if match.group(1) == "text":
            span = (length, length + len(value))
        length += len(value)
        cursor = match.end()
    pieces.append(template[cursor:])
    return "".join(pieces), span[0], span[1]


def _prompt_ids(tokenizer, template: str, title: str, text: str,
                question: str) -> tuple[list[int], list[int], list[int]]:
    """The prompt's tokens as three runs: before the passage text, the passage text, after it (bos in the first).

    The whole prompt is tokenized at once, so its tokens are the ones the model sees without truncation; the
    offsets say which tokens lie in the passage text."""
    prompt, start, end = _render(template, title, text, question)
    encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    inside = [i for i, (first, _last) in enumerate(offsets) if start <= first < end]
    lo, hi = (inside[0], inside[-1] + 1) if inside else (len(ids), len(ids))
    if not inside:  # no passage text: put the (empty) run where the text would be
        lo = hi = next((i for i, (first, _last) in enumerate(offsets) if first >= start), len(ids))
    return _start_ids(tokenizer) + ids[:lo], ids[lo:hi], ids[hi:]


def _fit(runs: tuple[list[int], list[int], list[int]], reserved: int, max_length: int, label: str) -> list[int]:
    """The prompt with its passage text cut from the end so that it plus `reserved` answer tokens fit."""
    before, passage, after = runs
    fixed = len(before) + len(after) + reserved
    if fixed > max_length:
        raise DataError(f"{label}: the question, the prompt template's words and the answer take {fixed} tokens "
                        f"with an empty passage, more than max_length {max_length}")
    return before + passage[: max_length - fixed] + after


def _checked(tokenizer, template: str, texts: list[list[str]], questions: list[str], row_labels) -> list[str]:
    """Validate the call: a fast tokenizer, a template with {question}, one list of passages per question."""
    check_prompt_template(template)
    if not tokenizer.is_fast:
        raise ConfigError(f"generator tokenizer {tokenizer.name_or_path!r}: a fast tokenizer is needed "
                          "(its offsets say which tokens belong to the passage)")
    if len(texts) != len(questions):
        raise ValueError(f"{len(texts)} passage lists for {len(questions)} questions")
    return list(row_labels) if row_labels is not None else [f"question {b}" for b in range(len(questions))]


def causal_answer_ids(tokenizer, answers: list[str], max_length: int | None = None) -> list[list[int]]:
    """Each answer's tokens then eos (what the causal loss scores); with `max_length`, cut to fit with eos kept."""
    eos = tokenizer.eos_token_id
    rows = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    return [(ids[: max_length - 1] if max_length else ids) + [eos] for ids in rows]


def tokenize_causal_inputs(tokenizer, titles: list[list[str]], texts: list[list[str]], questions: list[str],
                           answers: list[str], max_length: int, template: str = DEFAULT_PROMPT_TEMPLATE,
                           row_labels=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training rows for B questions with k passages each: (input_ids, attention_mask, answer_mask), int64[B*k, L],
    L <= max_length, right-padded. Row = prompt + answer + eos; answer_mask is 1 on exactly the answer and eos
    tokens (the ones the loss scores). `row_labels` (e.g. "qa.jsonl:12") name a row that cannot fit."""
    return tokenize_causal_training(tokenizer, titles, texts, questions, causal_answer_ids(tokenizer, answers),
                                    max_length, template, row_labels)


def tokenize_causal_training(tokenizer, titles: list[list[str]], texts: list[list[str]], questions: list[str],
                             answer_ids: list[list[int]], max_length: int, template: str = DEFAULT_PROMPT_TEMPLATE,
                             row_labels=None,
                             prompt_only: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`tokenize_causal_inputs` from answers already tokenized (`causal_answer_ids`: eos included). With
    `prompt_only`, `max_length` bounds the prompt alone (the answer comes on top): every prompt is then the one
    `tokenize_causal_prompts` gives for generation, whatever the answer's length."""
    labels = _checked(tokenizer, template, texts, questions, row_labels)
    pad = pad_token_id(tokenizer)
    rows, answer_lengths = [], []
    for b, question in enumerate(questions):
        answer = list(answer_ids[b])
        for title, text in zip(titles[b], texts[b], strict=True):
            runs = _prompt_ids(tokenizer, template, title, text, question)
            rows.append(_fit(runs, 0 if prompt_only else len(answer), max_length, labels[b]) + answer)
            answer_lengths.append(len(answer))
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    answer_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, answer_length) in enumerate(zip(rows, answer_lengths)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        answer_mask[i, len(row) - answer_length: len(row)] = 1
    return input_ids, attention_mask, answer_mask


def tokenize_causal_prompts(tokenizer, titles: list[list[str]], texts: list[list[str]], questions: list[str],
                            max_length: int, template: str = DEFAULT_PROMPT_TEMPLATE,
                            row_labels=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generation prompts, (input_ids, attention_mask) int64[B*k, L <= max_length], LEFT-padded, doc-major;
    the passage text is cut as in `tokenize_causal_inputs`, with no answer to reserve room for."""
    labels = _checked(tokenizer, template, texts, questions, row_labels)
    rows = [_fit(_prompt_ids(tokenizer, template, title, text, question), 0, max_length, labels[b])
            for b, question in enumerate(questions)
            for title, text in zip(titles[b], texts[b], strict=True)]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):] = torch.tensor(row)
        attention_mask[i, width - len(row):] = 1
    return input_ids, attention_mask


CHAT_TEMPLATE = "chat"  # model.prompt_template's value that asks for the tokenizer's own chat template
_CHAT_MESSAGE = "{title} / {text} // {question}"


def resolve_prompt_template(tokenizer, template: str) -> str:
    """`template` itself, or for "chat" the tokenizer's chat template rendered around one user message with the
    fields left in place (so the passage is still the part that is cut). ConfigError if it has no chat template."""
    if template != CHAT_TEMPLATE:
        check_prompt_template(template)
        return template
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"model.prompt_template chat: generator tokenizer {tokenizer.name_or_path!r} has no chat "
                          "template; give a template with {question} instead")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _CHAT_MESSAGE}], tokenize=False,
                                             add_generation_prompt=True)
    if tokenizer.bos_token and rendered.startswith(tokenizer.bos_token):
        rendered = rendered[len(tokenizer.bos_token):]  # _start_ids adds bos where the tokenizer wants one
    return rendered
