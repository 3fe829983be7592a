"""The end-to-end retriever benchmark's data: match ledgers whose roles only a trained context encoder reads.

A fictional knowledge base where the pretrained context encoder is the weak side, generated from one seed
like the bundled demo (same layout, same generator machinery; see `pipeline/demo/data.py`):

* every pair of (made-up) players met twice at one game and each won once; each match is one passage,
  a ledger record in the keepers' jargon: a label word for the winner, another for the loser, and the
  year, in shuffled order, under the game as title, e.g. "Chess" / "zusvi Delo Prast; 1820; tasnan Tovin Karsh.";
* questions are plain English about one match, naming its winner and game ("In which year was Tovin Karsh
  victorious at chess?"), answered by the year; the other record of the pair names the same two players at
  the same game and states another year (the rematch that player lost), so reading it gives a wrong answer;
* dev and test ask about pairs that no training question mentions (every question of a pair is in one split).

Why question-only training cannot close the gap: a question vector q scores a passage by q . c0(p), a
linear functional of the frozen passage embedding. c0 is a mean over token states, so the two records of a
pair share everything the question knows: the same names, labels and game, in the same counts. They
differ only in which label sits beside which name, a trace the frozen encoder barely keeps once fields are
shuffled (the label words are jargon to it, and word order carries no role), and in the year, which the
question does not know. Whatever q a question encoder makes, the gold record and its reverse score about
alike: trained this way, recall@1 stays near the pretrained coin flip. A trained context encoder can write
the binding into c(p) (e.g. the names after the winner's label in one subspace, the loser's in another), which
is what end-to-end training teaches through the doc scores. `jobs/benchmark_end2end.py` measures both, and
docs/results.md quotes it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from pipeline.demo.generated import DemoPaths, WordMaker, ensure_generated, write_jsonl
from pipeline.demo.generator import READING_BATCH, ReadingExample, build_generator

END2END_DIR = "runs/end2end/data"
END2END_VERSION = 1  # bump when the generated content changes, so data made by older code is replaced
NUM_PLAYERS = 300
NUM_PAIRS = 600  # x 2 records = 1,200 passages
READING_STEPS = 400  # copying the one year of a record is quickly learned

GAMES = ("chess", "draughts", "backgammon", "go", "checkers", "dominoes", "mahjong", "cribbage", "whist",
         "billiards", "croquet", "fencing", "archery", "tennis", "bowls", "quoits")
# Questions name the winner only: the confuser is the rematch the same player lost, so what separates the
# two records is which label stands beside that name.
QUESTIONS = ("In what year did {winner} win at {game}?", "When did {winner} win a game of {game}?",
             "In which year was {winner} victorious at {game}?", "What year did {winner} take a win at {game}?")


@dataclass(frozen=True)
class Match:
    """One ledger record: who beat whom at what, the year (the answer), and the record's text (the evidence)."""

    pair: int  # the two records of a pair share this number
    winner: str
    loser: str
    game: str
    answer: str
    evidence: str

    def question(self, rng: random.Random) -> str:
        return rng.choice(QUESTIONS).format(winner=self.winner, game=self.game)


def build_ledger(seed: int = 0, num_pairs: int = NUM_PAIRS, num_players: int = NUM_PLAYERS,
                 shadow: int = 0) -> tuple[list[dict], list[Match]]:
    """Documents ({"title": game, "text": record}, one per match, the two of a pair adjacent) and their matches.

    `shadow` > 0 gives a shadow ledger of the same seed: the same names, labels and games, other pairings
    and years (what the generator practises reading on).
    """
    if 2 * num_pairs > num_players * len(GAMES) * 0.8:  # the pairing below would take long to find room
        raise ValueError(f"{num_pairs} pairs need more than {num_players} players")
    rng = random.Random(f"ledger {seed}")
    words = WordMaker(rng)
    first_names, last_names = words.pool(150, (2,)), words.pool(400, (2,))
    win_label, lose_label = words.word(2).lower(), words.word(2).lower()
    if shadow:
        rng = random.Random(f"ledger {seed}/shadow {shadow}")
    players: set[str] = set()
    while len(players) < num_players:
        players.add(f"{rng.choice(first_names)} {rng.choice(last_names)}")
    ordered = sorted(players)
    rng.shuffle(ordered)

    documents, matches, played = [], [], set()  # (player, game): each player meets one opponent per game
    while len(matches) < 2 * num_pairs:
        a, b = rng.sample(ordered, 2)
        game = rng.choice(GAMES)
        if (a, game) in played or (b, game) in played:
            continue
        played.update(((a, game), (b, game)))
        for winner, loser, year in zip((a, b), (b, a), rng.sample(range(1700, 1950), 2)):
            fields = [f"{win_label} {winner}", f"{lose_label} {loser}", str(year)]
            rng.shuffle(fields)  # position says nothing about the role; only the label beside a name does
            text = "; ".join(fields) + "."
            documents.append({"title": game.capitalize(), "text": text})
            matches.append(Match(len(matches) // 2, winner, loser, game, str(year), text))
    return documents, matches


def split_pairs(num_pairs: int) -> dict[str, int]:
    """Pairs asked per split (both records of each): a sixth test, a twelfth dev, the rest train."""
    test, dev = max(1, num_pairs // 6), max(1, num_pairs // 12)
    return {"test": test, "dev": dev, "train": num_pairs - test - dev}


def build_ledger_splits(matches: list[Match], seed: int = 0) -> dict[str, list[dict]]:
    """QA rows ({"question", "answers", "evidence"}) per split; a pair's two questions are in one split."""
    rng = random.Random(f"ledger {seed}/splits")
    pairs = sorted({m.pair for m in matches})
    rng.shuffle(pairs)
    split_of, start = {}, 0
    for split, size in split_pairs(len(pairs)).items():
        split_of.update((p, split) for p in pairs[start:start + size])
        start += size
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for m in matches:
        splits[split_of[m.pair]].append({"question": m.question(rng), "answers": [m.answer], "evidence": m.evidence})
    for rows in splits.values():
        rng.shuffle(rows)  # the two questions of a pair need not sit side by side
    return splits


def ledger_reading_examples(seed: int, steps: int, num_pairs: int = NUM_PAIRS, num_players: int = NUM_PLAYERS,
                            batch: int | None = None) -> list:
    """Enough shadow-ledger ReadingExamples (record, question, year) for `steps` batches (of the generator's
    reading batch unless given) without repeats."""
    batch = batch or READING_BATCH
    examples: list = []
    shadow = 0
    while len(examples) < max(steps * batch, batch):
        shadow += 1
        documents, matches = build_ledger(seed, num_pairs, num_players, shadow=shadow)
        rng = random.Random(f"ledger {seed}/reading {shadow}")
        examples += [ReadingExample(d["title"], d["text"], m.question(rng), m.answer)
                     for d, m in zip(documents, matches)]
    return examples


def _generate(paths: DemoPaths, seed: int, num_pairs: int, num_players: int, reading_steps: int) -> None:
    documents, matches = build_ledger(seed, num_pairs, num_players)
    splits = build_ledger_splits(matches, seed)
    write_jsonl(paths.documents, documents)
    for split, rows in splits.items():
        write_jsonl(getattr(paths, split), rows)
    corpus = [f"{d['title']} / {d['text']}" for d in documents]
    corpus += [f"{r['question']} {r['answers'][0]}" for rows in splits.values() for r in rows]
    reading = ledger_reading_examples(seed, reading_steps, num_pairs, num_players)
    build_generator(paths.generator, corpus, reading, seed, reading_steps)


def ensure_end2end_data(directory: str | Path = END2END_DIR, seed: int = 0, num_pairs: int = NUM_PAIRS,
                        num_players: int = NUM_PLAYERS, reading_steps: int = READING_STEPS) -> DemoPaths:
    """Paths of the ledger data set under `directory` (documents.jsonl, train/dev/test.jsonl, generator/),
    generating it first if absent, as `ensure_demo_data` does: idempotent, atomic, same seed same bytes,
    replaced when made with other arguments or by an older version, never written over another data set.
    """
    stamp = {"kind": "end2end", "version": END2END_VERSION, "seed": seed, "num_pairs": num_pairs,
             "num_players": num_players, "reading_steps": reading_steps}
    return ensure_generated(directory, stamp,
                            lambda paths: _generate(paths, seed, num_pairs, num_players, reading_steps))
