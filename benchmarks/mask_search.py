"""Search a bundled model's static steps masks by single-step moves (quality only, not timed).

    python -m benchmarks.mask_search --arch qwen --start 0,1,5,10,15,20,24 --orders 2,3

A tuning grid's stride masks place their computed steps on a regular pattern; on some models one
computed step moved by one makes 1-3 dB either way. From `--start`, every mask with one of its
computed steps (after the first two) moved one step earlier or later is generated on `--seeds` for
each TaylorSeer order, and the best becomes the next start, until no move improves the pooled PSNR.
Picking the best of many masks on three seeds is a search for seed luck as much as for a schedule, so
the winner (and the start) is then generated on `--heldout-seeds` too, and only a mask that holds
there counts (on the FLUX layout the best move, step 9 for 10, went 41.5 -> 38.9 dB on the held-out
seeds; on Qwen-Image it held: runs/2026-12-03_hand_picked_masks.md). A winner is timed next to the
table's contenders with `benchmarks.head_to_head --extra "ours mask steps ... TSk"`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import methods as M
from .bundled_bench import run_bundled

Mask = Tuple[int, ...]


def moves(mask: Mask, total: int, fixed: int = 2) -> List[Mask]:
    """Every mask with one computed step after the first `fixed` moved by one step, keeping the steps
    distinct, rising and inside the run."""
    out = []
    for i in range(fixed, len(mask)):
        for d in (-1, 1):
            m = list(mask)
            m[i] += d
            if m[i] <= m[i - 1] or (i + 1 < len(m) and m[i] >= m[i + 1]) or m[i] >= total:
                continue
            out.append(tuple(m))
    return out


def row_name(mask: Mask, order: int) -> str:
    return f"ours {M.steps_tag(mask)} TS{order}"


def quality(model, names: Sequence[str], steps: int, seeds: Sequence[int], batch: int) -> Dict[str, float]:
    """Pooled PSNR (dB) of each named mask row on `seeds`; a row that loses digit accuracy gets -inf."""
    res = run_bundled(model, [M.steps_mask_row(n) for n in names], steps, batch=batch, seeds=seeds, timing=False,
                      group_size=len(names), check_generate=False, log=lambda s: None)
    return {r.name: (r.psnr if r.acc >= res.acc_ref else float("-inf")) for r in res.rows if r.family == "ours"}


def search(model, start: Mask, orders: Sequence[int], steps: int, seeds: Sequence[int], batch: int,
           log=print) -> Tuple[Mask, int, float, Dict[str, float]]:
    """Hill-climb from `start` (see the module docstring): the best (mask, order, PSNR) and every PSNR seen."""
    seen: Dict[str, float] = {}
    best: Optional[Tuple[Mask, int, float]] = None
    frontier = [start]
    while frontier:
        names = [row_name(m, o) for m in frontier for o in orders if row_name(m, o) not in seen]
        seen.update(quality(model, names, steps, seeds, batch) if names else {})
        top = max(((m, o, seen[row_name(m, o)]) for m in frontier for o in orders), key=lambda x: x[2])
        if best is not None and top[2] <= best[2]:
            break
        best = top
        log(f"best so far: {row_name(best[0], best[1])}: {best[2]:.2f} dB ({len(seen)} rows generated)")
        frontier = moves(best[0], steps)
    return best[0], best[1], best[2], seen


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="qwen", help="bundled model (flux, wan, qwen, sd3, zimage, ltx, hunyuan, hidream)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--start", required=True, help="computed steps of the first mask, e.g. 0,1,5,10,15,20,25")
    p.add_argument("--orders", default="2,3", help="TaylorSeer orders to try (default 2,3)")
    p.add_argument("--seeds", type=int, default=3, help="seeds the search picks on (default 3: seeds 0-2)")
    p.add_argument("--heldout-seeds", type=int, default=6, help="seeds after those the winner is checked on")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tiny", action="store_true", help="an untrained tiny model (smoke test)")
    args = p.parse_args(argv)
    try:
        start = tuple(int(s) for s in args.start.split(","))
        orders = [int(o) for o in args.orders.split(",")]
        M.computed_steps_mask(args.steps, start)
    except ValueError as e:
        p.error(f"--start {args.start!r} / --orders {args.orders!r}: {e}")
    from .run import load_bundled

    torch.set_num_threads(1)
    model, _ = load_bundled(args.arch, args.tiny)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    mask, order, db, seen = search(model, start, orders, args.steps, range(args.seeds), args.batch, log)
    heldout = range(args.seeds, args.seeds + args.heldout_seeds)
    names = list(dict.fromkeys([row_name(mask, order)] + [row_name(start, o) for o in orders]))
    held = quality(model, names, args.steps, heldout, args.batch) if args.heldout_seeds else {}
    print(f"| mask | seeds 0-{args.seeds - 1} PSNR dB | held-out seeds PSNR dB |\n|---|---|---|")
    for name, value in sorted(seen.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {value:.2f} | {held[name]:.2f} |" if name in held else f"| {name} | {value:.2f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
