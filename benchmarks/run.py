"""CacheDit vs cache-dit vs diffusers' built-in caches, side by side, in one process, per bundled model.

    python -m benchmarks.run                                  # every model, 28 and 50 steps, defaults table, scaling
    python -m benchmarks.run --arch wan --steps 28 --no-defaults --no-scaling
    python -m benchmarks.run --quick                          # smoke run, a few minutes

Per model (cachedit.bundled.digits: flux, wan, qwen) and step count: batched CFG 3, Euler; quality
pooled over --seeds seeds x --batch images (benchmarks/bundled_bench.py); a tuning stage (quality
only) picks each family's tuned settings, then the fixed rows plus the picks are timed
(benchmarks/rows.py). Writes benchmarks/results/results[_<arch>]_<steps>.md (Flux keeps the
unprefixed names), pareto[_<arch>].png, defaults.md (benchmarks/defaults.py) and scaling_cpu.md,
then regenerates the README's performance section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from cachedit.bundled.archs import HELDOUT_ARCHS  # trained after the defaults were settled: --arch sd3 / zimage / ltx / hunyuan / hidream

from . import rows as R
from .bundled_bench import BundledResult, pick_threads, run_bundled
from .chart import pareto_chart
from .common import machine_info
from .report import results_markdown

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ARCHS = ("flux", "wan", "qwen")


def result_name(arch: str, steps: int) -> str:
    return f"results_{steps}.md" if arch == "flux" else f"results_{arch}_{steps}.md"


def chart_name(arch: str) -> str:
    return "pareto.png" if arch == "flux" else f"pareto_{arch}.png"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="CacheDit vs cache-dit vs diffusers caches (bundled models + scaling)")
    p.add_argument("--arch", nargs="+", default=list(ARCHS), choices=ARCHS + HELDOUT_ARCHS,
                   help="bundled models (default: the three the defaults were measured on; sd3, zimage, ltx, hunyuan, hidream: the held-out ones)")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="step counts (default 28 50; --quick: 8)")
    p.add_argument("--seeds", type=int, default=None, help="seeds pooled for quality (default 3; --quick: 2)")
    p.add_argument("--batch", type=int, default=None, help="images per generation (default 8; --quick: 2); CFG doubles it")
    p.add_argument("--repeats", type=int, default=None,
                   help="timing rounds per row (default 2, 3 with --sweep full; --quick: 1)")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--threads", default="1", help="torch threads, or 'auto' (times 1 vs 2, keeps the faster)")
    p.add_argument("--sweep", choices=("standard", "full"), default="standard",
                   help="rows and tuning grids (standard: ~35 timed rows and ~110 tuning settings per table)")
    p.add_argument("--per-baseline", type=int, default=3, help="cached runs between two uncached baseline runs")
    p.add_argument("--no-tuning", action="store_true", help="skip the tuning stage (fixed rows only)")
    p.add_argument("--no-defaults", action="store_true", help="skip the default robustness table (defaults.md)")
    p.add_argument("--scaling-tokens", type=int, nargs="+", default=None,
                   help="image tokens of the CPU scaling study (default 256 1024)")
    p.add_argument("--quick", action="store_true", help="fast smoke run (few rows, 8 steps, 1 repeat, tiny scaling)")
    p.add_argument("--no-scaling", action="store_true", help="skip the compute-heavy CPU scaling study")
    p.add_argument("--no-bundled", action="store_true", help="skip the per-model tables")
    p.add_argument("--out", default=RESULTS_DIR, help="results directory")
    p.add_argument("--random-weights", action="store_true", help="random-weight stand-ins of the bundled models")
    p.add_argument("--chart-only", action="store_true", help="redraw the charts from the results tables in --out")
    return p.parse_args(argv)


def load_bundled(arch: str = "flux", random_weights: bool = False, tiny: bool = False) -> Tuple[Any, str]:
    """The bundled trained model of `arch`, or a random-weight stand-in of the same architecture
    (from the bundled config) or, with `tiny`, a much smaller one (for the smoke test)."""
    from cachedit.bundled import digits as D

    if not (random_weights or tiny):
        return D.load_model(arch), f"bundled trained weights ({arch})"
    with open(D.config_path(arch)) as f:
        cfg = json.load(f)
    if tiny and arch == "flux":
        cfg["transformer"].update(num_layers=1, num_single_layers=3, attention_head_dim=16, num_attention_heads=2,
                                  joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6])
        cfg["label_embedder"].update(joint_attention_dim=32, pooled_projection_dim=32)
    elif tiny and arch == "hidream":  # one Llama feature per block: the list follows the block count
        cfg["transformer"].update(num_layers=1, num_single_layers=3, llama_layers=[0, 1, 2, 3])
    elif tiny:
        cfg["transformer"].update(num_layers=3)
    torch.manual_seed(0)
    model = D.build_model(cfg)
    for m in (model.transformer, model.label_embedder):
        m.eval()
        m.requires_grad_(False)
    return model, f"random-weight stand-in ({arch})" + (" (tiny)" if tiny else "")


def one_table(model: Any, steps: int, args: argparse.Namespace, seeds: List[int], batch: int, repeats: int,
              log: Callable[[str], None], group_size: int) -> Tuple[BundledResult, Optional[BundledResult], List[str]]:
    """Tuning stage (quality only), then the timed rows plus the picks."""
    kw = dict(batch=batch, seeds=seeds, guidance=args.guidance, log=log)
    timed = R.quick_rows() if args.quick else R.timed_rows(args.sweep)
    names = {m.name for m in timed}
    tuning, picked = None, []
    if not args.no_tuning:
        grid = R.tuning_grid(args.sweep, quick=args.quick)
        grid = {fam: [m for m in ms if m.name not in names] for fam, ms in grid.items()}
        flat = [m for ms in grid.values() for m in ms]
        log(f"== {model.arch}, {steps} steps: tuning stage, {len(flat)} settings (quality only) ==")
        tuning = run_bundled(model, flat, steps, timing=False, check_generate=False, group_size=group_size, **kw)
        for fam, k in R.TUNED_FAMILIES.items():
            picked += R.pick_tuned(tuning, fam, k)
        chosen = [m for m in flat if m.name in picked]
        timed = timed + R.like_for_like([n for n in picked if n.startswith("cache-dit")], grid) + chosen
    log(f"== {model.arch}, {steps} steps: {len(timed)} timed rows, {repeats} round(s) ==")
    res = run_bundled(model, timed, steps, repeats=repeats, per_baseline=args.per_baseline, group_size=group_size, **kw)
    return res, tuning, picked


def run(args: argparse.Namespace, models: Optional[Dict[str, Tuple[Any, str]]] = None, log: Callable[[str], None] = print,
        write: bool = True, group_size: int = 8) -> Dict[str, Any]:
    t_start = time.perf_counter()
    steps_list = args.steps or ([8] if args.quick else [28, 50])
    repeats = args.repeats or (1 if args.quick else (3 if args.sweep == "full" else 2))
    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    batch = args.batch or (2 if args.quick else 8)
    models = dict(models or {})
    for arch in args.arch:
        if arch not in models and not args.no_bundled:
            models[arch] = load_bundled(arch, args.random_weights)
    if args.threads == "auto" and models:
        probe = pick_threads(next(iter(models.values()))[0], log=log)
        threads, threads_note = probe["chosen"], "auto: " + ", ".join(f"{c} thread(s) {v:.3f} s" for c, v in probe["medians"].items())
    else:
        threads, threads_note = int(args.threads if args.threads != "auto" else 1), "fixed by --threads"
        torch.set_num_threads(threads)
    info = machine_info(threads)
    info["threads choice"] = threads_note
    info["code"] = os.environ.get("BENCH_CODE", "working tree")  # e.g. the commit a snapshot was taken from
    os.makedirs(args.out, exist_ok=True)
    out: Dict[str, Any] = {"results": {}, "scaling": None, "defaults": None, "info": info}

    for arch in ([] if args.no_bundled else args.arch):
        model, note = models[arch]
        results = []
        for steps in steps_list:
            t_step = time.perf_counter()
            res, tuning, picked = one_table(model, steps, args, seeds, batch, repeats, log, group_size)
            res.info["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
            res.info["elapsed_s"] = round(time.perf_counter() - t_step, 1)
            results.append(res)
            if write:
                path = os.path.join(args.out, result_name(arch, steps))
                with open(path, "w") as f:
                    f.write(results_markdown(res, {**info, "model": note}, tuning=tuning, picked=picked))
                log(f"wrote {path} ({res.info['elapsed_s']:.0f} s)")
        out["results"][arch] = results
        if write:
            pareto_chart(results, os.path.join(args.out, chart_name(arch)))

    if not args.no_defaults:
        from . import defaults as DF

        t0 = time.perf_counter()
        dres = DF.run(args.arch, quick=args.quick, log=log, models={a: m for a, (m, _) in models.items()})
        out["defaults"] = dres
        if write:
            with open(os.path.join(args.out, "defaults.md"), "w") as f:
                f.write(DF.markdown(dres, info, time.perf_counter() - t0))
            log("wrote defaults.md")
    if not args.no_scaling:
        from .scaling import run_and_write

        out["scaling"] = run_and_write(info, args.out if write else None, args.quick, args.scaling_tokens, log=log)
    if write and os.path.abspath(args.out) == os.path.abspath(RESULTS_DIR) and not args.quick:
        from .readme import update_readme

        update_readme(results_dir=args.out)
        log("README.md performance section regenerated from benchmarks/results/")
    out["elapsed_s"] = time.perf_counter() - t_start
    log(f"total {out['elapsed_s']:.0f} s")
    return out


def redraw_charts(out_dir: str) -> List[str]:
    from .report import result_from_markdown

    series = R.series_names()
    paths = []
    for arch in ARCHS + HELDOUT_ARCHS:
        files = [os.path.join(out_dir, result_name(arch, s)) for s in (28, 50)]
        files = [p for p in files if os.path.exists(p)]
        if files:
            path = os.path.join(out_dir, chart_name(arch))
            pareto_chart([result_from_markdown(p, series) for p in files], path)
            paths.append(path)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.chart_only:
        print("wrote", ", ".join(redraw_charts(args.out)))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
