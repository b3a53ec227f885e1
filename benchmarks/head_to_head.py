"""Settle a results table's summary ratios with many interleaved timing rounds of its contenders only.

    python -m benchmarks.head_to_head --arch flux            # reads results/results_28.md
    python -m benchmarks.head_to_head --arch wan --rounds 8 --table path/to/results_wan_28.md
    python -m benchmarks.head_to_head --arch qwen --extra "ours mask steps 0,1,5,9,15,20,24 TS3"

A results table (`benchmarks.run`) times ~35 rows in 2 rounds each; on a shared 2-core VM one round
can move a row by 20%, and a family's best row is the fastest of several noisy rows, so a ratio
near a target (our best >= 1.2x the best peer) can be luck: on the FLUX layout three rows with
the same 28.6% schedule timed 2.89x, 3.33x and 3.78x in one table. This takes, from the table, every
family's contenders -- its rows at >= 40 dB with the least block compute (up to 3, twins included)
plus its fastest one -- for our default, ours and each peer family within 75% of the best peer's
speed, rebuilds them from their names (`benchmarks.rows`), and times only those, in one group,
interleaved with the uncached run, for --rounds rounds (`run_bundled`: quality on the table's
seeds, the rows rotated each round). Writes results/head_to_head_<arch>_<steps>.md.

Every setting of the table was picked on the table's seeds, so a pick can be seed luck (on the
FLUX layout SeaCache R1.2 K3 holds 42.3 dB on seeds 0-2 and 38.7 on seeds 3-8). The contenders then generate
--heldout-seeds more seeds (quality only, after the table's seeds), and the summary is given twice:
as picked, and validated (only rows at >= 40 dB with unchanged accuracy on both seed sets, for every
family alike).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from . import methods as M
from . import rows as R
from .bundled_bench import BundledResult, Row, run_bundled
from .common import machine_block, machine_info
from .report import QUALITY_DB, best_at_quality, default_row, peer_bests, result_from_markdown, summary

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CONTENDER_SHARE = 0.75  # a peer family is timed when its best row is at least this share of the best peer's speed
PER_FAMILY = 3  # least-compute rows per family at most (one schedule often has twins that differ only in noise)


def method_catalog() -> Dict[str, M.Method]:
    """Every row the tables can hold, by name: fixed rows and tuning grids of both sweeps and of --quick,
    and ours on the knobs of any cache-dit grid setting."""
    out: Dict[str, M.Method] = {}
    for sweep, quick in (("standard", False), ("full", False), ("standard", True)):
        grid = R.tuning_grid(sweep, quick=quick)
        cache_dit = [m.name for m in grid.get("cache-dit tuned", [])]
        fixed = R.quick_rows() if quick else R.timed_rows(sweep)
        found = fixed + [m for ms in grid.values() for m in ms]
        found += [m for name in cache_dit for m in R.like_for_like([name], grid)]
        for m in found:
            out.setdefault(m.name, m)
    return out


def _family_key(r: Row) -> str:
    return "ours" if r.family == "ours" else R.peer_family(r)


def contenders(res: BundledResult, share: float = CONTENDER_SHARE, per_family: int = PER_FAMILY) -> List[str]:
    """Names to time: our default; per family (ours, each peer family whose fastest row at >= 40 dB is
    within `share` of the fastest peer's) its rows at >= 40 dB with the least block compute (up to
    `per_family` of them: same schedule, different noise) and its fastest row."""
    peers = peer_bests(res)
    if not peers:
        raise ValueError("the table has no peer row at >= %g dB to compare with" % QUALITY_DB)
    top = max(r.speedup for r in peers.values())
    families = ["ours"] + sorted(f for f, r in peers.items() if r.speedup >= share * top)
    names: List[str] = []
    d = default_row(res.rows)
    if d is not None:
        names.append(d.name)
    for fam in families:
        rows = [r for r in res.rows if r.family != "uncached" and _family_key(r) == fam
                and R.ok_quality(r, res.acc_ref) and not r.error]
        if not rows:
            continue
        least = min(round(r.compute, 3) for r in rows)
        twins = sorted((r for r in rows if round(r.compute, 3) == least), key=lambda r: -r.psnr)[:per_family]
        fastest = best_at_quality(rows, rows[0].family, res.acc_ref)  # None if no row of it was timed
        for r in twins + ([fastest] if fastest else []):
            if r.name not in names:
                names.append(r.name)
    return names


def _methods(names: Sequence[str]) -> List[M.Method]:
    """The rows rebuilt; a table's default and preset rows (whatever their rules were then) become
    today's default and presets."""
    catalog = method_catalog()
    for prefix in ("ours default", "ours quality='quality'", "ours quality='fast'"):
        today = next((m for m in catalog.values() if m.name.startswith(prefix)), None)
        if today is not None:
            catalog.update({n: today for n in names if n.startswith(prefix)})
    for n in names:
        if n not in catalog:
            row = M.steps_mask_row(n)
            if row is not None:
                catalog[n] = row
    missing = [n for n in names if n not in catalog]
    if missing:
        raise ValueError(f"rows not rebuildable from their names (a table from older code?): {missing}")
    return [catalog[n] for n in names]


def validated(res: BundledResult, heldout: Optional[BundledResult]) -> Optional[BundledResult]:
    """`res` without the rows that fail the quality bar on the held-out seeds (None: no held-out run)."""
    if heldout is None:
        return None
    held = {r.name: r for r in heldout.rows}
    keep = [r for r in res.rows if r.family == "uncached"
            or (r.name in held and R.ok_quality(held[r.name], heldout.acc_ref))]
    return dataclasses.replace(res, rows=keep)


def _summary_lines(res: BundledResult) -> List[str]:
    """Each family's best, the leanest peer, and our default's and best's ratios to the best peer."""
    s = summary(res)
    peers = s["peers"]
    if not peers:
        return [f"- no peer row at >= {QUALITY_DB:g} dB"]
    lines = []
    leanest = min((r for r in res.rows if r.family not in ("ours", "uncached") and R.ok_quality(r, res.acc_ref)),
                  key=lambda r: (r.compute, -r.speedup))
    for fam, r in sorted(peers.items(), key=lambda kv: -kv[1].speedup):
        lines.append(f"- best {fam}: {r.name}: {r.speedup:.2f}x (best-of {r.best_of:.2f}x), {r.psnr:.1f} dB, "
                     f"{100 * r.compute:.1f}% compute")
    lines.append(f"- least block compute of a peer: {leanest.name}: {100 * leanest.compute:.1f}%")
    for label, key, r in (("our default", "default_vs_peer", s["default"]), ("our best", "ours_vs_peer", s["ours_best"])):
        if r is None or key not in s:
            lines.append(f"- {label}: none at >= {QUALITY_DB:g} dB")
            continue
        lines.append(f"- {label}: {r.name}: {r.speedup:.2f}x (best-of {r.best_of:.2f}x), {r.psnr:.1f} dB, "
                     f"{100 * r.compute:.1f}% compute: / best peer {s[key]:.2f}x (best-of {s[key + '_bestof']:.2f}x); "
                     f"by block compute {leanest.compute / r.compute:.2f}x")
    return lines


def report(res: BundledResult, table: str, rounds: int, info: Dict[str, str], seconds: float,
           heldout: Optional[BundledResult] = None, extra: Sequence[str] = ()) -> str:
    """The markdown of one head-to-head: the rows, then each family's best and the two ratios (and,
    with `heldout`, the same among the rows that hold on the held-out seeds too). `extra`: rows timed
    on top of the table's contenders (--extra), named in the header."""
    held = {r.name: r for r in heldout.rows} if heldout is not None else {}
    lines = [f"# Head to head: bundled {res.arch} model, {res.steps} Euler steps, batch {res.batch} (CFG 3 batched), "
             f"seeds {', '.join(map(str, res.seeds))}", "",
             f"Contenders of `{table}` (per family the least-compute rows at >= {QUALITY_DB:g} dB and the fastest; "
             f"peer families within {CONTENDER_SHARE:.0%} of the best peer)"
             + (f", plus rows not in the table (--extra): {'; '.join(f'`{n}`' for n in extra)}" if extra else "")
             + f", timed alone in one group: {rounds} rounds, "
             "rows rotated each round, an uncached run before every two rows. Wall speedup = median over rounds of "
             "(mean of the uncached runs around it) / (this run); best-of = fastest uncached / fastest run.", "",
             "Machine:", machine_block(info), "", f"Took {seconds:.0f} s.", "",
             "| method | family | wall speedup | (min-max) | best-of | s/run | block compute | PSNR dB | min seed PSNR | digit acc |"
             + (" held-out PSNR dB | held-out min seed | held-out acc |" if heldout is not None else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if heldout is not None else "")]
    for r in res.rows:
        line = (f"| {r.name} | {r.family} | {r.speedup:.2f}x | {r.speedup_lo:.2f}-{r.speedup_hi:.2f} | "
                f"{r.best_of:.2f}x | {r.time_s:.2f} | {100 * r.compute:.1f}% | {r.psnr:.2f} | {r.psnr_min:.2f} | "
                f"{r.acc:.2f} |")
        if heldout is not None:
            h = held.get(r.name)
            line += f" {h.psnr:.2f} | {h.psnr_min:.2f} | {h.acc:.2f} |" if h is not None else " | | |"
        lines.append(line)
    lines += ["", f"### Summary ({res.arch}, {res.steps} steps)"] + _summary_lines(res)
    checked = validated(res, heldout)
    if checked is not None:
        lines += ["", f"### Validated: the rows at >= {QUALITY_DB:g} dB with unchanged accuracy on the held-out seeds "
                      f"{', '.join(map(str, heldout.seeds))} too"] + _summary_lines(checked)
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="flux", help="bundled model (flux, wan, qwen; held out: sd3, zimage, ltx, hunyuan, hidream)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--table", default=None, help="results table to take the contenders from "
                   "(default: results/results[_<arch>]_<steps>.md)")
    p.add_argument("--rounds", type=int, default=8, help="timing rounds (default 8)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the tables use 1)")
    p.add_argument("--heldout-seeds", type=int, default=6,
                   help="seeds after the table's that every contender also generates, quality only (default 6; 0: none)")
    p.add_argument("--extra", action="append", default=[], metavar="NAME",
                   help="also time this row, not in the table (repeatable): any row name the tables use, or a "
                   "hand-picked static mask, `ours mask steps 0,1,5,9,15,20,24 TS3` / `cache-dit F1B0 mask steps ... TS2`")
    p.add_argument("--out", default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.heldout_seeds < 0:
        p.error(f"--heldout-seeds must be >= 0, got {args.heldout_seeds}")
    from .run import load_bundled, result_name

    table = args.table or os.path.join(RESULTS_DIR, result_name(args.arch, args.steps))
    res = result_from_markdown(table, R.series_names())
    if res.arch != args.arch or res.steps != args.steps:
        p.error(f"--table {table} is {res.arch} at {res.steps} steps, not {args.arch} at {args.steps}")
    names = contenders(res)
    names += [n for n in dict.fromkeys(args.extra) if n not in names]
    try:
        methods = _methods(names)
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)
    info["code"] = os.environ.get("BENCH_CODE", "working tree")
    model, _ = load_bundled(args.arch, False)
    print(f"{args.arch} {args.steps} steps: timing {len(methods)} contenders x {args.rounds} rounds: " + "; ".join(names),
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    out = run_bundled(model, methods, args.steps, batch=res.batch, seeds=res.seeds, repeats=args.rounds, per_baseline=2,
                      group_size=len(methods), check_generate=False, log=lambda s: print(s, file=sys.stderr, flush=True))
    heldout = None
    if args.heldout_seeds:
        first = max(res.seeds) + 1
        heldout = run_bundled(model, _methods(names), args.steps, batch=res.batch,
                              seeds=tuple(range(first, first + args.heldout_seeds)), timing=False,
                              group_size=len(methods), check_generate=False,
                              log=lambda s: print(s, file=sys.stderr, flush=True))
    text = report(out, os.path.relpath(table, os.path.dirname(RESULTS_DIR)), args.rounds, info, time.perf_counter() - start,
                  heldout, args.extra)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"head_to_head_{args.arch}_{args.steps}.md"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
