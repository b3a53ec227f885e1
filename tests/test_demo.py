"""`make demo` (cachedit.demo): rows printed as soon as each setup is measured, a progress bar on
a terminal, the uncached row as the 1.00x reference, speedups from the fastest interleaved pair."""

from __future__ import annotations

import io
import re

from cachedit import demo


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_fastest_pair_gives_the_speedup():
    # the second pair ran while the machine was least busy: its own ratio counts, not 10/3 or 20/5
    assert demo.fastest_pair_speedup([(10.0, 5.0), (4.0, 3.0), (20.0, 5.0)]) == 4.0 / 3.0


def test_progress_bar_only_on_a_terminal():
    quiet = io.StringIO()
    demo.Progress(3, quiet).step("next")
    assert quiet.getvalue() == ""
    terminal = _Terminal()
    bar = demo.Progress(4, terminal, width=8)
    bar.step("fixed")
    assert "[##......] 1/4 runs" in terminal.getvalue() and "fixed" in terminal.getvalue()


def test_rows_print_as_soon_as_measured():
    terminal = _Terminal()
    printed = []  # (line, runs shown by the progress bar when the line was printed)

    def record(line: str) -> None:
        runs = re.findall(r"(\d+)/(\d+) runs", terminal.getvalue())
        printed.append((line, int(runs[-1][0]) if runs else 0))

    rows = demo.run_demo(steps=6, batch=2, repeats=1, out=None, print_fn=record, progress_stream=terminal)
    names = list(demo.setups())
    assert [r["setup"] for r in rows] == names
    assert rows[0]["speedup"] == 1.0 and rows[0]["psnr"] == float("inf")  # the reference, by construction
    assert rows[-1]["reused"] == "0/6"  # never reuse
    table_rows = [(line, runs) for line, runs in printed if line.startswith("| ") and not line.startswith("| setup")]
    assert [line.split(" | ")[0][2:] for line, _ in table_rows] == names
    # 1 reference run, then 2 runs (uncached + cached) per setup: each row is out right after its own runs
    assert [runs for _, runs in table_rows] == [3, 3, 5, 7, 9]


def test_every_other_pair_runs_cached_first(monkeypatch):
    """A machine whose speed drifts within a minute must favour neither side: pairs alternate
    uncached-cached and cached-uncached, and the row still reports the cached runs' reuse."""
    import cachedit

    order = []
    timed = demo._timed

    def record(fn):
        order.append(any(e.engine.enabled for e in cachedit.get_manager().entries()))
        return timed(fn)

    monkeypatch.setattr(demo, "_timed", record)
    monkeypatch.setattr(demo, "setups", lambda: {"fixed": {"strategy": "fixed", "skip_interval": 2}})
    rows = demo.run_demo(steps=6, batch=2, repeats=3, out=None, print_fn=lambda line: None)
    assert order == [False, True, True, False, False, True]
    assert rows[1]["reused"] != "0/6" and not cachedit.get_manager().entries()
