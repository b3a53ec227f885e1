"""Soak: many generations alternating configs, shapes and models; memory must stay flat.

`python -m benchmarks.soak [--generations 300] [--every 20] [--write]` runs a cycle of
generations on tiny random FLUX transformers (two long-lived models, re-enabled with another
config every few generations, plus a short-lived third model created, accelerated, sampled and
dropped each cycle) at changing batch sizes, token grids and CFG modes, and prints, every
`--every` generations: process RSS, bytes of cached tensors (every tracked model), models tracked
by the manager, and live Python objects (after gc). After warm-up every column should stay flat.
`--write` also writes the table to benchmarks/results/soak.md. `run()` is what the test calls.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from typing import Dict, List

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import cachedit  # noqa: E402
from conftest import make_tiny_flux, sample  # noqa: E402  (tests/conftest.py: the tiny model and sampler)

CONFIGS = [
    {},
    dict(strategy="fixed", skip_interval=2, warmup_steps=1),
    dict(strategy="dynamic", skip_interval=3, warmup_steps=1),
    dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=1,
         enable_taylorseer=True, taylorseer_order=2),
    dict(Fn_compute_blocks=0, residual_diff_threshold=0.3, max_warmup_steps=1, quality="fast"),
]
SHAPES = [dict(batch=1, tokens=16, cfg="none"), dict(batch=2, tokens=9, cfg="batched"),
          dict(batch=3, tokens=16, cfg="separate"), dict(batch=1, tokens=4, cfg="batched")]


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def measure() -> Dict[str, int]:
    """One row: RSS, cache bytes, tracked models, live Python objects (after a full collection)."""
    gc.collect()
    stats = cachedit.get_global_stats()
    manager = cachedit.get_manager()
    cache = sum(engine.buffer_bytes() for entry in manager.entries() for engine in entry.engines)
    return {"rss": rss_bytes(), "cache_bytes": cache, "models": stats["models_tracked"], "objects": len(gc.get_objects())}


PERIOD = 20  # the schedule repeats every PERIOD generations: rows at cycle ends compare like with like


def generation(models: List[torch.nn.Module], g: int, steps: int) -> None:
    """Generation `g` of the periodic schedule."""
    model = models[g % 2]
    if g % 4 < 2:
        cachedit.enable_cache(model, **CONFIGS[(g // 4) % len(CONFIGS)])
    if g % PERIOD == 7:
        cachedit.reset_cache_stats(model)
    if g % 10 == 3:  # a short-lived model: accelerated, sampled, dropped
        temp = make_tiny_flux(seed=2)
        cachedit.enable_cache(temp, **CONFIGS[g % len(CONFIGS)])
        sample(temp, steps=3)
        del temp
    sample(model, steps=steps + (g // 2) % 3, **SHAPES[g % len(SHAPES)])
    if g % 5 == 0:
        cachedit.summary(model, logging=False)


def run(generations: int = 300, every: int = PERIOD, steps: int = 6, verbose: bool = False) -> List[Dict[str, int]]:
    """Run the soak; returns one measurement per `every` generations (first row: after generation 1)."""
    torch.set_num_threads(1)
    models = [make_tiny_flux(seed=0), make_tiny_flux(seed=1)]
    rows: List[Dict[str, int]] = []
    start = time.time()
    for g in range(generations):
        generation(models, g, steps)
        if g == 0 or (g + 1) % every == 0:
            row = dict(generation=g + 1, seconds=round(time.time() - start, 1), **measure())
            rows.append(row)
            if verbose:
                print(format_row(row), flush=True)
    for model in models:
        cachedit.disable_cache(model)
    return rows


HEADER = "| generation | seconds | RSS (MiB) | cache bytes | models tracked | Python objects |\n|---|---|---|---|---|---|"


def format_row(row: Dict[str, int]) -> str:
    return (f"| {row['generation']} | {row['seconds']} | {row['rss'] / 2**20:.1f} | {row['cache_bytes']} | "
            f"{row['models']} | {row['objects']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generations", type=int, default=300)
    parser.add_argument("--every", type=int, default=PERIOD)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/soak.md")
    args = parser.parse_args()
    print(HEADER)
    rows = run(args.generations, args.every, verbose=True)
    if args.write:
        after = rows[len(rows) // 3:]
        spread = {k: (min(r[k] for r in after), max(r[k] for r in after)) for k in ("rss", "cache_bytes", "models", "objects")}
        text = [
            "# Soak: memory over many generations",
            "",
            f"`python -m benchmarks.soak --generations {args.generations} --every {args.every} --write`: two tiny random "
            "FLUX transformers (6 blocks) alternating, re-enabled with another of 5 configs every 4 generations (default, "
            "fixed, dynamic, adaptive F1B1 + TaylorSeer order 2, F0 'fast' preset), stats reset every 20, a third model "
            "created, accelerated, sampled and dropped every 10; batch 1-3, 4-16 image tokens, CFG none / batched / "
            f"separate, 6-8 Euler steps; the schedule repeats every {PERIOD} generations and rows are taken at its ends. torch {torch.__version__}, {platform.machine()}, 1 thread. Each row is measured "
            "after a full garbage collection.",
            "",
            HEADER,
            *[format_row(r) for r in rows],
            "",
            f"After warm-up (the last {len(after)} rows): RSS {spread['rss'][0] / 2**20:.1f}-{spread['rss'][1] / 2**20:.1f} MiB, "
            f"cache bytes {spread['cache_bytes'][0]}-{spread['cache_bytes'][1]}, models tracked "
            f"{spread['models'][0]}-{spread['models'][1]}, Python objects {spread['objects'][0]}-{spread['objects'][1]}.",
            "",
        ]
        path = os.path.join(HERE, "results", "soak.md")
        with open(path, "w") as f:
            f.write("\n".join(text))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
