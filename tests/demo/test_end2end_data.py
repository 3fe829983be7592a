"""The end-to-end benchmark's ledger data: deterministic, pair-disjoint splits, one record per answer, the two
records of a pair alike but for roles and year, and the demo's generation contract. Plain pytest, no Ray."""

from __future__ import annotations

import json
import re

import pytest

from pipeline.demo.data import ensure_demo_data
from pipeline.demo.end2end_data import (
    GAMES,
    build_ledger,
    build_ledger_splits,
    ensure_end2end_data,
    ledger_reading_examples,
    split_pairs,
)
from pipeline.errors import DataError
from pipeline.train.metrics import evidence_rank

PAIRS, PLAYERS, STEPS = 60, 40, 2  # small: the tests check the data, not how well the generator reads
SPLITS = ("train", "dev", "test")


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _make(directory, seed=0, num_pairs=PAIRS):
    return ensure_end2end_data(directory, seed=seed, num_pairs=num_pairs, num_players=PLAYERS, reading_steps=STEPS)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("end2end") / "data")


def _roles(text: str) -> dict[str, str]:
    """{"label word": "player name"} of one record, and {"year": ...}."""
    fields = [f.strip() for f in text.rstrip(".").split(";")]
    return {f.split(" ", 1)[0] if not f.isdigit() else "year": f.split(" ", 1)[1] if not f.isdigit() else f
            for f in fields}


def test_same_seed_gives_byte_identical_files(ledger, tmp_path):
    again = _make(tmp_path / "again")
    for name in ("documents", "train", "dev", "test"):
        assert getattr(again, name).read_bytes() == getattr(ledger, name).read_bytes(), name
    for name in ("tokenizer.json", "model.safetensors"):
        assert (again.generator / name).read_bytes() == (ledger.generator / name).read_bytes(), name


def test_a_different_seed_gives_a_different_ledger():
    first, second = (build_ledger(seed=seed, num_pairs=20, num_players=20)[0] for seed in (0, 1))
    assert first != second


def test_sizes(ledger):
    assert len(_rows(ledger.documents)) == 2 * PAIRS
    sizes = split_pairs(PAIRS)
    assert sum(sizes.values()) == PAIRS
    for split in SPLITS:
        assert len(_rows(getattr(ledger, split))) == 2 * sizes[split]  # both records of each pair are asked


def test_every_evidence_is_in_exactly_one_passage_and_states_the_answer(ledger):
    texts = [d["text"] for d in _rows(ledger.documents)]
    for split in SPLITS:
        for row in _rows(getattr(ledger, split)):
            assert re.fullmatch(r"1[789]\d\d", row["answers"][0])
            assert _roles(row["evidence"])["year"] == row["answers"][0]
            # As evaluation finds it (normalised, whole words), not only as a raw substring.
            assert sum(evidence_rank([text], row["evidence"]) == 1 for text in texts) == 1, row["evidence"]


def test_splits_share_no_pair_of_players(ledger):
    documents = _rows(ledger.documents)
    pair_of = {d["text"]: i // 2 for i, d in enumerate(documents)}  # a pair's two records are adjacent
    pairs = {split: {pair_of[r["evidence"]] for r in _rows(getattr(ledger, split))} for split in SPLITS}
    assert not pairs["train"] & pairs["test"] and not pairs["train"] & pairs["dev"] and not pairs["dev"] & pairs["test"]
    assert sum(len(p) for p in pairs.values()) == PAIRS


def test_the_two_records_of_a_pair_hold_the_same_words_but_the_year_with_roles_swapped():
    documents, matches = build_ledger(seed=0, num_pairs=PAIRS, num_players=PLAYERS)
    for first, second in zip(documents[::2], documents[1::2]):
        assert first["title"] == second["title"]
        a, b = _roles(first["text"]), _roles(second["text"])
        assert a["year"] != b["year"] and a.keys() == b.keys()
        win, lose = [label for label in a if label != "year"]
        assert (a[win], a[lose]) == (b[lose], b[win])
        def words(text):
            return sorted(w for w in text.replace(";", " ").replace(".", " ").split() if not w.isdigit())
        assert words(first["text"]) == words(second["text"])


def test_each_question_has_one_answering_record_and_its_confuser_is_the_lost_rematch():
    documents, matches = build_ledger(seed=0, num_pairs=PAIRS, num_players=PLAYERS)
    win_label = next(label for label, name in _roles(matches[0].evidence).items() if name == matches[0].winner)
    rows = [row for rows in build_ledger_splits(matches, seed=0).values() for row in rows]
    for row in rows:
        game = next(g for g in GAMES if row["question"].rstrip("?").endswith(f" {g}"))
        named = [d for d in documents if d["title"] == game.capitalize()
                 and any(name in row["question"] for name in _roles(d["text"]).values())]
        winners = [d for d in named if _roles(d["text"])[win_label] in row["question"]]
        assert [d["text"] for d in winners] == [row["evidence"]]
        assert len(named) == 2  # the record answering and the rematch the same player lost


def test_shadow_ledgers_share_the_vocabulary_but_not_the_records():
    documents, _ = build_ledger(seed=0, num_pairs=PAIRS, num_players=PLAYERS)
    reading = ledger_reading_examples(seed=0, steps=10, num_pairs=PAIRS, num_players=PLAYERS, batch=16)
    assert len(reading) >= 160 and all(e.answer in e.text for e in reading)
    assert not {e.text for e in reading} & {d["text"] for d in documents}
    def labels(texts):
        return {label for t in texts for label in _roles(t) if label != "year"}
    assert labels(e.text for e in reading) == labels(d["text"] for d in documents)


def test_generator_loads_offline_and_keeps_names_and_years_whole(ledger, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ledger.generator)
    model = AutoModelForSeq2SeqLM.from_pretrained(ledger.generator)
    assert model.config.vocab_size == len(tokenizer)
    record = _rows(ledger.documents)[0]["text"]
    ids = tokenizer(record)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == record
    answers = [r["answers"][0] for r in _rows(ledger.test)]
    assert all(len(tokenizer(a, add_special_tokens=False)["input_ids"]) == 1 for a in answers)


def test_existing_data_is_reused_and_other_arguments_replace_it(ledger, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in (ledger.documents, ledger.generator / "config.json")}
    assert _make(ledger.directory) == ledger
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert capsys.readouterr().out == ""
    other = _make(tmp_path / "other")
    _make(other.directory, num_pairs=PAIRS + 12)
    assert "replacing" in capsys.readouterr().out
    assert len(_rows(other.documents)) == 2 * (PAIRS + 12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]  # no temporary directory left behind


def test_the_demo_and_the_ledger_never_overwrite_each_other(ledger, tmp_path):
    demo = tmp_path / "demo"
    (demo / "generator").mkdir(parents=True)
    (demo / "documents.jsonl").write_text("precious\n")
    (demo / "generator" / "config.json").write_text("{}\n")
    (demo / "demo.json").write_text(json.dumps({"version": 3, "seed": 0, "reading_steps": 3000}) + "\n")
    with pytest.raises(DataError, match="holds demo data, not end2end"):
        _make(demo)
    assert (demo / "documents.jsonl").read_text() == "precious\n"
    with pytest.raises(DataError, match="holds end2end data, not demo"):
        ensure_demo_data(ledger.directory, reading_steps=STEPS)
