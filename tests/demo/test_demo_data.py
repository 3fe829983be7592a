"""The bundled demo: deterministic, leak-free splits, gold evidence, one passage per document,
and a generator directory that loads offline. Plain pytest, no Ray."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.demo.data import (
    MAX_DOCUMENT_WORDS,
    QUICK_READING_STEPS,
    SPLIT_SIZES,
    build_knowledge_base,
    ensure_demo_data,
    shadow_reading_examples,
)
from pipeline.errors import DataError


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return ensure_demo_data(tmp_path_factory.mktemp("demo") / "data", seed=0, reading_steps=QUICK_READING_STEPS)


def test_same_seed_gives_byte_identical_files(demo, tmp_path):
    again = ensure_demo_data(tmp_path / "again", seed=0, reading_steps=QUICK_READING_STEPS)
    for name in ("documents", "train", "dev", "test"):
        assert getattr(again, name).read_bytes() == getattr(demo, name).read_bytes(), name
    for name in ("tokenizer.json", "model.safetensors"):
        assert (again.generator / name).read_bytes() == (demo.generator / name).read_bytes(), name


def test_a_different_seed_gives_a_different_knowledge_base():
    assert build_knowledge_base(seed=0, num_entities=20)[0] != build_knowledge_base(seed=1, num_entities=20)[0]


def test_shadow_worlds_share_the_vocabulary_but_no_fact_with_the_demo():
    documents, facts = build_knowledge_base(seed=0)
    real_facts = {(f.entity, f.relation.name, f.answer) for f in facts}
    real_texts = {d["text"] for d in documents}
    reading = shadow_reading_examples(seed=0, worlds=2)
    assert len(reading) == 2 * len(facts)
    # Other people (names are drawn from the same pools, so a few recur) with independently drawn facts.
    shared = {(e.title, e.answer) for e in reading} & {(e, a) for e, _, a in real_facts}
    assert len(shared) < 0.005 * len(reading)
    assert not {e.text for e in reading} & real_texts
    def words(text):  # years aside, which are drawn fresh
        return {w.strip(".,") for w in text.split() if not w.strip(".,").isdigit()}

    real_words = set().union(*(words(d["text"]) for d in documents))
    shadow_words = set().union(*(words(e.text) for e in reading))
    # The same pools of names, towns, rivers, ... (a few pool words only a shadow world happens to draw).
    assert len(shadow_words - real_words) / len(shadow_words) < 0.1
    assert all(e.answer in e.text for e in reading)


@pytest.mark.slow  # trains the generator
def test_reading_practice_teaches_the_generator_to_answer_from_the_passage(demo):
    import torch
    from transformers import AutoTokenizer, BartForConditionalGeneration

    from pipeline.demo.generator import (
        copy_friendly_init,
        practise_reading,
        tiny_bart_config,
    )

    tokenizer = AutoTokenizer.from_pretrained(demo.generator)
    torch.manual_seed(0)
    model = BartForConditionalGeneration(tiny_bart_config(len(tokenizer)))
    copy_friendly_init(model)
    losses = practise_reading(model, tokenizer, shadow_reading_examples(seed=0, worlds=1), seed=0, steps=160,
                              log=lambda line: None)
    assert losses[-1] < 0.8 * losses[0], losses


def test_split_sizes(demo):
    for split, size in SPLIT_SIZES.items():
        assert len(_rows(getattr(demo, split))) == size


def test_splits_share_no_fact(demo):
    # A fact is its evidence sentence: it names the entity and states one relation of it.
    seen = {split: {r["evidence"] for r in _rows(getattr(demo, split))} for split in SPLIT_SIZES}
    assert not seen["train"] & seen["test"]
    assert not seen["train"] & seen["dev"]
    assert not seen["dev"] & seen["test"]


def test_every_evidence_is_in_exactly_one_document_and_states_the_answer(demo):
    texts = [d["text"] for d in _rows(demo.documents)]
    for split in SPLIT_SIZES:
        for row in _rows(getattr(demo, split)):
            assert row["question"] and row["answers"] and all(row["answers"])
            assert row["answers"][0] in row["evidence"]
            assert sum(row["evidence"] in text for text in texts) == 1, row["evidence"]


def test_every_document_fits_one_passage(demo):
    documents = _rows(demo.documents)
    assert 2000 <= len(documents) <= 3000
    assert all(d["title"] and len(d["text"].split()) <= MAX_DOCUMENT_WORDS for d in documents)


def test_generator_loads_offline_and_round_trips_text(demo, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo.generator)
    model = AutoModelForSeq2SeqLM.from_pretrained(demo.generator)
    document = _rows(demo.documents)[0]
    sentence = document["text"].split(". ")[0] + "."
    ids = tokenizer(sentence)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 0 and ids[-1] == tokenizer.eos_token_id == 2
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == sentence
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id) == (1, 3)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.decoder_start_token_id == 2 and model.config.pad_token_id == 1


def test_names_and_answers_are_mostly_single_tokens(demo):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo.generator)
    answers = [r["answers"][0] for r in _rows(demo.test)]
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    assert sum(lengths) / len(lengths) < 1.5


def test_an_existing_demo_is_not_regenerated(demo, capsys):
    before = {p: p.stat().st_mtime_ns for p in (demo.documents, demo.train, demo.generator / "config.json")}
    again = ensure_demo_data(demo.directory, seed=0, reading_steps=QUICK_READING_STEPS)
    assert again == demo
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert capsys.readouterr().out == ""


def test_a_directory_that_is_not_a_demo_is_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "documents.jsonl").write_text("precious\n")
    with pytest.raises(DataError, match="not a demo"):
        ensure_demo_data(tmp_path / "mine", reading_steps=QUICK_READING_STEPS)
    assert (tmp_path / "mine" / "documents.jsonl").read_text() == "precious\n"


def test_a_demo_from_older_code_is_replaced(demo, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(demo.directory, old)
    (old / "demo.json").unlink()  # as written before demos were versioned
    (old / "test.jsonl").write_text("")
    ensure_demo_data(old, seed=0, reading_steps=QUICK_READING_STEPS)
    assert "replacing" in capsys.readouterr().out
    assert (old / "test.jsonl").read_bytes() == demo.test.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_an_incomplete_demo_is_an_error_not_a_silent_reuse(demo, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(demo.directory, half)
    (half / "dev.jsonl").unlink()
    with pytest.raises(DataError, match="missing dev.jsonl"):
        ensure_demo_data(half, seed=0, reading_steps=QUICK_READING_STEPS)


def test_generation_leaves_no_temporary_directory(demo):
    assert [p.name for p in demo.directory.parent.iterdir()] == [demo.directory.name]
