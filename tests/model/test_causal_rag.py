"""The RAG math for causal-LM generators (pipeline/model/causal.py, causal_inputs.py) against marginals written
out by hand, one passage at a time. No Ray: tiny random Llama, Qwen2 and GPT-2 checkpoints built from configs,
saved to a folder and loaded by path (the code path a hub name takes), with word-level tokenizers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    trainers,
)
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    RagSequenceForGeneration,
    RagTokenForGeneration,
)

from pipeline.errors import ConfigError, DataError
from pipeline.model.causal import (
    answer_log_probs,
    greedy_rag_token_generate,
    greedy_rag_token_ids,
    rag_sequence_loss,
    rag_token_loss,
)
from pipeline.model.causal_inputs import (
    DEFAULT_PROMPT_TEMPLATE,
    tokenize_causal_inputs,
    tokenize_causal_prompts,
)
from tests.model.tiny_text import (
    ANSWERS,
    QUESTIONS,
    SYMBOLS,
    TITLES,
    WORDS,
    K,
    word_tokenizer,
)

TEXTS = [["the key of river is stone", "the key of harbor is lantern orchard meadow", "the key of cedar is tide"],
         ["the key of falcon is ember", "the key of quartz is willow", "a"]]
ARCHITECTURES = ("llama", "qwen2", "gpt2")


def byte_level_tokenizer(**special_tokens) -> PreTrainedTokenizerFast:
    """A byte-level BPE learned on WORDS + SYMBOLS (as GPT-2's and Qwen2's, no prefix space): Qwen2's tokenizer
    class rebuilds its own byte-level pipeline from the saved vocabulary, so a word-level one would not load."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS + SYMBOLS), "\n".join(WORDS), *(w.capitalize() for w in WORDS)]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special_tokens)


def save_tiny_causal_lm(directory, architecture: str, hidden: int = 32, init: float = 0.5):
    """A 2-layer random checkpoint of `architecture` with its kind of tokenizer; (model, tokenizer) loaded by path.

    Llama: bos added, no pad token; GPT-2: one <|endoftext|> for bos and eos, no pad; Qwen2: byte-level BPE, no bos,
    a pad token. A wide initialisation makes a random model's answers depend on the passage."""
    if architecture == "llama":
        tokenizer = word_tokenizer(["<unk>", "<s>", "</s>"], "<s> $A", bos_token="<s>", eos_token="</s>")
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=None,
                             initializer_range=init)
    elif architecture == "qwen2":
        tokenizer = byte_level_tokenizer(eos_token="<|im_end|>", pad_token="<|endoftext|>")
        config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=128, eos_token_id=1, pad_token_id=0, initializer_range=init)
    else:
        tokenizer = word_tokenizer(["<unk>", "<|endoftext|>"], None, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>")
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=hidden, n_layer=2, n_head=4, n_positions=128,
                            bos_token_id=1, eos_token_id=1, initializer_range=init)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def causal_lm(request, tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("llama"), "llama")


def doc_scores_for(batch: int, n_docs: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, n_docs, generator=torch.Generator().manual_seed(seed)) * 2


def per_passage_log_probs(model, input_ids, attention_mask, answer_mask) -> list[torch.Tensor]:
    """For each row alone (no padding), log p of its answer tokens [n] and the full log-softmax there [n, V]."""
    rows = []
    for ids, mask, answer in zip(input_ids, attention_mask, answer_mask):
        ids = ids[mask.bool()]
        positions = answer[mask.bool()].nonzero().squeeze(1)
        log_probs = torch.log_softmax(model(input_ids=ids[None]).logits[0].float(), dim=-1)[positions - 1]
        rows.append((log_probs.gather(1, ids[positions][:, None]).squeeze(1), log_probs))
    return rows


def brute_force_losses(rows, doc_scores, n_docs, epsilon=0.0):
    """RAG-Sequence and RAG-Token smoothed marginal NLLs, one question and one passage at a time, mean over B."""
    sequence, token = [], []
    for b in range(doc_scores.shape[0]):
        doc_logprobs = torch.log_softmax(doc_scores[b].float(), dim=0)
        answer = [rows[b * n_docs + j][0] for j in range(n_docs)]
        vocab = [rows[b * n_docs + j][1] for j in range(n_docs)]
        size = vocab[0].shape[-1]
        nll = -torch.logsumexp(torch.stack([a.sum() + d for a, d in zip(answer, doc_logprobs)]), dim=0)
        smooth = -torch.logsumexp(torch.stack([v.sum() + size * d for v, d in zip(vocab, doc_logprobs)]), dim=0)
        sequence.append((1 - epsilon) * nll + epsilon / size * smooth)
        nll = -sum(torch.logsumexp(torch.stack([a[i] + d for a, d in zip(answer, doc_logprobs)]), dim=0)
                   for i in range(len(answer[0])))
        smooth = -sum(torch.logsumexp(torch.stack([v[i] + d for v, d in zip(vocab, doc_logprobs)]), dim=0).sum()
                      for i in range(len(answer[0])))
        token.append((1 - epsilon) * nll + epsilon / size * smooth)
    return torch.stack(sequence).mean(), torch.stack(token).mean()


def test_rows_are_the_whole_prompt_then_the_answer_and_eos(causal_lm):
    _model, tokenizer = causal_lm
    input_ids, attention_mask, answer_mask = tokenize_causal_inputs(tokenizer, TITLES, TEXTS, QUESTIONS, ANSWERS, 128)
    for i, (ids, mask, answer) in enumerate(zip(input_ids, attention_mask, answer_mask)):
        b, j = divmod(i, K)
        prompt = DEFAULT_PROMPT_TEMPLATE.format(title=TITLES[b][j], text=TEXTS[b][j], question=QUESTIONS[b])
        expected = (tokenizer(prompt)["input_ids"] + tokenizer(ANSWERS[b], add_special_tokens=False)["input_ids"]
                    + [tokenizer.eos_token_id])
        assert ids[mask.bool()].tolist() == expected
        assert tokenizer.decode(ids[answer.bool()][:-1]) == ANSWERS[b]
        assert ids[answer.bool()][-1] == tokenizer.eos_token_id


def test_both_losses_equal_a_per_passage_brute_force(causal_lm):
    model, tokenizer = causal_lm
    input_ids, attention_mask, answer_mask = tokenize_causal_inputs(tokenizer, TITLES, TEXTS, QUESTIONS, ANSWERS, 128)
    doc_scores = doc_scores_for(len(QUESTIONS), K)
    with torch.no_grad():
        scores = answer_log_probs(model, input_ids, attention_mask, answer_mask)
        expected_sequence, expected_token = brute_force_losses(
            per_passage_log_probs(model, input_ids, attention_mask, answer_mask), doc_scores, K)
    assert rag_sequence_loss(scores, doc_scores, K).item() == pytest.approx(expected_sequence.item(), abs=1e-5)
    assert rag_token_loss(scores, doc_scores, K).item() == pytest.approx(expected_token.item(), abs=1e-5)
    assert expected_sequence.item() != pytest.approx(expected_token.item(), abs=1e-3)  # they are not one loss


def test_with_one_passage_both_losses_are_the_causal_lm_nll_of_the_answer(causal_lm):
    model, tokenizer = causal_lm
    titles, texts = [[t[0]] for t in TITLES], [[t[0]] for t in TEXTS]
    input_ids, attention_mask, answer_mask = tokenize_causal_inputs(tokenizer, titles, texts, QUESTIONS, ANSWERS, 128)
    doc_scores = doc_scores_for(len(QUESTIONS), 1)
    with torch.no_grad():
        scores = answer_log_probs(model, input_ids, attention_mask, answer_mask)
        summed = []
        for ids, mask, answer in zip(input_ids, attention_mask, answer_mask):
            labels = torch.where(answer.bool(), ids, -100)[mask.bool()]
            mean = model(input_ids=ids[mask.bool()][None], labels=labels[None]).loss  # mean over answer tokens
            summed.append(mean * answer.sum())
        plain = torch.stack(summed).mean().item()
        assert rag_sequence_loss(scores, doc_scores, 1).item() == pytest.approx(plain, abs=1e-5)
        assert rag_token_loss(scores, doc_scores, 1).item() == pytest.approx(plain, abs=1e-5)


@pytest.mark.parametrize("loss", [rag_sequence_loss, rag_token_loss])
def test_the_question_encoder_gets_a_gradient_through_the_doc_scores(llama, loss):
    model, tokenizer = llama
    torch.manual_seed(2)
    question_encoder = torch.nn.Linear(8, 16)  # stands for any encoder: q = encoder(question features)
    passage_vectors = torch.randn(len(QUESTIONS), K, 16)
    doc_scores = torch.einsum("bd,bkd->bk", question_encoder(torch.randn(len(QUESTIONS), 8)), passage_vectors)
    scores = answer_log_probs(model, *tokenize_causal_inputs(tokenizer, TITLES, TEXTS, QUESTIONS, ANSWERS, 128))
    loss(scores, doc_scores, K).backward()
    assert question_encoder.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.lm_head.parameters())


def test_label_smoothing_matches_a_hand_written_smoothed_marginal(causal_lm):
    model, tokenizer = causal_lm
    input_ids, attention_mask, answer_mask = tokenize_causal_inputs(tokenizer, TITLES, TEXTS, QUESTIONS, ANSWERS, 128)
    doc_scores = doc_scores_for(len(QUESTIONS), K, seed=3)
    with torch.no_grad():
        scores = answer_log_probs(model, input_ids, attention_mask, answer_mask, keep_vocab=True)
        rows = per_passage_log_probs(model, input_ids, attention_mask, answer_mask)
    expected_sequence, expected_token = brute_force_losses(rows, doc_scores, K, epsilon=0.1)
    assert rag_sequence_loss(scores, doc_scores, K, 0.1).item() == pytest.approx(expected_sequence.item(), abs=1e-5)
    assert rag_token_loss(scores, doc_scores, K, 0.1).item() == pytest.approx(expected_token.item(), abs=1e-5)
    assert rag_token_loss(scores, doc_scores, K, 0.1).item() != pytest.approx(
        rag_token_loss(scores, doc_scores, K).item(), abs=1e-3)


def test_label_smoothing_is_what_transformers_rag_heads_compute(llama):
    """The same per-passage log-probs through transformers' own get_nll (as the seq2seq heads call it)."""
    model, tokenizer = llama
    input_ids, attention_mask, answer_mask = tokenize_causal_inputs(tokenizer, TITLES, TEXTS, QUESTIONS, ANSWERS, 128)
    doc_scores = doc_scores_for(len(QUESTIONS), K, seed=4)
    with torch.no_grad():
        scores = answer_log_probs(model, input_ids, attention_mask, answer_mask, keep_vocab=True)
    unk = tokenizer.unk_token_id  # never in an answer: plays the heads' pad id
    width = scores.tokens.shape[1]
    answers = torch.where(answer_mask.bool(), input_ids, unk)
    target = torch.full((len(QUESTIONS), width + 1), unk)  # get_nll shifts its target left by one
    for b in range(len(QUESTIONS)):
        answer = answers[b * K][answer_mask[b * K].bool()]
        target[b, 1: 1 + len(answer)] = answer
    seq_logits = torch.cat([scores.vocab, torch.zeros_like(scores.vocab[:, :1])], dim=1)
    config = SimpleNamespace(generator=SimpleNamespace(pad_token_id=unk, bos_token_id=None), bos_token_id=None,
                             n_docs=K)
    head = SimpleNamespace(config=config)
    head.marginalize = lambda *args, **kwargs: RagTokenForGeneration.marginalize(head, *args, **kwargs)
    for loss, head_class in ((rag_sequence_loss, RagSequenceForGeneration), (rag_token_loss, RagTokenForGeneration)):
        theirs = head_class.get_nll(head, seq_logits, doc_scores, target, epsilon=0.1, n_docs=K).mean()
        assert loss(scores, doc_scores, K, 0.1).item() == pytest.approx(theirs.item(), abs=1e-5)


def test_a_long_passage_loses_its_end_never_the_question_or_the_answer(llama):
    _model, tokenizer = llama
    long_text = " ".join(WORDS[:20] * 3)
    input_ids, attention_mask, answer_mask = tokenize_causal_inputs(
        tokenizer, [["Doc 1"]], [[long_text]], [QUESTIONS[0]], ["stone copper"], max_length=30)
    row = input_ids[0][attention_mask[0].bool()]
    assert len(row) == 30
    kept = tokenizer.decode(row[~answer_mask[0][attention_mask[0].bool()].bool()], skip_special_tokens=True)
    assert kept.endswith("// " + QUESTIONS[0])  # the question whole, after the passage
    passage = kept.removeprefix("doc 1 / ").removesuffix(" // " + QUESTIONS[0])
    assert passage and long_text.startswith(passage) and passage != long_text  # the passage's start survives
    assert tokenizer.decode(row[answer_mask[0][attention_mask[0].bool()].bool()][:-1]) == "stone copper"
    prompts, _mask = tokenize_causal_prompts(tokenizer, [["Doc 1"]], [[long_text]], [QUESTIONS[0]], max_length=30)
    assert prompts.shape[1] == 30 and tokenizer.decode(prompts[0]).endswith("// " + QUESTIONS[0])


def test_a_question_and_answer_that_cannot_fit_are_refused_naming_the_row(llama):
    _model, tokenizer = llama
    with pytest.raises(DataError, match=r"qa\.jsonl:7: .* 14 tokens with an empty passage, more than max_length 10"):
        tokenize_causal_inputs(tokenizer, [["Doc 1"]], [["the key"]], [QUESTIONS[0]], ["stone"], max_length=10,
                               row_labels=["qa.jsonl:7"])


def test_a_template_without_question_is_refused(llama):
    _model, tokenizer = llama
    with pytest.raises(ConfigError, match=r"model.prompt_template .*\{question\}"):
        tokenize_causal_prompts(tokenizer, TITLES, TEXTS, QUESTIONS, 128, template="{title} / {text}")


def test_a_template_may_put_the_question_first(llama):
    _model, tokenizer = llama
    template = "what is {question} / {title} / {text} //"
    input_ids, _attention_mask, answer_mask = tokenize_causal_inputs(
        tokenizer, [["Doc 1"]], [[" ".join(WORDS[:20])]], [QUESTIONS[0]], ["stone"], max_length=24, template=template)
    prompt = tokenizer.decode(input_ids[0][~answer_mask[0].bool()], skip_special_tokens=True)
    assert prompt.startswith("what is " + QUESTIONS[0] + " / doc 1 / river") and prompt.endswith(" //")


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_a_tokenizer_without_a_pad_token_pads_with_eos(tmp_path, architecture):
    model, tokenizer = save_tiny_causal_lm(tmp_path, architecture)
    assert tokenizer.pad_token_id is None
    input_ids, attention_mask, answer_mask = tokenize_causal_inputs(tokenizer, TITLES, TEXTS, QUESTIONS, ANSWERS, 128)
    assert (input_ids[attention_mask == 0] == tokenizer.eos_token_id).all() and (attention_mask == 0).any()
    prompts, prompt_mask = tokenize_causal_prompts(tokenizer, TITLES, TEXTS, QUESTIONS, 128)
    assert (prompts[prompt_mask == 0] == tokenizer.eos_token_id).all() and (prompt_mask[:, 0] == 0).any()
    scores = answer_log_probs(model, input_ids, attention_mask, answer_mask)
    assert torch.isfinite(rag_token_loss(scores, doc_scores_for(2, K), K))


def brute_force_greedy(model, tokenizer, prompts, prompt_mask, doc_scores, n_docs, steps) -> list[list[int]]:
    """Greedy RAG-Token decoding without cache or padding: each passage's prompt + the tokens so far, one at a time."""
    decoded = []
    for b in range(doc_scores.shape[0]):
        doc_logprobs = torch.log_softmax(doc_scores[b], dim=0)
        rows = [prompts[b * n_docs + j][prompt_mask[b * n_docs + j].bool()] for j in range(n_docs)]
        tokens = []
        for _ in range(steps):
            per_doc = [torch.log_softmax(model(input_ids=torch.cat([row, torch.tensor(tokens, dtype=torch.long)])[None])
                                         .logits[0, -1], dim=-1) + d for row, d in zip(rows, doc_logprobs)]
            tokens.append(int(torch.logsumexp(torch.stack(per_doc), dim=0).argmax()))
            if tokens[-1] == tokenizer.eos_token_id:
                break
        decoded.append(tokens)
    return decoded


def test_greedy_decoding_with_cache_equals_a_step_by_step_brute_force_marginal(causal_lm):
    model, tokenizer = causal_lm
    prompts, prompt_mask = tokenize_causal_prompts(tokenizer, TITLES, TEXTS, QUESTIONS, 128)
    doc_scores = doc_scores_for(len(QUESTIONS), K, seed=5)
    with torch.no_grad():
        ids = greedy_rag_token_ids(model, prompts, prompt_mask, doc_scores, K, 6, tokenizer.eos_token_id)
        expected = brute_force_greedy(model, tokenizer, prompts, prompt_mask, doc_scores, K, 6)
    for row, tokens in zip(ids.tolist(), expected):
        assert row[: len(tokens)] == tokens
        assert all(t == tokenizer.eos_token_id for t in row[len(tokens):])
    assert len({tuple(t) for t in expected}) > 1  # the questions decode differently


def copy_batch(rng: torch.Generator, size: int):
    """Questions "what is the key of X ?" whose answer Y is the last word of passage "the key of X is Y"."""
    nouns = WORDS[:20]
    picks = torch.randint(len(nouns), (size, 2), generator=rng).tolist()
    texts = [[f"the key of {nouns[x]} is {nouns[y]}"] for x, y in picks]
    questions = [f"what is the key of {nouns[x]} ?" for x, _y in picks]
    return [["Doc 1"]] * size, texts, questions, [nouns[y] for _x, y in picks]


def test_greedy_decoding_of_a_copy_trained_model_returns_the_passage_word(tmp_path):
    model, tokenizer = save_tiny_causal_lm(tmp_path, "llama", hidden=64, init=0.02)
    rng = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _step in range(250):
        titles, texts, questions, answers = copy_batch(rng, 16)
        scores = answer_log_probs(model, *tokenize_causal_inputs(tokenizer, titles, texts, questions, answers, 32))
        loss = rag_token_loss(scores, torch.zeros(16, 1), 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2
    # Two passages per question, the gold one first for question 0 and second for question 1.
    titles = [["Doc 1", "Doc 2"], ["Doc 1", "Doc 2"]]
    texts = [["the key of river is marble", "the key of cedar is tide"],
             ["the key of falcon is ember", "the key of quartz is willow"]]
    prompts, prompt_mask = tokenize_causal_prompts(tokenizer, titles, texts, QUESTIONS, 32)
    doc_scores = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    assert greedy_rag_token_generate(model, tokenizer, prompts, prompt_mask, doc_scores, 2, 5) == ["marble", "willow"]
    assert model.training  # the model's mode is restored


class WithoutLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward takes no `logits_to_keep` (older or remote-code models): every position's logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, **_ignored):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def test_a_model_that_ignores_logits_to_keep_scores_the_same(llama):
    model, tokenizer = llama
    inputs = tokenize_causal_inputs(tokenizer, TITLES, TEXTS, QUESTIONS, ANSWERS, 128)
    with torch.no_grad():
        kept, full = answer_log_probs(model, *inputs), answer_log_probs(WithoutLogitsToKeep(model), *inputs)
    assert torch.allclose(kept.tokens, full.tokens, atol=1e-6) and torch.equal(kept.mask, full.mask)
