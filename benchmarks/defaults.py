"""Default robustness table: the new default (error feedback, balanced), the quality presets and the
old fixed-threshold default, per bundled model and sampling scenario -> results/defaults.md.

    python -m benchmarks.defaults --jobs 3        # every model, every scenario (~1 h on 2 busy cores)
    python -m benchmarks.defaults --arch flux --quick

Each (scenario, setting) enables CacheDit once on the model object, as a user does on a pipeline
(with a fresh copy of its transformer; the run's CFG scale reaches error feedback), and generates
the seeds in order with `cachedit.bundled.digits.generate` (error feedback's calibration carries
over from one generation to the next, as it does for a user; the "cold" row refreshes the
context before every generation, so each one starts uncalibrated). Quality only: block compute is
counted (the same counter as the main benchmark), not timed.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from cachedit.bundled import archs as A

from .common import machine_block, machine_info
from .counters import ComputeCounter

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
QUALITY_DB = 40.0


def old_default_kwargs() -> Dict[str, Any]:
    import cachedit

    return dict(cache_config=cachedit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.24,
                                                     max_warmup_steps=3, max_continuous_cached_steps=3),
                calibrator_config=cachedit.TaylorSeerCalibratorConfig(taylorseer_order=1))


# (label, enable_cache kwargs factory, cold: refresh_context before every generation)
SETTINGS = [("balanced (new default)", dict, False), ("quality preset", lambda: {"quality": "quality"}, False),
            ("fast preset", lambda: {"quality": "fast"}, False), ("old fixed default (R0.24 TS1)", old_default_kwargs, False),
            ("balanced, cold (each generation uncalibrated)", dict, True)]


@dataclass
class Scenario:
    name: str
    steps: int = 28
    batch: int = 8
    cfg_mode: str = "batched"
    guidance: float = 3.0
    sampler: str = "euler"
    sigma_shift: Optional[float] = None

    def seeds(self, n8: int = 3, n1: int = 6) -> List[int]:
        return list(range(n8 if self.batch > 1 else n1))


def scenarios(quick: bool = False) -> List[Scenario]:
    if quick:
        return [Scenario("8 steps, batch 2, batched", 8, 2), Scenario("8 steps, batch 1, separate", 8, 1, "separate")]
    out = [Scenario(f"{s} steps, batch {b}, CFG {m}", s, b, m) for s in (28, 50) for b in (1, 8) for m in ("batched", "separate")]
    out += [Scenario("CFG 6 (28 steps, batch 8)", 28, 8, guidance=6.0), Scenario("heun 14 steps (27 calls, batch 8)", 14, 8,
                                                                                 sampler="heun"),
            Scenario("12 Euler steps (batch 8)", 12, 8), Scenario("sigma_shift 3, 20 steps (batch 8)", 20, 8, sigma_shift=3.0)]
    return out


def _labels(sc: Scenario, k: int) -> List[int]:
    return [(k * sc.batch + i) % 10 for i in range(sc.batch)]


def _generate(model: Any, sc: Scenario, seed: int, k: int) -> torch.Tensor:
    from cachedit.bundled import digits as D

    return D.generate(model, _labels(sc, k), num_steps=sc.steps, guidance_scale=sc.guidance, seed=seed,
                      cfg_mode=sc.cfg_mode, sampler=sc.sampler, sigma_shift=sc.sigma_shift)


def run_scenario(model: Any, sc: Scenario, seeds: Sequence[int], settings=SETTINGS) -> Dict[str, Any]:
    """Uncached references, then every setting: reused steps, compute, pooled/min PSNR, accuracy."""
    import cachedit
    from cachedit.bundled import digits as D

    pristine = model.transformer
    labels = sum((_labels(sc, k) for k in range(len(seeds))), [])
    counter = ComputeCounter(pristine)
    refs = [_generate(model, sc, s, k) for k, s in enumerate(seeds)]
    ref_macs = counter.macs
    counter.close()
    out: Dict[str, Any] = {"scenario": sc, "acc_ref": D.digit_accuracy(torch.cat(refs), labels), "rows": []}
    for label, make_kwargs, cold in settings:
        t = copy.deepcopy(pristine)
        model.transformer = t
        cachedit.enable_cache(model, **make_kwargs())  # the pipeline, as a user would: its CFG scale is read
        counter = ComputeCounter(t)
        images, reused = [], []
        try:
            for k, s in enumerate(seeds):
                if cold:
                    cachedit.refresh_context(t)
                cachedit.reset_cache_stats(t)
                images.append(_generate(model, sc, s, k))
                st = cachedit.summary(t, logging=False)[0]
                reused.append((st.accumulated_cached_steps, st.cfg_accumulated_cached_steps))
        finally:
            counter.close()
            cachedit.disable_cache(model)
            model.transformer = pristine
        out["rows"].append({
            "setting": label, "compute": counter.macs / ref_macs,
            "reused": sum(a for a, _ in reused) / len(reused), "reused_cfg": sum(b for _, b in reused) / len(reused),
            "psnr": D.psnr(torch.cat(refs), torch.cat(images)),
            "psnr_min": min(D.psnr(r, i) for r, i in zip(refs, images)),
            "acc": D.digit_accuracy(torch.cat(images), labels)})
    return out


def ok_quality(row: Dict[str, Any], acc_ref: float) -> bool:
    """At >= QUALITY_DB pooled PSNR with the uncached digit accuracy."""
    return row["psnr"] >= QUALITY_DB and row["acc"] >= acc_ref - 1e-9


def fmt_db(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.1f}"


def verdict(new: Dict[str, Any], old: Dict[str, Any], acc_ref: float) -> str:
    """Which of the two is better in a scenario: dominance on (pooled PSNR, compute), then the trade."""
    dp, dc = min(new["psnr"], 99.0) - min(old["psnr"], 99.0), 100 * (new["compute"] - old["compute"])
    bad = [n for n, r in (("new", new), ("old", old)) if not ok_quality(r, acc_ref)]
    note = (" (" + ", ".join(f"{n} < {QUALITY_DB:g} dB or acc" for n in bad) + ")") if bad else ""
    if abs(dp) < 0.25 and abs(dc) < 0.5:
        return "same" + note
    if dp >= -0.25 and dc <= 0.5:
        return f"new better ({dp:+.1f} dB, {dc:+.0f} pt compute)" + note
    if dp <= 0.25 and dc >= -0.5:
        return f"old better ({-dp:+.1f} dB, {-dc:+.0f} pt compute)" + note
    return f"trade: new {dp:+.1f} dB for {dc:+.0f} pt compute" + note


def arch_table(arch: str, results: Sequence[Dict[str, Any]]) -> List[str]:
    lines = [f"### {arch}", "",
             "| scenario | setting | reused steps/gen | blocks computed | PSNR dB (pooled) | min seed PSNR | digit acc "
             "(uncached) | new vs old |", "|---|---|---|---|---|---|---|---|"]
    for res in results:
        sc, rows = res["scenario"], res["rows"]
        by = {r["setting"]: r for r in rows}
        v = verdict(by[SETTINGS[0][0]], by[SETTINGS[3][0]], res["acc_ref"]) if len(by) >= 4 else ""
        for i, r in enumerate(rows):
            reused = f"{r['reused']:.1f}" + (f" + {r['reused_cfg']:.1f}" if r["reused_cfg"] else "")
            lines.append(f"| {sc.name if i == 0 else ''} | {r['setting']} | {reused} | {100 * r['compute']:.0f}% | "
                         f"{fmt_db(r['psnr'])} | {fmt_db(r['psnr_min'])} | {r['acc']:.2f} ({res['acc_ref']:.2f}) | "
                         f"{v if i == 0 else ''} |")
    return lines


def headline(all_results: Dict[str, Sequence[Dict[str, Any]]]) -> List[str]:
    """Counts of where each default is better, and each setting's worst case over all scenarios."""
    counts = {"new better": 0, "old better": 0, "trade": 0, "same": 0}
    worst: Dict[str, List[float]] = {}
    below: Dict[str, int] = {}
    for results in all_results.values():
        for res in results:
            by = {r["setting"]: r for r in res["rows"]}
            if len(by) >= 4:
                v = verdict(by[SETTINGS[0][0]], by[SETTINGS[3][0]], res["acc_ref"])
                counts[next(k for k in counts if v.startswith(k))] += 1
            for r in res["rows"]:
                w = worst.setdefault(r["setting"], [math.inf, math.inf, 0.0, 0])
                w[0], w[1] = min(w[0], r["psnr"]), min(w[1], r["psnr_min"])
                w[2] += r["compute"]
                w[3] += 1
                below[r["setting"]] = below.get(r["setting"], 0) + int(not ok_quality(r, res["acc_ref"]))
    lines = [f"New default (balanced feedback) vs old fixed default, over {sum(counts.values())} model x scenario cells: "
             + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ".", "",
             "| setting | worst pooled PSNR | worst seed PSNR | mean blocks computed | cells below 40 dB or accuracy |",
             "|---|---|---|---|---|"]
    for s, (wp, ws, c, n) in worst.items():
        lines.append(f"| {s} | {fmt_db(wp)} | {fmt_db(ws)} | {100 * c / max(1, n):.0f}% | {below[s]}/{n} |")
    return lines


def markdown(all_results: Dict[str, Sequence[Dict[str, Any]]], info: Dict[str, str], elapsed: float) -> str:
    lines = ["# Default robustness: error feedback (balanced) vs the old fixed default, per model and scenario", "",
             "What it shows: for each bundled model and sampling scenario, how much each setting reuses (reused "
             "steps per generation, cond + uncond branch with separate CFG; blocks computed = counted block MACs vs "
             "uncached) and what it costs in quality (PSNR vs the uncached images of the same seed, pooled over every "
             "image of every seed, and the worst seed; digit accuracy with the uncached one in brackets). `new vs old` "
             "compares the new default (balanced, error budget 0.15) with the old one (fixed threshold 0.24, "
             "TaylorSeer order 1): better = at least as good on both PSNR and compute; trade = one gains PSNR, the other "
             "compute. Seeds: 3 x batch 8 (6 x batch 1), generated in order on one enabled model: feedback's "
             "calibration carries over (the cold row refreshes it before each generation). The model is enabled as a "
             "pipeline, so error feedback reads each run's CFG scale: in the CFG 6 rows every budget is scaled by 3/6 "
             "(the fixed threshold of the old default is not). Not timed.", ""]
    lines += headline(all_results)
    lines += ["", "Machine:", machine_block(info), f"- elapsed: {elapsed / 60:.0f} min", ""]
    for arch, results in all_results.items():
        lines += arch_table(arch, results) + [""]
    return "\n".join(lines)


def _run_arch(arch: str, quick: bool, threads: int) -> List[Dict[str, Any]]:
    torch.set_num_threads(threads)
    return run([arch], quick)[arch]


def run(archs: Sequence[str], quick: bool = False, log: Callable[[str], None] = print,
        models: Optional[Dict[str, Any]] = None, jobs: int = 1, threads: int = 1) -> Dict[str, List[Dict[str, Any]]]:
    """Every scenario on every model; with jobs > 1, one process per model (their logs are their own)."""
    from cachedit.bundled import digits as D

    if jobs > 1 and not models and len(archs) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {a: pool.submit(_run_arch, a, quick, threads) for a in archs}
            return {a: f.result() for a, f in futures.items()}
    out: Dict[str, List[Dict[str, Any]]] = {}
    for arch in archs:
        model = (models or {}).get(arch) or D.load_model(arch)
        out[arch] = []
        for sc in scenarios(quick):
            t0 = time.perf_counter()
            res = run_scenario(model, sc, sc.seeds(*((2, 2) if quick else (3, 6))))
            out[arch].append(res)
            log(f"[defaults {arch}] {sc.name}: " + "; ".join(f"{r['setting'].split(' (')[0]} {r['psnr']:.1f} dB "
                                                             f"{100 * r['compute']:.0f}%" for r in res["rows"])
                + f" ({time.perf_counter() - t0:.0f} s)")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="default robustness table -> results/defaults.md")
    p.add_argument("--arch", nargs="+", default=["flux", "wan", "qwen"], choices=list(A.ARCHS),
                   help="bundled models (sd3, zimage, ltx, hunyuan, hidream: the held-out ones, trained after the defaults were settled)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="models run in parallel processes (3: one per model)")
    p.add_argument("--out", default=RESULTS_DIR)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    info = machine_info(args.threads)
    info["code"] = os.environ.get("BENCH_CODE", "working tree")
    if args.jobs > 1:
        info["code"] += f" (one process per model, {args.jobs} at a time)"
    results = run(args.arch, quick=args.quick, jobs=args.jobs, threads=args.threads)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "defaults.md")
    with open(path, "w") as f:
        f.write(markdown(results, info, time.perf_counter() - t0))
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
