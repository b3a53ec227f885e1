"""The default over many seeds: one user generating image after image -> results/seeds.md.

    python -m benchmarks.seeds                      # all five bundled models, 12 seeds x batch 8
    python -m benchmarks.seeds --arch flux --seeds 24 --settings default quality

The other tables pool 3 seeds x 8 images, the seeds every setting was tuned on; an image that one
setting turns into another digit may sit on seed 6. Here each setting is enabled once per model
and generates seeds 0..n-1 in order (28 Euler steps, batch 8, CFG 3 batched; error feedback's
calibration carries over, as for a user), and the table shows the pooled PSNR over all of them,
the worst seed, the worst single image, how many images fell under 30 dB (a different picture,
not a blur) and the computed steps per generation. Quality only, not timed.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from cachedit.bundled import archs as A

from .common import bundled_images, bundled_inputs, euler, machine_block, machine_info, SampleHooks

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ARCHS = tuple(A.ARCHS)  # every bundled layout, the held-out ones included
SETTINGS: Dict[str, dict] = {"default": {}, "quality": {"quality": "quality"}, "fast": {"quality": "fast"}}
LOST_DB = 30.0  # an image under this is another picture, not a softer one


@dataclass
class SeedsRow:
    arch: str
    setting: str
    psnr: float = float("nan")  # pooled over every image of every seed
    per_seed: List[float] = field(default_factory=list)
    worst_image: List[float] = field(default_factory=list)  # per seed
    computed: List[int] = field(default_factory=list)  # computed steps per generation
    lost: int = 0  # images under LOST_DB
    acc: float = float("nan")
    acc_ref: float = float("nan")


def measure(arch: str, settings: Sequence[str], n_seeds: int, steps: int = 28, batch: int = 8,
            model: Optional[Any] = None) -> List[SeedsRow]:
    """Every setting on one bundled model (`model`: a stand-in of that layout) over seeds
    0..n_seeds-1 (labels cycle through the digits)."""
    from cachedit.bundled import digits as D

    from . import methods as M
    from .bundled_bench import seed_labels
    from .run import load_bundled

    if model is None:
        model, _ = load_bundled(arch, False)
    inputs = [bundled_inputs(model, seed_labels(batch, k), steps, 3.0, k) for k in range(n_seeds)]
    labels = sum((seed_labels(batch, k) for k in range(n_seeds)), [])
    refs = [bundled_images(euler(copy.deepcopy(model.transformer), x), arch) for x in inputs]
    acc_ref = D.digit_accuracy(torch.cat(refs), labels)
    rows = []
    for name in settings:
        method = M.ours(f"ours {name}", "seeds", **SETTINGS[name])
        t = copy.deepcopy(model.transformer)
        hooks = SampleHooks()
        method.enable(t, steps, hooks)
        row = SeedsRow(arch, name, acc_ref=acc_ref)
        images = []
        for x, ref in zip(inputs, refs):
            method.reset_stats(t)
            method.before_run(t)
            img = bundled_images(euler(t, x, hooks), arch)
            images.append(img)
            per_image = [D.psnr(ref[i:i + 1], img[i:i + 1]) for i in range(img.shape[0])]
            row.per_seed.append(D.psnr(ref, img))
            row.worst_image.append(min(per_image))
            row.lost += sum(p < LOST_DB for p in per_image)
            row.computed.append(steps - int((method.report(t) or {}).get("cached_steps", 0)))
        method.disable(t)
        row.psnr = D.psnr(torch.cat(refs), torch.cat(images))
        row.acc = D.digit_accuracy(torch.cat(images), labels)
        rows.append(row)
        print(f"{arch} {name}: {row.psnr:.2f} dB pooled, worst image {min(row.worst_image):.1f}, "
              f"{row.lost} lost, computed {sum(row.computed) / len(row.computed):.2f}/gen", file=sys.stderr, flush=True)
    return rows


def markdown(rows: Sequence[SeedsRow], n_seeds: int, info: Dict[str, str], seconds: float) -> str:
    """The table and, per row, the per-seed PSNR / worst image / computed steps."""
    lines = [f"# The default over {n_seeds} seeds (28 Euler steps, batch 8, CFG 3 batched)", "",
             "Each setting enabled once per model, seeds generated in order (calibration carried over). "
             f"PSNR pooled over all {n_seeds * 8} images against uncached; lost = images under {LOST_DB:g} dB. "
             "Quality only.", "", "Machine:", machine_block(info), "", f"Took {seconds:.0f} s.", "",
             "| model | setting | PSNR dB | worst seed | worst image | lost | computed steps / gen | digit acc (uncached) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.arch} | {r.setting} | {r.psnr:.2f} | {min(r.per_seed):.2f} | {min(r.worst_image):.1f} | "
                     f"{r.lost} | {sum(r.computed) / len(r.computed):.2f} | {r.acc:.2f} ({r.acc_ref:.2f}) |")
    lines += ["", "Per seed (PSNR / worst image / computed steps):", ""]
    for r in rows:
        cells = " ".join(f"{p:.1f}/{w:.1f}/{c}" for p, w, c in zip(r.per_seed, r.worst_image, r.computed))
        lines.append(f"- {r.arch} {r.setting}: {cells}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--seeds", type=int, default=12, help="seeds 0..n-1 (default 12)")
    p.add_argument("--settings", nargs="+", default=["default"], choices=sorted(SETTINGS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)
    info["code"] = os.environ.get("BENCH_CODE", "working tree")
    start = time.perf_counter()
    rows = [r for arch in args.arch for r in measure(arch, args.settings, args.seeds)]
    text = markdown(rows, args.seeds, info, time.perf_counter() - start)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "seeds.md"), "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
