"""The RAG math (transformers' RAG heads as this package drives them) against marginal NLLs written out by hand.

Tiny models are built from configs (no hub): a 2-layer BERT question encoder with the bundled MiniLM's
tokenizer, and BART / T5 generators with a small word-level tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.errors import ModelLoadError
from pipeline.model.contexts import format_contexts, tokenize_contexts, tokenize_targets
from pipeline.model.doc_scores import score_documents
from pipeline.model.rag import (
    build_rag_model,
    encode_questions,
    load_rag_model,
    save_rag_model,
)
from pipeline.model.seq2seq_generator import generate_answers, rag_loss
from tests.model.tiny_text import (
    ANSWERS,
    QUESTIONS,
    TITLES,
    K,
    word_tokenizer,
)

TEXTS = [["the key of river is stone", "the key of harbor is lantern", "the key of cedar is tide"],
         ["the key of falcon is ember", "the key of quartz is willow", "the key of summit is canyon"]]


def save_tiny_bart(directory: Path) -> Path:
    from transformers import BartConfig, BartForConditionalGeneration

    # BART's own special ids: <s>=0 <pad>=1 </s>=2, decoding starts at </s>.
    tokenizer = word_tokenizer(["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>",
                               bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=128, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                        decoder_start_token_id=2, forced_eos_token_id=2,
                        init_std=0.5)  # large weights, so each passage changes the generator's output visibly
    torch.manual_seed(1)
    BartForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_t5(directory: Path) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    # T5's: <pad>=0 (also the decoder start) </s>=1, no bos.
    tokenizer = word_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", eos_token="</s>", pad_token="<pad>")
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1,
                      num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                      initializer_factor=2.0)  # so that each passage changes the output visibly
    torch.manual_seed(2)
    T5ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_bert(directory: Path) -> Path:
    from transformers import BertConfig, BertModel

    from pipeline.model.encoders import default_encoder_path, load_encoder

    tokenizer, _ = load_encoder(default_encoder_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return {"bert": str(save_tiny_bert(root / "bert")), "bart": str(save_tiny_bart(root / "bart")),
            "t5": str(save_tiny_t5(root / "t5"))}


def rag_inputs(parts, seed: int = 0):
    """Question vectors (with grad), retrieved vectors that make the passage posterior neither uniform nor
    one-hot, tokenized contexts and targets for QUESTIONS / ANSWERS."""
    torch.manual_seed(seed)
    q = encode_questions(parts, QUESTIONS, max_length=32, device="cpu")
    vectors = torch.randn(len(QUESTIONS), K, q.shape[1])
    ids, mask = tokenize_contexts(parts, TITLES, TEXTS, QUESTIONS, max_length=40)
    labels = tokenize_targets(parts.generator_tokenizer, parts.head.config.generator, ANSWERS, max_length=8)
    return q, vectors, ids, mask, labels


def hand_marginal_nll(parts, q, vectors, ids, mask, labels, model_type: str) -> torch.Tensor:
    """The RAG losses written out from the generator's per-passage token log-probs, mean over the batch:
    sequence: -log sum_z p(z|x) prod_t p(y_t|x,z);  token: -sum_t log sum_z p(z|x) p(y_t|x,z,y<t)."""
    batch, length = labels.shape
    logits = parts.model.generator(input_ids=ids, attention_mask=mask,
                                   decoder_input_ids=labels.repeat_interleave(K, dim=0)).logits
    log_probs = torch.log_softmax(logits.float(), dim=-1).view(batch, K, length, -1)[:, :, :-1]
    target = labels[:, 1:]  # position t predicts the next decoder input
    scored = target.ne(parts.model.config.generator.pad_token_id)
    token_lp = log_probs.gather(-1, target[:, None, :, None].expand(batch, K, length - 1, 1)).squeeze(-1)
    token_lp = token_lp * scored[:, None, :]
    doc_lp = torch.log_softmax(torch.einsum("bd,bkd->bk", q, vectors), dim=1)
    if model_type == "rag_sequence":
        return -torch.logsumexp(doc_lp + token_lp.sum(-1), dim=1).mean()
    per_token = torch.logsumexp(doc_lp[:, :, None] + token_lp, dim=1) * scored
    return -per_token.sum(-1).mean()


@pytest.mark.parametrize("generator", ["bart", "t5"])
@pytest.mark.parametrize("model_type", ["rag_sequence", "rag_token"])
def test_loss_equals_a_hand_written_marginal_nll(tiny, generator, model_type):
    parts = build_rag_model(tiny["bert"], tiny[generator], model_type, pooling="mean")
    q, vectors, ids, mask, labels = rag_inputs(parts)
    ours = rag_loss(parts, q, vectors, ids, mask, labels, n_docs=K)
    by_hand = hand_marginal_nll(parts, q, vectors, ids, mask, labels, model_type)
    posterior = torch.softmax(torch.einsum("bd,bkd->bk", q, vectors), 1)
    assert 0.5 < posterior.max() < 0.9  # passages weigh unequally, so a wrong order or marginal would show
    assert ours.item() == pytest.approx(by_hand.item(), abs=1e-5)


def test_sequence_and_token_losses_differ(tiny):
    """Guards the test above: the two marginals are different numbers on the same inputs."""
    losses = []
    for model_type in ("rag_sequence", "rag_token"):
        parts = build_rag_model(tiny["bert"], tiny["bart"], model_type, pooling="mean")
        losses.append(rag_loss(parts, *rag_inputs(parts), n_docs=K).item())
    assert abs(losses[0] - losses[1]) > 0.1


@pytest.mark.parametrize("pooling", ["mean", "pooler"])
def test_loss_gradient_reaches_question_encoder_through_doc_scores(tiny, pooling):
    parts = build_rag_model(tiny["bert"], tiny["bart"], "rag_sequence", pooling=pooling)
    rag_loss(parts, *rag_inputs(parts), n_docs=K).backward()
    grads = [p.grad for p in parts.model.question_encoder.parameters() if p.grad is not None]
    assert grads and max(g.abs().max().item() for g in grads) > 0
    pooler_trainable = all(p.requires_grad for p in parts.model.question_encoder.pooler.parameters())
    assert pooler_trainable == (pooling == "pooler")  # frozen when it takes no part in the loss


def hand_smoothed_token_nll(parts, q, vectors, ids, mask, labels, epsilon: float) -> torch.Tensor:
    """RAG-Token's loss with label smoothing, written out: per target token, the passage-marginal distribution
    m_t(v) = sum_z p(z|x) p(v|x,z,y<t); loss = (1 - eps) * -sum_t log m_t(y_t) + eps * -sum_t mean_v log m_t(v)
    (cross-entropy against the smoothed target: 1 - eps on the gold token plus eps spread evenly over the
    vocabulary), summed over non-pad targets, mean over the batch."""
    batch, length = labels.shape
    logits = parts.model.generator(input_ids=ids, attention_mask=mask,
                                   decoder_input_ids=labels.repeat_interleave(K, dim=0)).logits
    vocab = logits.shape[-1]
    log_probs = torch.log_softmax(logits.float(), dim=-1).view(batch, K, length, vocab)[:, :, :-1]
    doc_lp = torch.log_softmax(torch.einsum("bd,bkd->bk", q, vectors), dim=1)
    marginal = torch.logsumexp(doc_lp[:, :, None, None] + log_probs, dim=1)  # [B, T-1, V]
    target = labels[:, 1:]
    scored = target.ne(parts.model.config.generator.pad_token_id)
    gold = -(marginal.gather(-1, target[..., None]).squeeze(-1) * scored).sum(-1)
    uniform = -(marginal.mean(-1) * scored).sum(-1)
    return ((1 - epsilon) * gold + epsilon * uniform).mean()


@pytest.mark.parametrize("epsilon", [0.1, 0.4])
def test_label_smoothing_equals_a_hand_written_smoothed_marginal_nll(tiny, epsilon):
    smoothed = build_rag_model(tiny["bert"], tiny["bart"], "rag_token", pooling="mean", label_smoothing=epsilon)
    smoothed.model.eval()  # no dropout: the hand-written pass must see the same generator outputs
    inputs = rag_inputs(smoothed)
    with torch.no_grad():
        ours = rag_loss(smoothed, *inputs, n_docs=K).item()
        by_hand = hand_smoothed_token_nll(smoothed, *inputs, epsilon=epsilon).item()
        unsmoothed = hand_smoothed_token_nll(smoothed, *inputs, epsilon=0.0).item()
    assert ours == pytest.approx(by_hand, abs=1e-4)
    assert abs(by_hand - unsmoothed) > 0.05  # so a loss that ignored epsilon would fail the line above


def test_dropout_overrides_generator_dropout_and_negative_keeps_it(tiny):
    kept = build_rag_model(tiny["bert"], tiny["bart"], "rag_sequence", pooling="mean")
    assert kept.model.generator.config.dropout == pytest.approx(0.1)  # BartConfig's default
    changed = build_rag_model(tiny["bert"], tiny["t5"], "rag_sequence", pooling="mean", dropout=0.25)
    assert changed.model.generator.config.dropout_rate == 0.25


@pytest.mark.parametrize(("model_type", "generator"),
                         [("rag_sequence", "bart"), ("rag_token", "bart"), ("rag_sequence", "t5")])
def test_save_and_load_round_trip_gives_identical_loss_and_answers(tiny, tmp_path, model_type, generator):
    from transformers import AutoModel, AutoTokenizer

    parts = build_rag_model(tiny["bert"], tiny[generator], model_type, pooling="cls", label_smoothing=0.1)
    save_rag_model(parts, tmp_path / "saved")
    loaded = load_rag_model(tmp_path / "saved")
    assert (loaded.model_type, loaded.pooling) == (model_type, "cls")
    assert loaded.model.config.label_smoothing == 0.1
    assert not any(p.requires_grad for p in loaded.model.question_encoder.pooler.parameters())  # unused by 'cls'
    assert any(p.name.endswith(".safetensors") for p in (tmp_path / "saved").iterdir())

    inputs, loaded_inputs = rag_inputs(parts), rag_inputs(loaded)
    assert all(torch.equal(a, b) for a, b in zip(inputs, loaded_inputs))
    expected_loss = rag_loss(parts, *inputs, n_docs=K).item()
    assert rag_loss(loaded, *loaded_inputs, n_docs=K).item() == pytest.approx(expected_loss, abs=1e-6)
    q, vectors, ids, mask, _ = inputs
    assert generate_answers(loaded, q, vectors, ids, mask, n_docs=K, max_length=5) == \
        generate_answers(parts, q, vectors, ids, mask, n_docs=K, max_length=5)

    alone = AutoModel.from_pretrained(tmp_path / "saved" / "question_encoder")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "saved" / "question_encoder")
    batch = tokenizer(QUESTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = encode_questions(parts, QUESTIONS, max_length=32)
        got = alone(**batch).last_hidden_state[:, 0]
    torch.testing.assert_close(got, expected)


def test_missing_generator_or_encoder_path_is_a_model_load_error(tiny, tmp_path):
    missing = str(tmp_path / "no_such_generator")
    with pytest.raises(ModelLoadError, match="no_such_generator"):
        build_rag_model(tiny["bert"], missing, "rag_sequence", pooling="mean")
    with pytest.raises(ModelLoadError, match="no_such_encoder"):
        build_rag_model(str(tmp_path / "no_such_encoder"), tiny["bart"], "rag_sequence", pooling="mean")
    with pytest.raises(ModelLoadError, match="rag_parts.json"):
        load_rag_model(tmp_path)


def test_an_encoder_as_generator_is_a_model_load_error(tiny):
    with pytest.raises(ModelLoadError, match="encoder .masked LM., neither a seq2seq model nor a causal LM"):
        build_rag_model(tiny["bert"], tiny["bert"], "rag_sequence", pooling="mean")


def test_question_vectors_of_another_dimension_are_a_clear_error(tiny):
    parts = build_rag_model(tiny["bert"], tiny["bart"], "rag_sequence", pooling="mean")
    q, vectors, ids, mask, labels = rag_inputs(parts)
    with pytest.raises(ModelLoadError, match="dimension"):
        rag_loss(parts, q, vectors[:, :, :16], ids, mask, labels, n_docs=K)


def test_format_contexts_is_doc_major_in_transformers_format():
    strings = format_contexts([['"Quoted"', "B"], ["C", "D"]], [["one  two", "three"], ["four", "five"]],
                              ["q1?", "q2?"])
    assert strings == ["Quoted / one two // q1?", "B / three // q1?", "C / four // q2?", "D / five // q2?"]


def test_tokenize_contexts_cuts_the_passage_not_the_question(tiny):
    parts = build_rag_model(tiny["bert"], tiny["bart"], "rag_sequence", pooling="mean")
    long_text = " ".join(["river"] * 50)
    ids, mask = tokenize_contexts(parts, [["Doc", "Doc"]], [[long_text, "stone"]], ["what is the key ?"],
                                  max_length=16)
    assert ids.shape == (2, 16) and mask[0].all() and mask[1].sum() < 16
    decoded = parts.generator_tokenizer.decode(ids[0], skip_special_tokens=True)
    assert decoded.startswith("doc / river") and decoded.endswith("river // what is the key ?")
    assert ids[0, 0] == 0 and ids[0, -1] == 2  # <s> ... </s> kept
    short = parts.generator_tokenizer.decode(ids[1], skip_special_tokens=True)
    assert short == "doc / stone // what is the key ?"


def test_targets_start_at_the_decoder_start_and_end_with_eos(tiny):
    bart = build_rag_model(tiny["bert"], tiny["bart"], "rag_sequence", pooling="mean")
    labels = tokenize_targets(bart.generator_tokenizer, bart.model.config.generator, ["stone", "river tide"], 8)
    stone, river, tide = (bart.generator_tokenizer.convert_tokens_to_ids(w) for w in ("stone", "river", "tide"))
    # BART: </s> <s> answer </s>, padded with <pad>=1
    assert labels.tolist() == [[2, 0, stone, 2, 1], [2, 0, river, tide, 2]]
    t5 = build_rag_model(tiny["bert"], tiny["t5"], "rag_token", pooling="mean")
    labels = tokenize_targets(t5.generator_tokenizer, t5.model.config.generator, ["stone", "river tide"], 8)
    stone, river, tide = (t5.generator_tokenizer.convert_tokens_to_ids(w) for w in ("stone", "river", "tide"))
    # T5: <pad> answer </s>, padded with <pad>=0
    assert labels.tolist() == [[0, stone, 1, 0], [0, river, tide, 1]]
    truncated = tokenize_targets(t5.generator_tokenizer, t5.model.config.generator, [" ".join(["river"] * 20)], 6)
    assert truncated.shape == (1, 6) and truncated[0, 0] == 0 and truncated[0, -1] == 1


@pytest.mark.parametrize("generator", ["bart", "t5"])
@pytest.mark.parametrize("model_type", ["rag_sequence", "rag_token"])
def test_generate_answers_gives_one_string_per_question_and_keeps_train_mode(tiny, generator, model_type):
    parts = build_rag_model(tiny["bert"], tiny[generator], model_type, pooling="mean")
    parts.model.train()
    q, vectors, ids, mask, _ = rag_inputs(parts)
    answers = generate_answers(parts, q, vectors, ids, mask, n_docs=K, max_length=4, num_beams=2)
    assert len(answers) == len(QUESTIONS) and all(isinstance(a, str) for a in answers)
    assert all(len(a.split()) <= 4 for a in answers)
    assert parts.model.training


def test_training_on_a_copy_task_lowers_the_loss_and_learns_the_answer(tiny):
    parts = build_rag_model(tiny["bert"], tiny["bart"], "rag_sequence", pooling="mean", dropout=0.0)
    parts.model.train()
    q_fixed, vectors, ids, mask, labels = rag_inputs(parts)
    optimizer = torch.optim.AdamW(parts.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        q = encode_questions(parts, QUESTIONS, max_length=32)
        loss = rag_loss(parts, q, vectors, ids, mask, labels, n_docs=K)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    q = encode_questions(parts, QUESTIONS, max_length=32)
    assert generate_answers(parts, q, vectors, ids, mask, n_docs=K, max_length=8) == ANSWERS


def test_a_ddp_wrapped_model_trains_generates_and_saves(tiny, tmp_path):
    """Ray Train's prepare_model wraps the head in DDP: the loss must go through the wrapper's forward."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        # Mean pooling leaves BERT's pooler out of the loss: it must be frozen, or DDP fails on step 2.
        parts = build_rag_model(tiny["bert"], tiny["bart"], "rag_token", pooling="mean")
        parts.model = torch.nn.parallel.DistributedDataParallel(parts.model.train(), find_unused_parameters=False)
        for _ in range(2):
            q, vectors, ids, mask, labels = rag_inputs(parts)
            rag_loss(parts, q, vectors, ids, mask, labels, n_docs=K).backward()
        assert all(p.grad is not None for p in parts.model.parameters() if p.requires_grad)
        assert len(generate_answers(parts, q, vectors, ids, mask, n_docs=K, max_length=4)) == len(QUESTIONS)
        save_rag_model(parts, tmp_path / "saved")
        assert load_rag_model(tmp_path / "saved").model_type == "rag_token"
    finally:
        dist.destroy_process_group()


def test_score_documents_accepts_numpy_vectors():
    q = torch.tensor([[1.0, 2.0]], requires_grad=True)
    scores = score_documents(q, torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]).numpy())
    assert scores.tolist() == [[1.0, 2.0]] and scores.requires_grad
