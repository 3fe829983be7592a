"""Progress lines: rate, ETA and throttling."""

from pipeline.progress import Progress, format_seconds


def test_format_seconds():
    assert [format_seconds(s) for s in (0.4, 42, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]


def test_line_shows_count_share_rate_eta_and_extras():
    progress = Progress("train", total=200, unit="steps")
    progress.done = 50
    line = progress.line(progress.started + 25.0, {"loss": 2.3456789, "epoch": 1})
    assert line == "[train] 50/200 steps (25%), 2 steps/s, ETA 1m15s, loss 2.346, epoch 1"


def test_unknown_total_prints_count_and_rate_only():
    progress = Progress("build_index", total=None, unit="passages")
    progress.done = 300
    assert progress.line(progress.started + 10.0, {}) == "[build_index] 300 passages, 30 passages/s"


def test_updates_are_throttled_and_finish_prints_once(capsys):
    progress = Progress("eval", total=10, unit="questions", every_s=3600)
    for _ in range(10):
        progress.update()
    assert capsys.readouterr().out == ""
    progress.finish(exact_match=0.5)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("[eval] 10 questions in ") and out[0].endswith("exact_match 0.5")
