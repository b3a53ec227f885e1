"""Smoke test of the benchmark harness (benchmarks/ is never part of the suite otherwise): the
`--quick` code path on a tiny random model, 1 timing round, no files written."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("cache_dit")

from benchmarks import run as bench  # noqa: E402
from benchmarks.report import TABLE_COLUMNS, markdown_table, results_markdown  # noqa: E402
from benchmarks.scaling import run_scaling, scaling_table  # noqa: E402


def test_quick_path_produces_the_expected_table(tmp_path):
    model, note = bench.load_bundled(tiny=True)
    args = bench.parse_args(["--quick", "--steps", "6", "--repeats", "1", "--threads", "1", "--no-scaling",
                             "--out", str(tmp_path)])
    out = bench.run(args, model=model, model_note=note, log=lambda s: None, write=False, group_size=3)
    (res,) = out["results"]
    names = [r.name for r in res.rows]
    expected = ["uncached", "cache-dit F8B0 R0.08 (its default)"] + [m.name for m in bench.quick_rows()]
    assert expected[2].startswith("ours default (adaptive): F")
    assert names == expected
    table = markdown_table(res.rows).splitlines()
    assert table[0] == "| " + " | ".join(TABLE_COLUMNS) + " |"
    assert len(table) == 2 + len(expected)
    assert all(line.count("|") == len(TABLE_COLUMNS) + 1 for line in table[2:])
    by_name = {r.name: r for r in res.rows}
    # cache-dit refuses F8B0 on a 4-block model: recorded as a failed row, not a crash
    assert by_name["cache-dit F8B0 R0.08 (its default)"].error
    for r in res.rows:
        if r.error:
            continue
        assert r.speedup > 0 and math.isfinite(r.speedup), r.name
        assert 0.0 < r.compute <= 1.0 + 1e-9, r.name
        assert r.deterministic and r.restored, r.name
    fixed = by_name["ours fixed skip2"]
    assert fixed.compute < 1.0 and fixed.cached_steps and fixed.cached_steps > 0
    assert fixed.cache_bytes and fixed.cache_bytes > 0
    assert by_name["uncached"].compute == 1.0 and by_name["uncached"].psnr == math.inf
    text = results_markdown(res, out["info"])
    assert "### Targets at 6 steps" in text and "Machine:" in text

    # The README section is written from such tables: the rows it quotes must carry the table's numbers.
    from benchmarks.readme import END, START, section, update_readme

    (tmp_path / "results_6.md").write_text(text)
    body = section(str(tmp_path))
    default = by_name[expected[2]]
    assert f"| 6 steps | wall speedup |" in body
    assert f"{default.speedup:.2f}x" in body and f"{default.psnr:.1f} dB" in body
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold numbers\n{END}\noutro\n")
    assert update_readme(str(readme), str(tmp_path)) is True
    new = readme.read_text()
    assert "old numbers" not in new and new.startswith("intro\n") and new.endswith(f"{END}\noutro\n")
    assert update_readme(str(readme), str(tmp_path)) is False  # idempotent


def test_tiny_scaling_row():
    rows = run_scaling(hidden=32, heads=2, double=1, single=1, tokens=(16,), txt_tokens=4, steps=4, batch=1, repeats=1,
                       in_channels=8, log=lambda s: None)
    (row,) = rows
    assert row["tokens"] == 16 and row["uncached_s"] > 0
    assert 0.0 < row["fixed_fraction"] < 1.0  # counted, exact; the timings of a tiny model are noise
    assert row["fixed_ideal"] > 0 and row["fixed_measured"] > 0
    assert "| 16 |" in scaling_table(rows)
