"""SQuAD answer metrics and retrieval metrics on hand-computed cases."""

from __future__ import annotations

import pytest

from pipeline.train.metrics import (
    answer_hit,
    evidence_rank,
    exact_match,
    f1_score,
    normalize_answer,
    score_answer,
    score_retrieval,
    summarize,
)


def test_normalize_answer_lowercases_and_drops_punctuation_articles_and_extra_spaces():
    assert normalize_answer("  The Eiffel-Tower, in  PARIS! ") == "eiffeltower in paris"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theory") == "theory"  # articles only as whole words


def test_exact_match_takes_the_best_gold():
    assert exact_match("the Paris", ["London", "paris."]) == 1.0
    assert exact_match("Paris France", ["Paris"]) == 0.0
    assert exact_match("anything", []) == 0.0


def test_f1_score_hand_computed():
    # prediction tokens [red, big, dog], gold [big, red, cat]: 2 common, P = R = 2/3, F1 = 2/3
    assert f1_score("the red big dog", ["big red cat"]) == pytest.approx(2 / 3)
    # gold [red]: P = 1/3, R = 1, F1 = 2 * 1/3 / (4/3) = 1/2; best of the two golds
    assert f1_score("red big dog", ["cat", "red"]) == pytest.approx(0.5)
    # repeated tokens count as often as both sides have them: common = min(2, 1) = 1, P = 1/2, R = 1
    assert f1_score("red red", ["red"]) == pytest.approx(2 / 3)
    assert f1_score("blue", ["red"]) == 0.0
    assert f1_score("the", ["a"]) == 1.0  # both empty after normalisation
    assert f1_score("the", ["red"]) == 0.0
    assert f1_score("red", []) == 0.0


def test_answer_hit_needs_a_whole_word_match_in_some_passage():
    passages = ["The party was long.", "A quiet River-bank town."]
    assert answer_hit(passages, ["Riverbank town"])  # punctuation dropped on both sides
    assert not answer_hit(passages, ["art"])  # inside "party", not a word of it
    assert answer_hit(passages, ["art", "party"])
    assert not answer_hit(passages, ["the"])  # empty after normalisation never hits
    assert not answer_hit([], ["party"])


def test_evidence_rank_is_the_first_passage_containing_the_sentence():
    passages = ["Nothing here.", "Copper melts at 1085 C. It is soft.", "copper melts at 1085 c"]
    assert evidence_rank(passages, "Copper melts at 1085 C.") == 2
    assert evidence_rank(passages, "Gold melts at 1064 C.") is None
    assert evidence_rank(passages, "") is None


def test_summarize_averages_answers_over_all_and_recall_over_rows_with_evidence():
    passages = ["alpha beta gamma", "delta epsilon"]
    records = [
        {**score_answer("beta", ["beta"]), **score_retrieval(passages, ["beta"], "alpha beta gamma")},  # rank 1
        {**score_answer("delta x", ["delta"]), **score_retrieval(passages, ["delta"], "delta epsilon")},  # rank 2
        {**score_answer("zeta", ["eta"]), **score_retrieval(passages, ["eta"], "zeta eta")},  # not found
        {**score_answer("gamma", ["gamma"]), **score_retrieval(passages, ["gamma"])},  # no evidence
    ]
    summary = summarize(records)
    assert summary["count"] == 4
    assert summary["exact_match"] == pytest.approx(2 / 4)
    # F1: 1, 2/3 (P 1/2, R 1), 0, 1
    assert summary["f1"] == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)
    assert summary["k"] == 2
    assert summary["hit@k"] == pytest.approx(3 / 4)  # "eta" is in no passage
    assert summary["evidence_count"] == 3
    assert summary["recall@1"] == pytest.approx(1 / 3)
    assert summary["recall@k"] == pytest.approx(2 / 3)


def test_summarize_reports_none_where_nothing_can_be_averaged():
    summary = summarize([score_answer("a b", ["b"])])
    assert summary["f1"] == 1.0 and summary["hit@k"] is None and summary["recall@1"] is None
    assert summarize([])["exact_match"] is None
