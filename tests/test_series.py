"""vae.execution.series: thinned epochs, their head, and summary.jsonl."""

from __future__ import annotations

import json

from test_listing import LATENT, row

from vae.execution.series import DISPLAY_POINTS, RECENT, Series, load_series


def grown(epochs: int, rows: bool = True) -> Series:
    series = Series(LATENT, rows=[] if rows else None)
    for epoch in range(1, epochs + 1):
        series.add({**row(epoch), "seconds": float(epoch)})
    series.signature, series.covered = (1, 1000, 1), 1000  # as if read from a file
    return series


def test_thinning_keeps_evenly_spaced_epochs_and_the_latest():
    series = grown(1000)
    shown = [r["epoch"] for r in series.display()]
    assert len(shown) <= DISPLAY_POINTS + 1 and shown[-1] == 1000 and shown[0] == 1
    steps = {b - a for a, b in zip(shown[:-1], shown[1:-1], strict=False)}
    assert steps == {series.stride}


def test_the_head_keeps_the_recent_epochs_durations_for_an_eta():
    series = grown(10, rows=False)
    assert series.recent == [8.0, 9.0, 10.0] and len(series.recent) == RECENT
    again = Series.from_head(series.head_dict(), LATENT)
    assert again.recent == series.recent and again.last == series.last


def test_a_head_written_before_recent_durations_existed_still_reads():
    head = grown(4, rows=False).head_dict()
    del head["recent"]
    again = Series.from_head(head, LATENT)
    assert again is not None and again.count == 4 and again.recent == []


def test_a_head_with_impossible_durations_is_not_trusted():
    head = {**grown(4, rows=False).head_dict(), "recent": [-1.0]}
    assert Series.from_head(head, LATENT) is None


def test_appended_lines_are_read_from_where_the_series_stopped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(row(e)) + "\n" for e in (1, 2)))
    first = load_series(path, tmp_path / "summary.jsonl", LATENT, None)
    with open(path, "a") as handle:
        handle.write(json.dumps(row(3)) + "\n")
    covered = first.covered
    again = load_series(path, tmp_path / "summary.jsonl", LATENT, first)
    assert again is first and again.count == 3 and again.covered > covered
