"""A short soak (benchmarks/soak.py): after a warm-up cycle of the periodic schedule, models
tracked, cache bytes and live Python objects do not grow from one cycle end to the next."""

from __future__ import annotations

from benchmarks import soak


def test_no_growth_after_warmup():
    rows = soak.run(generations=3 * soak.PERIOD, every=soak.PERIOD, steps=3)
    first, second, third = rows[1], rows[2], rows[3]  # rows[0] is after generation 1
    assert second["models"] == third["models"] == 2, rows  # the dropped models are gone
    assert third["cache_bytes"] <= second["cache_bytes"] == first["cache_bytes"], rows
    assert third["objects"] - second["objects"] <= 100, rows  # no per-generation leak (60 generations)
