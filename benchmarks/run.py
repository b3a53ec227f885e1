"""CacheDit vs cache-dit vs diffusers' built-in caches, side by side, in one process.

    python -m benchmarks.run                       # 28 and 50 steps + CPU scaling (about 15 minutes)
    python -m benchmarks.run --steps 28 --repeats 5
    python -m benchmarks.run --quick               # smoke run, < 2 minutes
    python -m benchmarks.run --no-scaling --sweep small

Bundled model (cachedit/bundled/digits.py): labels 0..9 (repeated to --batch), fixed seed, CFG 3
with cond/uncond batched, Euler. Rows: uncached; ours (fixed / dynamic / adaptive, an adaptive
threshold sweep with and without TaylorSeer, warmup and max_continuous_cached_steps variations);
the real cache-dit package (F1B0 at several thresholds with and without its TaylorSeer
calibrator, F2B0, its steps masks); diffusers 0.42's hooks (FirstBlockCache, TaylorSeerCache,
MagCache with its own calibration, FasterCache, PyramidAttentionBroadcast). Then the CPU scaling
study (benchmarks/scaling.py). Writes benchmarks/results/{results_<N>.md, pareto.png,
scaling_cpu.md, defaults.md}.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from . import methods as M
from .bundled_bench import BundledResult, Row, pick_threads, run_bundled
from .common import machine_block, machine_info
from .report import QUALITY_DB, ok_quality, pareto_chart, results_markdown
from .scaling import run_scaling, scaling_table

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ----------------------------------------------------------------------------------------------
# Method lists
# ----------------------------------------------------------------------------------------------
def ours_rows(sweep: str) -> List[M.Method]:
    rows = [
        M.ours("ours default (adaptive)", "ours default"),
        M.ours("ours fixed skip2", "ours fixed/dynamic", strategy="fixed", skip_interval=2),
        M.ours("ours fixed skip3", "ours fixed/dynamic", strategy="fixed", skip_interval=3),
        M.ours("ours dynamic skip2", "ours fixed/dynamic", strategy="dynamic", skip_interval=2),
        M.ours("ours dynamic skip3", "ours fixed/dynamic", strategy="dynamic", skip_interval=3),
    ]
    var = "ours adaptive+TaylorSeer (W/MC/Fn/Bn var.)"
    if sweep == "standard":
        rows = [r for r in rows if r.name not in ("ours fixed skip3", "ours dynamic skip3")]
        plain, ts1, ts2 = (0.24,), (0.12, 0.16, 0.3, 0.4), ()  # R0.24 W3 MC3 TS1 is the default row
        variations = [(0.3, 2, 2, 1, 0), (0.4, 3, 4, 1, 0)]
    else:
        plain = (0.08, 0.12, 0.16, 0.2, 0.24, 0.3, 0.4)
        ts1 = (0.08, 0.12, 0.16, 0.2, 0.24, 0.3, 0.4, 0.5)
        ts2 = (0.24,)
        # (threshold, warmup, max_continuous_cached_steps, Fn, Bn), TaylorSeer order 1
        variations = [(0.3, 2, 2, 1, 0), (0.3, 4, 2, 1, 0), (0.4, 3, 4, 1, 0), (0.3, 8, 3, 1, 0), (0.3, 3, -1, 1, 0),
                      (0.3, 3, 3, 2, 0), (0.3, 3, 3, 1, 1), (0.5, 3, 5, 1, 0), (0.5, 3, -1, 1, 0)]
    rows += [M.ours_adaptive(t, order=0) for t in plain]
    rows += [M.ours_adaptive(t, order=1) for t in ts1]
    rows += [M.ours_adaptive(t, order=2) for t in ts2]
    rows += [M.ours_adaptive(t, warmup=w, mc=mc, fn=fn, bn=bn, order=1, series=var) for t, w, mc, fn, bn in variations]
    # The same knobs as the tuned cache-dit rows below (same decisions: a like-for-like check of the reuse itself)
    rows += [M.ours_adaptive(t, warmup=w, mc=mc, order=o, series="ours adaptive+TaylorSeer o2") for t, w, mc, o in TUNED_F1]
    # Fn=0: the decision reads block 0's input, so a reused step runs no block at all (cache-dit requires Fn >= 1)
    rows += [M.ours_adaptive(t, warmup=w, mc=mc, fn=0, order=o, series="ours F0 probe+TaylorSeer") for t, w, mc, o in F0_ROWS]
    return rows


# (threshold, warmup, max_continuous_cached_steps, TaylorSeer order): cache-dit's fastest settings at >= 40 dB found by
# a quality-only grid over R {0.4, 0.6} x W {1, 2, 3} x MC {3, 4, 5, 6, 8} x order {1, 2} (28 steps: W2 MC4 o2, 31% of
# the block compute; 50 steps: W1 MC8 o2, 23%), plus W3 MC3 o2 and W2 MC6 o2.
TUNED_F1 = ((0.4, 2, 4, 2), (0.4, 1, 8, 2), (0.4, 3, 3, 2), (0.4, 2, 6, 2))
# Our Fn=0 rows (threshold, warmup, max_continuous_cached_steps, TaylorSeer order).
F0_ROWS = ((0.16, 2, 4, 1), (0.2, 1, 5, 1), (0.16, 2, 6, 1), (0.16, 1, 8, 1), (0.4, 3, 4, 2), (0.14, 2, 4, 2))


def cache_dit_rows(sweep: str) -> List[M.Method]:
    if sweep == "standard":
        f8, f1, f1ts, same, masks = (), (0.12, 0.2, 0.3), (0.2, 0.3), ((0.4, 3, 3),), ("fast",)
    else:
        f8 = (0.2, 0.4)
        f1 = (0.08, 0.12, 0.16, 0.2, 0.24, 0.3, 0.4)
        f1ts = (0.16, 0.2, 0.24, 0.3)
        same = ((0.24, 3, 3), (0.4, 3, 3))  # cache-dit with our warmup/cap knobs: the same rule, fair comparison
        masks = ("slow", "medium", "fast", "ultra")
    rows = [M.cache_dit_method(f"cache-dit F8B0 R{t:g}", "cache-dit F8B0", fn=8, threshold=t) for t in f8]
    rows += [M.cache_dit_method(f"cache-dit F1B0 R{t:g}", "cache-dit F1B0", threshold=t) for t in f1]
    rows += [M.cache_dit_method(f"cache-dit F1B0 R{t:g} TS1", "cache-dit F1B0+TaylorSeer", threshold=t, order=1) for t in f1ts]
    rows += [M.cache_dit_method(f"cache-dit F1B0 R{t:g} W{w} MC{mc} TS1", "cache-dit F1B0+TaylorSeer, our W/MC knobs",
                                threshold=t, warmup=w, mc=mc, order=1) for t, w, mc in same]
    rows += [M.cache_dit_method(f"cache-dit F1B0 R{t:g} W{w} MC{mc} TS{o}", "cache-dit F1B0+TaylorSeer, our W/MC knobs",
                                threshold=t, warmup=w, mc=mc, order=o) for t, w, mc, o in TUNED_F1]
    rows += [M.cache_dit_method(f"cache-dit mask {p} (static)", "cache-dit masks", threshold=0.08, mask_policy=p,
                                mask_static=True) for p in masks]
    return rows


def diffusers_rows(sweep: str) -> List[M.Method]:
    if sweep == "standard":
        return [M.diffusers_fbc(0.1), M.diffusers_fbc(0.2), M.diffusers_taylorseer(3), M.diffusers_magcache(0.06),
                M.diffusers_magcache(0.24), M.diffusers_pab(2)]
    return ([M.diffusers_fbc(t) for t in (0.05, 0.1, 0.16, 0.2, 0.3)]
            + [M.diffusers_taylorseer(2), M.diffusers_taylorseer(3), M.diffusers_taylorseer(5)]
            + [M.diffusers_magcache(t) for t in (0.06, 0.12, 0.24)]
            + [M.diffusers_fastercache(2), M.diffusers_pab(2)])


def quick_rows() -> List[M.Method]:
    return [M.ours("ours default (adaptive)", "ours default"),
            M.ours("ours fixed skip2", "ours fixed/dynamic", strategy="fixed", skip_interval=2),
            M.ours_adaptive(0.3, order=0),
            M.cache_dit_method("cache-dit F1B0 R0.2", "cache-dit F1B0", threshold=0.2),
            M.diffusers_fbc(0.2),
            M.diffusers_taylorseer(2)]


def all_rows(sweep: str) -> List[M.Method]:
    return ours_rows(sweep) + cache_dit_rows(sweep) + diffusers_rows(sweep)


# ----------------------------------------------------------------------------------------------
# Defaults from the sweep
# ----------------------------------------------------------------------------------------------
def recommend_defaults(results: Sequence[BundledResult], db: float = QUALITY_DB) -> str:
    """The ours-adaptive setting with the best worst-case wall speedup over all step counts among
    those at >= db PSNR with unchanged digit accuracy at every step count."""
    if len(results) < 1:
        return ""
    by_name: Dict[str, List[Row]] = {}
    for res in results:
        for r in res.rows:
            if r.family == "ours":
                by_name.setdefault(r.name, []).append(r)
    ok = []
    for name, rs in by_name.items():
        if len(rs) != len(results):
            continue
        if all(ok_quality(r, res.acc_ref, db) for r, res in zip(rs, results)):
            ok.append((min(r.speedup for r in rs), name, rs))
    ok.sort(reverse=True)
    steps = ", ".join(str(r.steps) for r in results)
    lines = [f"# Recommended adaptive defaults (from the sweep at {steps} steps)", "",
             f"Candidates: every `ours` row with PSNR >= {db:g} dB and digit accuracy >= uncached at ALL step counts, "
             "ranked by the worst of their wall speedups.", "",
             "| rank | setting | " + " | ".join(f"{r.steps} steps: speedup / PSNR / compute" for r in results) + " |",
             "|---|---|" + "---|" * len(results)]
    for i, (worst, name, rs) in enumerate(ok[:12]):
        cells = [f"{r.speedup:.2f}x / {r.psnr:.1f} dB / {100 * r.compute:.0f}%" for r in rs]
        lines.append(f"| {i + 1} | {name} | " + " | ".join(cells) + " |")
    if not ok:
        lines.append("| - | none qualifies | " + " | ".join("" for _ in results) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="CacheDit vs cache-dit vs diffusers caches (bundled model + scaling)")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="step counts (default 28 50; --quick: 10)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timing rounds per row (default 2 for the standard sweep, 3 for --sweep full; --quick: 1)")
    p.add_argument("--batch", type=int, default=10, help="images per generation (labels 0..9 repeated); CFG doubles it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--threads", default="auto", help="torch threads: 'auto' times 1 vs 2 and keeps the faster for all rows")
    p.add_argument("--sweep", choices=("standard", "full"), default="standard",
                   help="per-family sweeps: standard (25 rows per step count, ~15 min in all on an idle machine) or "
                        "full (64 rows: every threshold, TaylorSeer order, warmup/cap variation; ~55 min)")
    p.add_argument("--per-baseline", type=int, default=3, help="cached runs between two uncached baseline runs")
    p.add_argument("--scaling-tokens", type=int, nargs="+", default=None,
                   help="image tokens of the CPU scaling study (default 256 1024; 4096 adds several minutes)")
    p.add_argument("--quick", action="store_true", help="fast smoke run (few rows, 10 steps, 1 repeat, tiny scaling)")
    p.add_argument("--no-scaling", action="store_true", help="skip the compute-heavy CPU scaling study")
    p.add_argument("--no-bundled", action="store_true", help="only the scaling study")
    p.add_argument("--out", default=RESULTS_DIR, help="results directory")
    p.add_argument("--random-weights", action="store_true", help="use a random-weight stand-in for the bundled model")
    p.add_argument("--chart-only", action="store_true", help="redraw pareto.png from the results_<N>.md files in --out")
    return p.parse_args(argv)


def load_bundled(random_weights: bool = False, tiny: bool = False):
    """The bundled trained model, or a random-weight stand-in of the same architecture (from the
    bundled config when present) or, with `tiny`, a very small one (for the smoke test)."""
    import json

    from cachedit.bundled import digits as D

    if not (random_weights or tiny) and os.path.exists(D.WEIGHTS_PATH):
        return D.load_model(), "bundled trained weights"
    if os.path.exists(D.CONFIG_PATH) and not tiny:
        with open(D.CONFIG_PATH) as f:
            cfg = json.load(f)
    else:
        cfg = {"transformer": {"patch_size": 1, "in_channels": 4, "out_channels": 4, "num_layers": 2,
                               "num_single_layers": 4, "attention_head_dim": 48, "num_attention_heads": 4,
                               "joint_attention_dim": 192, "pooled_projection_dim": 192, "guidance_embeds": False,
                               "axes_dims_rope": [8, 20, 20]},
               "label_embedder": {"num_embeddings": 11, "num_tokens": 4, "joint_attention_dim": 192,
                                  "pooled_projection_dim": 192}}
    if tiny:
        cfg["transformer"].update(num_layers=1, num_single_layers=3, attention_head_dim=16, num_attention_heads=2,
                                  joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6])
        cfg["label_embedder"].update(joint_attention_dim=32, pooled_projection_dim=32)
    torch.manual_seed(0)
    model = D.build_model(cfg)
    for m in (model.transformer, model.label_embedder):
        m.eval()
        m.requires_grad_(False)
    return model, "random-weight stand-in" + (" (tiny)" if tiny else "")


def run(args: argparse.Namespace, model: Any = None, model_note: str = "", log: Callable[[str], None] = print,
        write: bool = True, group_size: int = 8) -> Dict[str, Any]:
    t_start = time.perf_counter()
    steps_list = args.steps or ([10] if args.quick else [28, 50])
    repeats = args.repeats or (1 if args.quick else (3 if args.sweep == "full" else 2))
    if model is None:
        model, model_note = load_bundled(args.random_weights)
    if args.threads == "auto":
        probe = pick_threads(model, log=log)
        threads, threads_note = probe["chosen"], "auto: " + ", ".join(f"{c} thread(s) {v:.3f} s" for c, v in probe["medians"].items())
    else:
        threads, threads_note = int(args.threads), "fixed by --threads"
        torch.set_num_threads(threads)
    info = machine_info(threads)
    info["threads choice"] = threads_note
    info["model"] = model_note
    os.makedirs(args.out, exist_ok=True)
    out: Dict[str, Any] = {"results": [], "scaling": None, "info": info}

    if not args.no_bundled:
        for steps in steps_list:
            methods = quick_rows() if args.quick else all_rows(args.sweep)
            # cache-dit's default (F8B0, R0.08); on a model with fewer than 8 blocks cache-dit itself refuses
            # to run, and the row records its error.
            methods.insert(0, M.cache_dit_method("cache-dit F8B0 R0.08 (its default)", "cache-dit F8B0", fn=8,
                                                 threshold=0.08))
            log(f"== bundled model, {steps} steps, {len(methods)} methods, {repeats} timing round(s) ==")
            t_step = time.perf_counter()
            res = run_bundled(model, methods, steps, batch=args.batch, guidance=args.guidance, seed=args.seed,
                              repeats=repeats, per_baseline=args.per_baseline, group_size=group_size, log=log)
            res.info["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
            res.info["elapsed_s"] = round(time.perf_counter() - t_step, 1)
            out["results"].append(res)
            if write:
                path = os.path.join(args.out, f"results_{steps}.md")
                with open(path, "w") as f:
                    f.write(results_markdown(res, info))
                log(f"wrote {path}")
        if write and out["results"]:
            pareto_chart(out["results"], os.path.join(args.out, "pareto.png"))
            if len(out["results"]) > 1 or args.quick:
                with open(os.path.join(args.out, "defaults.md"), "w") as f:
                    f.write(recommend_defaults(out["results"]))

    if not args.no_scaling:
        if args.quick:
            kw = dict(hidden=128, heads=2, double=1, single=2, tokens=tuple(args.scaling_tokens or (64, 256)), txt_tokens=16,
                      steps=4, batch=1, repeats=1, warmup=0)
        else:
            kw = dict(hidden=512, heads=8, double=2, single=6, tokens=tuple(args.scaling_tokens or (256, 1024)),
                      txt_tokens=64, steps=4, batch=1, repeats=3, warmup=0)
        log(f"== scaling (CPU): hidden {kw['hidden']}, {kw['double']}+{kw['single']} blocks, tokens {kw['tokens']} ==")
        rows = run_scaling(log=log, **kw)
        out["scaling"] = rows
        if write:
            text = (f"# Overhead and scaling on CPU: FluxTransformer2DModel hidden {kw['hidden']} ({kw['heads']} heads), "
                    f"{kw['double']} double + {kw['single']} single blocks, random weights, batch {kw['batch']}, no CFG, "
                    f"{kw['steps']} Euler steps, {kw['txt_tokens']} text tokens, median of {kw['repeats']} interleaved rounds\n\n"
                    f"Machine:\n{machine_block({**info, 'model': 'random weights (see the title)'})}\n\n{scaling_table(rows)}\n\n"
                    "never-reuse = ours adaptive with threshold 1e-9 and no warmup (probe + decision + residual "
                    f"bookkeeping every step, no reuse); fixed = ours strategy='fixed' skip_interval=2 warmup={kw['warmup']}, ideal = "
                    "T_uncached / (f * T_blocks + T_non-block) with f the counted block-MAC fraction and T_non-block "
                    "timed with every block replaced by an identity.\n")
            path = os.path.join(args.out, "scaling_cpu.md")
            with open(path, "w") as f:
                f.write(text)
            log(f"wrote {path}")
    if write and os.path.abspath(args.out) == os.path.abspath(RESULTS_DIR) and not args.quick:
        from .readme import update_readme

        update_readme(results_dir=args.out)
        log("README.md performance section regenerated from benchmarks/results/")
    out["elapsed_s"] = time.perf_counter() - t_start
    log(f"total {out['elapsed_s']:.0f} s")
    return out


def series_names() -> Dict[str, str]:
    """Row name -> chart series, for every row any sweep can produce."""
    names = {}
    for m in all_rows("full") + all_rows("standard") + quick_rows():
        names[m.name] = m.series
    names["cache-dit F8B0 R0.08 (its default)"] = "cache-dit F8B0"
    return names


def redraw_chart(out_dir: str) -> str:
    from .report import result_from_markdown

    series = series_names()
    paths = sorted((p for p in os.listdir(out_dir) if p.startswith("results_") and p.endswith(".md")),
                   key=lambda p: int(p[len("results_"):-3]))
    results = []
    for p in paths:
        res = result_from_markdown(os.path.join(out_dir, p), series)
        for r in res.rows:
            if r.name.startswith("ours default"):
                r.series = "ours default"
        results.append(res)
    path = os.path.join(out_dir, "pareto.png")
    pareto_chart(results, path)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.chart_only:
        print("wrote", redraw_chart(args.out))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())


_ = math
