"""Smoke test of the benchmark harness (benchmarks/ is never part of the suite otherwise): the
`--quick` code path on tiny random models of every bundled layout, 1 timing round, tiny step
counts, plus the README section and the default robustness table written from such results."""

from __future__ import annotations

import math
import re

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("cache_dit")

from benchmarks import rows as R  # noqa: E402
from benchmarks import run as bench  # noqa: E402
from benchmarks.report import TABLE_COLUMNS, markdown_table, result_from_markdown, results_markdown, summary  # noqa: E402
from benchmarks.scaling import run_scaling, scaling_table  # noqa: E402
from cachedit.bundled import archs as A  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench")
    models = {a: bench.load_bundled(a, tiny=True) for a in bench.ARCHS}
    args = bench.parse_args(["--quick", "--steps", "6", "--threads", "1", "--no-scaling", "--no-defaults",
                             "--out", str(out_dir)])
    out = bench.run(args, models=models, log=lambda s: None, write=True, group_size=4)
    return out, out_dir


@pytest.mark.parametrize("arch", bench.ARCHS)
def test_quick_path_produces_the_expected_table(quick, arch):
    out, out_dir = quick
    (res,) = out["results"][arch]
    assert res.arch == arch and res.steps == 6 and list(res.seeds) == [0, 1]
    names = [r.name for r in res.rows]
    fixed = ["uncached"] + [m.name for m in R.quick_rows()]
    assert names[:len(fixed)] == fixed
    assert names[1] == ("ours default: balanced: F0B0 W2 MC4 TS1, error budget 0.15; 20+ steps: TS2 at 0.15, 24+ at 0.2, "
                        "50+: MC5; first streak 3")
    assert names[2] == "ours quality='fast' (error budget 0.2; 20+ steps: TS2 at 0.2, 24+ at 0.22, 50+: MC5; first streak 3)"
    tuned = names[len(fixed):]  # the tuning stage's picks (and ours with cache-dit's picked knobs)
    assert set(tuned) <= {m.name for ms in R.tuning_grid("standard", quick=True).values() for m in ms} | \
        {n for n in tuned if n.startswith("ours with cache-dit's tuned knobs")}
    table = markdown_table(res.rows).splitlines()
    assert table[0] == "| " + " | ".join(TABLE_COLUMNS) + " |"
    assert len(table) == 2 + len(names)
    assert all(line.count("|") == len(TABLE_COLUMNS) + 1 for line in table[2:])
    by_name = {r.name: r for r in res.rows}
    # cache-dit refuses F8B0 on a model with fewer than 8 blocks: recorded as a failed row, not a crash
    assert by_name[R.CACHE_DIT_DEFAULT].error
    for r in res.rows:
        if r.error:
            continue
        assert r.speedup > 0 and math.isfinite(r.speedup), r.name
        assert 0.0 < r.compute <= 1.0 + 1e-9, r.name
        assert r.psnr_min <= r.psnr + 1e-9 and len(r.cached_steps or [0, 0]) == 2, r.name
        assert r.restored, r.name
        assert r.deterministic or r.params.get("_feedback"), r.name  # only error feedback carries state over
    fixed_row = by_name["ours fixed skip2"]
    assert fixed_row.compute < 1.0 and sum(fixed_row.cached_steps) > 0 and fixed_row.cache_bytes > 0
    assert by_name["uncached"].compute == 1.0 and by_name["uncached"].psnr == math.inf

    # The written table reads back with the same numbers (the chart redraw and the README use it).
    path = out_dir / bench.result_name(arch, 6)
    text = path.read_text()
    assert f"### Summary: {arch} model, 6 steps" in text and "### Tuning stage" in text
    back = result_from_markdown(str(path), R.series_names())
    assert back.arch == arch and [r.name for r in back.rows] == names
    assert (out_dir / bench.chart_name(arch)).exists()
    s, s_back = summary(res), summary(back)
    assert (s["default"].name, s["ours_best"] and s["ours_best"].name) == \
        (s_back["default"].name, s_back["ours_best"] and s_back["ours_best"].name)


def test_readme_section_quotes_the_tables(quick, tmp_path):
    out, out_dir = quick
    from benchmarks.readme import END, START, section, update_readme

    from benchmarks.report import result_from_markdown
    from benchmarks.rows import series_names

    body = section(str(out_dir))
    written = sorted(out_dir.glob("results_*.md"))
    assert len(written) == len(bench.ARCHS)
    for path in written:
        # the section quotes the written tables, whose numbers are rounded (46.65 -> 46.6, not 46.7)
        res = result_from_markdown(str(path), series_names())
        d = summary(res)["default"]
        assert f"| {res.arch} 6 | {d.speedup:.2f}x" in body and f"{d.psnr:.1f} dB" in body
    for arch in bench.ARCHS:
        assert bench.chart_name(arch) in body
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold numbers\n{END}\noutro\n")
    assert update_readme(str(readme), str(out_dir)) is True
    new = readme.read_text()
    assert "old numbers" not in new and new.startswith("intro\n") and new.endswith(f"{END}\noutro\n")
    assert update_readme(str(readme), str(out_dir)) is False  # idempotent
    assert results_markdown(out["results"]["flux"][0], out["info"]).startswith("# Bundled flux model, 6 Euler steps")


def test_defaults_table_quick():
    from benchmarks import defaults as DF

    models = {a: bench.load_bundled(a, tiny=True)[0] for a in ("wan",)}
    res = DF.run(["wan"], quick=True, log=lambda s: None, models=models)
    text = DF.markdown(res, {"cpu": "test"}, 1.0)
    assert "New default (balanced feedback) vs old fixed default, over 2 model x scenario cells" in text
    rows = [line for line in text.splitlines() if line.startswith("| 8 steps")]
    assert len(rows) == 2 and all(line.count("|") == 9 for line in rows)
    for r in res["wan"]:
        assert [x["setting"] for x in r["rows"]] == [s[0] for s in DF.SETTINGS]
        assert all(0.0 < x["compute"] <= 1.0 + 1e-9 and x["psnr_min"] <= x["psnr"] for x in r["rows"])


def test_seeds_table_quick():
    from benchmarks import seeds as S

    model, _ = bench.load_bundled("wan", tiny=True)
    rows = S.measure("wan", ["default", "quality"], 2, steps=6, batch=2, model=model)
    assert [(r.arch, r.setting) for r in rows] == [("wan", "default"), ("wan", "quality")]
    for r in rows:
        assert len(r.per_seed) == len(r.worst_image) == len(r.computed) == 2
        assert all(w <= p for w, p in zip(r.worst_image, r.per_seed))
        assert min(r.per_seed) - 1e-6 <= r.psnr <= max(r.per_seed) + 1e-6  # pooled MSE lies between the seeds'
        assert all(1 <= c <= 6 for c in r.computed) and 0 <= r.lost <= 4
        assert (r.lost > 0) == (min(r.worst_image) < S.LOST_DB)
    text = S.markdown(rows, 2, {"cpu": "test"}, 1.0)
    assert text.count("\n| wan |") == 2 and "- wan quality: " in text


def test_candidate_screening_quick():
    """benchmarks.candidates: specs parse (a typo names the token), each candidate runs on the quick
    scenarios, and the summary line counts every cell."""
    from benchmarks import candidates as C

    c = C.Candidate.parse("F0  W2 MCx0.25 TS0 R0.1")
    assert (c.spec, c.fn, c.warmup, c.cap_for(8), c.cap_for(50), c.taylorseer, c.budget, c.threshold) == \
        ("F0 W2 MCx0.25 TS0 R0.1", 0, 2, 2, 12, 0, None, 0.1)
    assert C.Candidate.parse("E0.2").enable_kwargs(28)()["error_budget"] == 0.2
    with pytest.raises(ValueError, match="'X3' is not one of"):
        C.run(["wan"], ["F1 X3"], quick=True)
    specs = ["F1 W3 MC3 TS1 E0.15", "F0 W2 MCx0.25 TS2 R0.2"]
    models = {"wan": bench.load_bundled("wan", tiny=True)[0]}
    res = C.run(["wan"], specs, quick=True, models=models)
    assert [[r["setting"] for r in sc["rows"]] for sc in res["wan"]] == [specs] * 2
    text = C.markdown(res, specs, {"cpu": "test"}, 1.0)
    summary = [line for line in text.splitlines() if line.startswith("| F")][:2]
    assert len(summary) == 2 and all(re.search(r"\| \d/2", line) for line in summary)


def test_tiny_scaling_row():
    rows = run_scaling(hidden=32, heads=2, double=1, single=1, tokens=(16,), txt_tokens=4, steps=4, batch=1, repeats=1,
                       in_channels=8, log=lambda s: None)
    (row,) = rows
    assert row["tokens"] == 16 and row["uncached_s"] > 0
    assert 0.0 < row["fixed_fraction"] < 1.0  # counted, exact; the timings of a tiny model are noise
    assert row["fixed_ideal"] > 0 and row["fixed_measured"] > 0
    assert "| 16 |" in scaling_table(rows)


def test_summary_picks_the_same_rows_from_the_written_table(tmp_path):
    """Rows that tie at the printed precision (1.234x vs 1.231x, 39.996 dB) are picked the same way from memory
    and from the Markdown table read back: by the printed numbers, then PSNR, then name, never row order."""
    from benchmarks.bundled_bench import BundledResult, Row

    def row(name, family, speedup, psnr, acc=1.0):
        return Row(name=name, family=family, series=family, speedup=speedup, speedup_lo=speedup, speedup_hi=speedup,
                   time_s=1.0, best_of=speedup, compute=0.5, attn=0.5, cached_steps=[3, 3], psnr=psnr,
                   psnr_min=psnr, ssim=0.99, acc=acc, cache_bytes=1, deterministic=True, restored=True)

    rows = [row("uncached", "uncached", 1.0, math.inf),
            row("ours default: balanced (error budget 0.15): F1B0 W3 MC3 TS1", "ours", 1.5, 45.0),
            row("ours b", "ours", 2.231, 41.0), row("ours a", "ours", 2.234, 41.0),
            row("ours edge", "ours", 3.0, 39.996),  # prints as 40.00: counts as >= 40 dB both ways
            row("cache-dit x", "cache-dit", 2.004, 40.5), row("cache-dit y", "cache-dit", 1.996, 40.5)]
    res = BundledResult(steps=6, batch=1, rows=rows, baseline_times=[1.0], acc_ref=0.995, info={}, arch="flux",
                        seeds=(0, 1))
    path = tmp_path / "results_6.md"
    path.write_text(results_markdown(res, {}))
    back = result_from_markdown(str(path), {r.name: r.series for r in rows})
    s, s_back = summary(res), summary(back)
    assert s["ours_best"].name == s_back["ours_best"].name == "ours edge"
    assert s["best_peer"].name == s_back["best_peer"].name == "cache-dit y"  # 2.00x both: 'y' > 'x' by name
    res.rows = [r for r in rows if r.name != "ours edge"]
    path.write_text(results_markdown(res, {}))
    back = result_from_markdown(str(path), {r.name: r.series for r in rows})
    assert summary(res)["ours_best"].name == summary(back)["ours_best"].name == "ours b"  # 2.23x tie: 'b' > 'a'


def test_the_peers_run_on_the_heldout_sd3_layout():
    """cache-dit knows SD3 only through its pipeline, and its encoder calibrator asserts on SD3's
    context-pre-only last block: the harness hands it its own SD3 BlockAdapter with the encoder
    calibrator off, so the tuned TaylorSeer rows run (and reuse) on the held-out model. diffusers
    0.42's SD3Transformer2DModel lacks CacheMixin: its caches go on through diffusers.hooks' apply_*."""
    import torch

    from benchmarks import methods as M
    from benchmarks.common import SampleHooks
    from cachedit.bundled import digits as D

    model, ref = _cache_dit_reuses_and_restores("sd3")
    t = model.transformer
    # diffusers' attention-level TaylorSeer (its First Block Cache subtracts SD3's missing text
    # output at the last block and fails: recorded as a failed row; MagCache runs)
    taylor = M.diffusers_taylorseer(2, before=1)
    hooks = SampleHooks(diffusers_context=True)
    taylor.enable(t, 8, hooks)
    try:
        taylor.before_run(t)
        from benchmarks.common import bundled_images, bundled_inputs, euler

        inp = bundled_inputs(model, [1, 2], steps=8)
        out = bundled_images(euler(t, inp, hooks), "sd3")
        assert not torch.equal(out, ref) and torch.isfinite(out).all()  # every other step forecast
    finally:
        taylor.disable(t)
    assert torch.equal(D.generate(model, [1, 2], num_steps=8, seed=0), ref)


@pytest.mark.parametrize("arch", ["ltx", "hunyuan", "hidream"])
def test_cache_dit_runs_on_the_heldout_layouts_through_its_own_adapters(arch):
    """cache-dit knows LTX-Video, HunyuanVideo and HiDream only through their pipelines: the harness
    hands it the BlockAdapter its own adapter builds (LTX: Pattern_2, no forward-pattern check, no
    encoder calibrator: the blocks return no text stream; HunyuanVideo: both lists Pattern_0; HiDream:
    Pattern_0 and Pattern_3 through cache-dit's copy of the model's forward), and its TaylorSeer rows
    reuse there; disabled, the model is untouched."""
    _cache_dit_reuses_and_restores(arch)


def _cache_dit_reuses_and_restores(arch: str):
    """cache-dit F1B0 TaylorSeer 2 with a threshold no step exceeds (random weights: the point is that
    reused steps run) on the tiny `arch` model: it reuses, its images differ and are finite, and
    disabled the model gives the uncached images again. Returns (model, uncached images)."""
    import torch

    from benchmarks import methods as M
    from benchmarks.common import SampleHooks
    from cachedit.bundled import digits as D

    model, _ = bench.load_bundled(arch, tiny=True)
    t = model.transformer
    assert M.arch_of(t) == arch
    ref = D.generate(model, [1, 2], num_steps=8, seed=0)
    method = M.cache_dit_method("cache-dit F1B0 R100 W1 MC4 TS2", "cache-dit", threshold=100.0, warmup=1, mc=4, order=2)
    method.enable(t, 8, SampleHooks())
    try:
        method.before_run(t)
        out = D.generate(model, [1, 2], num_steps=8, seed=0)
        assert method.report(t)["cached_steps"] > 0 and out.shape == ref.shape and torch.isfinite(out).all()
        assert not torch.equal(out, ref)
    finally:
        method.disable(t)
    assert torch.equal(D.generate(model, [1, 2], num_steps=8, seed=0), ref)
    return model, ref


@pytest.mark.parametrize("arch", ["flux", "wan", "qwen"])
def test_seacache_reuses_on_the_bundled_layouts(arch):
    """diffusers 0.42's SeaCache builds its spectral indicator itself only for Wan text-to-video; the
    image layouts get the harness's view of their latents (`_sea_raw_vision`). On each layout a budget
    no step exceeds must reuse (cap 2 in a row), and disabling must give back the uncached images."""
    import torch

    from benchmarks import methods as M
    from benchmarks.common import SampleHooks, bundled_inputs, euler

    model, _ = bench.load_bundled(arch, tiny=True)
    t = model.transformer
    inp = bundled_inputs(model, [1, 2], steps=8)
    ref = euler(t, inp)
    method = M.diffusers_seacache(100.0, 2)
    hooks = SampleHooks(diffusers_context=True)
    method.enable(t, 8, hooks)
    try:
        method.before_run(t)
        out = euler(t, inp, hooks)
        assert not torch.equal(out, ref) and torch.isfinite(out).all()
    finally:
        method.disable(t)
    assert torch.equal(euler(t, inp), ref)


def test_seacache_view_of_the_latents_per_layout():
    """One [C, T=1, H, W] tensor per batch row, whatever the layout hands the transformer: packed
    tokens (Flux, Qwen-Image) are unpacked into the image, SD3's [B, C, H, W] gets its frame axis."""
    import torch

    from benchmarks import methods as M
    from cachedit.bundled.archs import pack_images

    images = torch.randn(3, 16, 16, 16)
    packed = M._sea_raw_vision(None, (), {"hidden_states": pack_images(images)})
    assert len(packed) == 3 and all(torch.equal(p, i.unsqueeze(1)) for p, i in zip(packed, images))
    plain = M._sea_raw_vision(None, (images,), {})
    assert [p.shape for p in plain] == [torch.Size([16, 1, 16, 16])] * 3
    assert M._sea_raw_vision(None, (), {"hidden_states": None}) is None


def _summary_row(name, family, speedup, psnr, compute, series=None):
    from benchmarks.bundled_bench import Row

    return Row(name=name, family=family, series=series or family, speedup=speedup, speedup_lo=speedup,
               speedup_hi=speedup, time_s=1.0, best_of=speedup, compute=compute, attn=compute, cached_steps=[3],
               psnr=psnr, psnr_min=psnr, ssim=0.99, acc=1.0, cache_bytes=1, deterministic=True, restored=True)


def test_head_to_head_times_each_familys_least_compute_rows_and_its_fastest():
    """The contenders of a table: our default; per family the rows at >= 40 dB with the least block
    compute (twins of one schedule, best PSNR first, at most 3) and the fastest; a peer family far
    behind the best peer (< 75% of its speed) and rows below 40 dB are left out."""
    from benchmarks.bundled_bench import BundledResult
    from benchmarks.head_to_head import contenders

    r = _summary_row
    rows = [r("uncached", "uncached", 1.0, math.inf, 1.0),
            r("ours default: balanced", "ours", 3.0, 43.0, 0.33),
            r("ours a", "ours", 3.3, 42.0, 0.286), r("ours b", "ours", 3.8, 42.5, 0.286),
            r("ours fast", "ours", 3.9, 40.5, 0.30), r("ours too lossy", "ours", 4.5, 38.0, 0.2),
            r("cache-dit w1", "cache-dit", 3.1, 40.8, 0.313), r("cache-dit w2", "cache-dit", 3.14, 40.8, 0.313),
            r("cache-dit r0.2", "cache-dit", 1.8, 44.0, 0.57),
            r("diffusers SeaCache R1.2", "diffusers", 2.7, 42.3, 0.321, "diffusers SeaCache"),
            r("diffusers SeaCache R0.25", "diffusers", 2.0, 45.0, 0.46, "diffusers SeaCache"),
            r("diffusers FBC R0.15", "diffusers", 1.7, 42.9, 0.56, "diffusers FBC")]
    res = BundledResult(steps=28, batch=8, rows=rows, baseline_times=[1.0], acc_ref=1.0, info={}, arch="flux",
                        seeds=(0, 1, 2))
    assert contenders(res) == ["ours default: balanced", "ours b", "ours a", "ours fast", "cache-dit w1",
                               "cache-dit w2", "diffusers SeaCache R1.2"]
    res.rows = [x for x in rows if x.family in ("uncached", "ours") or x.psnr < 40]
    with pytest.raises(ValueError, match="no peer row"):
        contenders(res)


@pytest.mark.parametrize("table", ["results_28.md", "results_wan_28.md", "results_qwen_28.md"])
def test_head_to_head_rebuilds_every_contender_of_the_committed_tables(table):
    from benchmarks.head_to_head import _methods, contenders

    res = result_from_markdown(str(bench.RESULTS_DIR) + "/" + table, R.series_names())
    names = contenders(res)
    assert names[0].startswith("ours default") and any(n.startswith("cache-dit") for n in names)
    assert [m.name for m in _methods(names)][1:] == names[1:]  # the default row becomes today's default


def test_head_to_head_takes_an_older_tables_preset_rows_as_todays():
    """A table written before a preset's run rules changed names its preset rows by the rules then;
    head to head times today's preset in their place (as it does for the default row)."""
    from benchmarks import methods as M
    from benchmarks.head_to_head import _methods

    old_fast = "ours quality='fast' (error budget 0.2; 20+ steps: TS2 at 0.22, 50+: MC5)"
    rebuilt = _methods(["ours default: balanced: F0B0 W2 MC4 TS1, error budget 0.15", old_fast])
    assert rebuilt[0].name.startswith("ours default") and rebuilt[0].name != "ours default: balanced: F0B0 W2 MC4 TS1"
    assert rebuilt[1].name == f"ours quality='fast' ({M.preset_tag('fast')})" != old_fast
    with pytest.raises(ValueError, match="not rebuildable"):
        _methods(["ours adaptive F0B0 R0.99 W99 MC99 TS9"])


def test_head_to_head_validated_summary_leaves_out_rows_that_fail_on_held_out_seeds():
    """A pick at >= 40 dB on the table's seeds that falls under 40 dB on the held-out seeds (seed luck)
    is left out of the validated summary, for ours and for a peer alike; the next row of its family counts."""
    from benchmarks.bundled_bench import BundledResult
    from benchmarks.head_to_head import report, validated

    def result(rows, seeds):
        return BundledResult(steps=28, batch=8, rows=[_summary_row("uncached", "uncached", 1.0, math.inf, 1.0)] + rows,
                             baseline_times=[1.0], acc_ref=1.0, info={}, arch="flux", seeds=seeds)

    picked = result([_summary_row("ours lucky", "ours", 3.8, 40.9, 0.25), _summary_row("ours steady", "ours", 3.3, 43.0, 0.286),
                     _summary_row("cache-dit lucky", "cache-dit", 3.3, 40.3, 0.31),
                     _summary_row("cache-dit steady", "cache-dit", 2.8, 42.0, 0.36)], (0, 1, 2))
    heldout = result([_summary_row("ours lucky", "ours", 1.0, 38.2, 0.25), _summary_row("ours steady", "ours", 1.0, 40.5, 0.286),
                      _summary_row("cache-dit lucky", "cache-dit", 1.0, 39.2, 0.31),
                      _summary_row("cache-dit steady", "cache-dit", 1.0, 41.0, 0.36)], (3, 4))
    as_picked, checked = summary(picked), summary(validated(picked, heldout))
    assert (as_picked["ours_best"].name, as_picked["best_peer"].name) == ("ours lucky", "cache-dit lucky")
    assert (checked["ours_best"].name, checked["best_peer"].name) == ("ours steady", "cache-dit steady")
    assert checked["ours_vs_peer"] == pytest.approx(3.3 / 2.8)
    assert validated(picked, None) is None
    text = report(picked, "t.md", 1, {}, 1.0, heldout)
    assert "| ours lucky | ours | 3.80x |" in text and "| 38.20 | 38.20 | 1.00 |" in text
    assert "held-out seeds 3, 4 too" in text and "our best: ours steady: 3.30x" in text


def test_stride_masks_compute_the_same_steps_in_ours_and_cache_dit():
    """The stride-mask rows: warmup steps, one after the first reused window, then one every `stride`;
    ours computes exactly those steps (no probe: Fn 0) and cache-dit gets the same mask."""
    from benchmarks import methods as M

    assert [i for i, m in enumerate(M.stride_mask(28, 2, 3, 5)) if m] == [0, 1, 5, 10, 15, 20, 25]
    assert [i for i, m in enumerate(M.stride_mask(10, 1, 2, 4)) if m] == [0, 3, 7]
    grid = R.tuning_grid("standard")
    ours = {m.name for m in grid["ours tuned"]}
    cache_dit = {m.name for m in grid["cache-dit tuned"]}
    assert "ours stride mask W2 F3 S5 TS2" in ours and "cache-dit F1B0 stride mask W2 F3 S5 TS2" in cache_dit
    assert [m.name for m in R.like_for_like(["cache-dit F1B0 stride mask W2 F3 S5 TS2"], grid)] == \
        ["ours stride mask W2 F3 S5 TS2"]
    from benchmarks.bundled_bench import run_bundled

    model, _ = bench.load_bundled("flux", tiny=True)
    methods = [M.ours_stride(1, 2, 4), M.cache_dit_method("cache-dit stride", "cache-dit tuned", warmup=1, order=2,
                                                           stride=(1, 2, 4))]
    res = run_bundled(model, methods, 10, batch=1, seeds=(0,), timing=False, check_generate=False, log=lambda s: None)
    assert [r.cached_steps for r in res.rows] == [[0], [7], [7]]  # uncached, ours, cache-dit: steps 0, 3, 7 computed
    assert res.rows[1].compute == pytest.approx(3 / 10)


def test_hand_picked_mask_rows_compute_exactly_their_steps():
    """`ours mask steps 0,1,5,... TSk` / `cache-dit F1B0 mask steps ...` name static masks of chosen steps
    (a mask searched per model): both compute exactly those steps; other names are not such rows; a
    mask must name rising steps inside the run."""
    from benchmarks import methods as M
    from benchmarks.bundled_bench import run_bundled

    assert M.computed_steps_mask(6, [0, 1, 4]) == [1, 1, 0, 0, 1, 0]
    with pytest.raises(ValueError, match=r"computed=\[0, 6\] must be step indices in 0..5"):
        M.computed_steps_mask(6, [0, 6])
    with pytest.raises(ValueError, match="distinct and rising"):
        M.steps_mask_row("ours mask steps 0,4,2 TS2")
    assert M.steps_mask_row("ours stride mask W2 F3 S5 TS2") is None
    assert M.steps_mask_row("ours mask steps 0,1 TS") is None
    ours, peer = M.steps_mask_row("ours mask steps 0,1,6 TS2"), M.steps_mask_row("cache-dit F1B0 mask steps 0,1,6 TS2")
    assert (ours.name, ours.family, ours.params["taylorseer_order"]) == ("ours mask steps 0,1,6 TS2", "ours", 2)
    assert (peer.name, peer.family) == ("cache-dit F1B0 mask steps 0,1,6 TS2", "cache-dit")
    model, _ = bench.load_bundled("flux", tiny=True)
    res = run_bundled(model, [ours, peer], 10, batch=1, seeds=(0,), timing=False, check_generate=False, log=lambda s: None)
    assert [r.cached_steps for r in res.rows] == [[0], [7], [7]]  # steps 0, 1, 6 computed, 7 reused
    assert res.rows[1].compute == pytest.approx(3 / 10)


def test_head_to_head_end_to_end_on_a_short_table(tmp_path):
    """A 4-step, batch-1 table of three real row names: the head-to-head times exactly those, writes its
    table and summary, and refuses a table of another model."""
    from benchmarks.bundled_bench import BundledResult
    from benchmarks.head_to_head import main

    default = next(m.name for m in R.quick_rows() if m.name.startswith("ours default"))
    names = [default, "ours adaptive F0B0 R0.16 W2 MC4 TS1", "cache-dit F1B0 R0.4 W2 MC4 TS2"]
    rows = [_summary_row("uncached", "uncached", 1.0, math.inf, 1.0)] + [
        _summary_row(n, "cache-dit" if n.startswith("cache-dit") else "ours", 2.0, 41.0, 0.5) for n in names]
    table = tmp_path / "results_4.md"
    table.write_text(results_markdown(BundledResult(steps=4, batch=1, rows=rows, baseline_times=[1.0], acc_ref=1.0,
                                                    info={}, arch="flux", seeds=(0,)), {}))
    assert main(["--arch", "flux", "--steps", "4", "--table", str(table), "--rounds", "1", "--heldout-seeds", "1",
                 "--out", str(tmp_path)]) == 0
    text = (tmp_path / "head_to_head_flux_4.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ") and " | " in line]
    timed = [line.split(" | ")[0][2:] for line in lines][1:]
    assert timed == ["uncached"] + [m.name for m in R.quick_rows() if m.name.startswith("ours default")] + names[1:]
    assert "held-out PSNR dB" in lines[0] and all(len(line.split(" | ")) == 13 for line in lines)
    assert "### Summary (flux, 4 steps)" in text and "held-out seeds 1 too" in text
    with pytest.raises(SystemExit):
        main(["--arch", "wan", "--steps", "4", "--table", str(table), "--rounds", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):  # a row no table holds and no mask name parses
        main(["--arch", "flux", "--steps", "4", "--table", str(table), "--extra", "ours magic", "--out", str(tmp_path)])


def test_head_to_head_times_extra_mask_rows_next_to_the_table(tmp_path):
    """--extra adds hand-picked static masks (ours and cache-dit alike) to the table's contenders,
    named in the header, timed and validated with them."""
    from benchmarks.bundled_bench import BundledResult
    from benchmarks.head_to_head import main

    names = ["ours adaptive F0B0 R0.16 W2 MC4 TS1", "cache-dit F1B0 R0.4 W2 MC4 TS2"]
    rows = [_summary_row("uncached", "uncached", 1.0, math.inf, 1.0)] + [
        _summary_row(n, "cache-dit" if n.startswith("cache-dit") else "ours", 2.0, 41.0, 0.5) for n in names]
    table = tmp_path / "results_4.md"
    table.write_text(results_markdown(BundledResult(steps=4, batch=1, rows=rows, baseline_times=[1.0], acc_ref=1.0,
                                                    info={}, arch="flux", seeds=(0,)), {}))
    extra = ["ours mask steps 0,2 TS1", "cache-dit F1B0 mask steps 0,2 TS1"]
    assert main(["--arch", "flux", "--steps", "4", "--table", str(table), "--rounds", "1", "--heldout-seeds", "0",
                 "--extra", extra[0], "--extra", extra[1], "--out", str(tmp_path)]) == 0
    text = (tmp_path / "head_to_head_flux_4.md").read_text()
    assert "plus rows not in the table (--extra): `ours mask steps 0,2 TS1`; `cache-dit F1B0 mask steps 0,2 TS1`" in text
    timed = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert timed[extra[0]][1] == "ours" and timed[extra[1]][1] == "cache-dit"
    assert timed[extra[0]][6] == "50.0%"  # 2 of 4 steps, no probe block on the reused ones


def test_diffusers_models_table_rows(tmp_path):
    """benchmarks.diffusers_models on a stand-in for diffusers' test folder: a config for a model
    whose block output CacheDit cannot rebuild, one for LTX-2 (video + audio streams), one broken."""
    from benchmarks import diffusers_models

    package = tmp_path / "dtests"
    folder = package / "models" / "transformers"
    folder.mkdir(parents=True)
    for d in (package, package / "models", folder):
        (d / "__init__.py").write_text("")
    (folder / "test_models_standin.py").write_text('''
import torch, diffusers
from test_extra_streams import AudioVideoDiT

class ExtraOutputTesterConfig:
    model_class = AudioVideoDiT
    def get_init_dict(self):
        return {"extra_output": True}
    def get_dummy_inputs(self):
        return {"hidden_states": torch.ones(1, 6, 16), "audio_hidden_states": torch.ones(1, 3, 8),
                "encoder_hidden_states": torch.ones(1, 4, 16), "timestep": torch.tensor([500.0])}

class LTX2TesterConfig:
    model_class = diffusers.LTX2VideoTransformer3DModel
    main_input_name = "hidden_states"
    def get_init_dict(self):
        return dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
                    attention_head_dim=8, cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4,
                    audio_num_attention_heads=2, audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2,
                    caption_channels=16, rope_double_precision=False)
    def get_dummy_inputs(self):
        g = torch.Generator().manual_seed(0)
        return {"hidden_states": torch.randn(1, 8, 4, generator=g), "audio_hidden_states": torch.randn(1, 9, 4, generator=g),
                "encoder_hidden_states": torch.randn(1, 16, 16, generator=g),
                "audio_encoder_hidden_states": torch.randn(1, 16, 16, generator=g),
                "timestep": torch.tensor([700.0]), "num_frames": 2, "height": 2, "width": 2, "audio_num_frames": 9}

class BrokenTesterConfig:
    model_class = diffusers.LTX2VideoTransformer3DModel
    def get_init_dict(self):
        raise RuntimeError("abstract")
''')
    out = tmp_path / "table.md"
    diffusers_models.main(["--tests", str(package), "--steps", "6", "--out", str(out)])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == [
        "| AudioVideoDiT | transformer_blocks x4 | bit-identical | 0 of 6 | 0 of 6 | bit-identical |  |",
        "| LTX2VideoTransformer3DModel | transformer_blocks x2 | bit-identical | 4 of 6 | 2 of 6 | bit-identical |  |",
    ]


@pytest.mark.parametrize("arch", sorted(A.ARCHS))
def test_compute_counter_sees_every_block_of_every_bundled_layout(arch):
    """The block-compute column of every table: one uncached call runs each attention module of each
    block once (HiDream's blocks sit in double_stream_blocks / single_stream_blocks), and a second
    call counts the same MACs again (no hook lost, none doubled)."""
    from benchmarks.counters import ComputeCounter, _attention_modules
    from cachedit.bundled import digits as D

    model, _ = bench.load_bundled(arch, random_weights=True)
    counter = ComputeCounter(model.transformer)
    try:
        assert any(b is A.get_arch(arch).first_block(model.transformer) for b in counter.blocks)
        D.generate(model, [1, 2], num_steps=1, seed=0, cfg_mode="none")
        first = counter.macs
        assert first > 0 and counter.attn == [len(_attention_modules(b)) for b in counter.blocks]
        assert min(counter.attn) >= 1
        D.generate(model, [1, 2], num_steps=1, seed=0, cfg_mode="none")
        assert counter.macs == 2 * first
    finally:
        counter.close()


def test_readme_quotes_a_head_to_head_summary_and_its_validated_one_apart(tmp_path):
    """The README's head-to-head lines: the summary's items, then the validated section's under one
    'Validated' item (indented), not run together as one list."""
    from benchmarks.readme import _head_to_head_summaries

    (tmp_path / "head_to_head_flux_28.md").write_text(
        "# Head to head\n\nin one group: 16 rounds, rows rotated\n\n| a | b |\n\n### Summary (flux, 28 steps)\n"
        "- best cache-dit: X\n- our best: lucky 1.3x\n\n### Validated: the rows at >= 40 dB on the held-out seeds 3 too\n"
        "- best cache-dit: X\n- our best: steady 1.1x\n")
    lines = _head_to_head_summaries(str(tmp_path))
    assert lines[1].startswith("**Flux layout (12 blocks), 28 steps, 16 rounds**")
    assert lines[3:] == ["- best cache-dit: X", "- our best: lucky 1.3x",
                         "- Validated: among the rows at >= 40 dB on the held-out seeds 3 too:",
                         "  - best cache-dit: X", "  - our best: steady 1.1x"]


def test_mask_search_moves_and_climbs(capsys):
    """benchmarks.mask_search: single-step moves keep the first two steps and stay distinct, rising and in
    the run; the climb stops when no move beats the best so far, and the winner is checked on held-out
    seeds (a tiny model, 8 steps)."""
    from benchmarks import mask_search as S

    assert S.moves((0, 1, 4, 7), 8) == [(0, 1, 3, 7), (0, 1, 5, 7), (0, 1, 4, 6)]
    assert S.moves((0, 1, 2), 3) == []
    scores = {(0, 1, 4, 6): 30.0, (0, 1, 3, 6): 31.0, (0, 1, 5, 6): 29.0, (0, 1, 4, 5): 29.5, (0, 1, 4, 7): 28.0,
              (0, 1, 2, 6): 30.5, (0, 1, 3, 5): 30.9, (0, 1, 3, 7): 30.2}
    evaluated = []

    def fake_quality(model, names, steps, seeds, batch):
        evaluated.append(list(names))
        out = {}
        for n in names:
            mask = tuple(int(i) for i in n.split("mask steps ")[1].split(" ")[0].split(","))
            out[n] = scores[mask]
        return out

    real = S.quality
    S.quality = fake_quality
    try:
        mask, order, db, seen = S.search(None, (0, 1, 4, 6), [2], 8, (0,), 1, log=lambda s: None)
    finally:
        S.quality = real
    assert (mask, order, db) == ((0, 1, 3, 6), 2, 31.0)  # its moves (2/4 for 3, 5 for 6) are all worse
    assert len(evaluated) == 3 and evaluated[0] == ["ours mask steps 0,1,4,6 TS2"]
    assert S.main(["--arch", "flux", "--tiny", "--steps", "6", "--start", "0,1,4", "--orders", "1",
                   "--seeds", "1", "--heldout-seeds", "1", "--batch", "1"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| mask | seeds 0-0 PSNR dB | held-out seeds PSNR dB |")
    assert "| ours mask steps 0,1,4 TS1 |" in table
    with pytest.raises(SystemExit):
        S.main(["--arch", "flux", "--tiny", "--steps", "6", "--start", "0,1,6"])
