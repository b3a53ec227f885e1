"""CacheDit Accelerate against ComfyUI's own caches (EasyCache, LazyCache) in real ComfyUI.

    COMFYUI_PATH=/path/to/ComfyUI .venv/bin/python -m benchmarks.comfyui_peers [--arch flux wan qwen] [--batch 1 8]

The peers a ComfyUI user has without installing anything are the core EasyCache and LazyCache nodes
(`comfy_extras/nodes_easycache.py`). Each bundled model is converted into ComfyUI's own class
(`cachedit.bundled.comfyui`) and sampled with ComfyUI's sampler (28 Euler steps, CFG 3, cond and
uncond batched as ComfyUI does), unpatched and through: what CacheDit Accelerate does
(`cachedit.enable_cache(patcher)`), and each core node as its `execute` builds it (the node's own
start/end percent 0.15/0.95) over a threshold grid. Quality: PSNR pooled over --images images per
cell (batch 1: that many seeds; batch 8: images / 8 seeds; seed k draws digits from 8k on) against
the unpatched images of the same seed: single images spread widely (37.7-50.3 dB for our default
on ten batch-1 seeds of the FLUX layout), so a cell of one or two images says little. Block
calls: blocks of the diffusion model's block lists that computed (their first linear layer ran) against unpatched (EasyCache
skips whole model calls, CacheDit the blocks of a step). Wall speedup: median over --repeats interleaved (unpatched, cached)
pairs on the first seed. A row whose sampling raises is kept, with the exception, as a result.
Writes benchmarks/results/comfyui_peers.md (`--out`).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
THRESHOLDS = (0.02, 0.05, 0.1, 0.2)  # the nodes' default is 0.2


def _block_lists(diffusion_model: torch.nn.Module) -> List[torch.nn.ModuleList]:
    """The block lists CacheDit's ComfyUI adapter hooks (not, e.g., HiDream's caption projections)."""
    from cachedit.adapters.comfyui.layout import layout_of

    layout = layout_of(diffusion_model)
    if layout.mode != "step":
        return [getattr(diffusion_model, name) for name, _ in layout.lists]
    return [m for m in diffusion_model.children() if isinstance(m, torch.nn.ModuleList) and len(m) > 1]


def _first_linear(block: torch.nn.Module) -> torch.nn.Module:
    """A module that runs only when the block really computes: its first linear layer (an object-
    patched block, HiDream's, is still called when reused; its insides are not)."""
    return next((m for m in block.modules() if isinstance(m, torch.nn.Linear)), block)


class BlockCalls:
    """Counts the blocks of the diffusion model's block lists that really compute while installed."""

    def __init__(self, diffusion_model: torch.nn.Module) -> None:
        self.count = 0
        self._handles = [_first_linear(b).register_forward_pre_hook(self._hit)
                         for blocks in _block_lists(diffusion_model) for b in blocks]

    def _hit(self, *_args) -> None:
        self.count += 1

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _rows(patcher) -> Dict[str, Callable[[], object]]:
    """Name -> a function building that row's model from the unpatched patcher."""
    import cachedit
    from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode

    rows: Dict[str, Callable[[], object]] = {"CacheDit Accelerate (default)": lambda: cachedit.enable_cache(patcher)}
    for node in (EasyCacheNode, LazyCacheNode):
        for t in THRESHOLDS:
            rows[f"{node.define_schema().node_id} {t:g}" + (" (its default)" if t == 0.2 else "")] = (
                lambda node=node, t=t: node.execute(patcher, t, 0.15, 0.95, False).result[0])
    return rows


def run(arch: str, batch: int, seeds: int, repeats: int, steps: int = 28, log: Callable[[str], None] = print) -> List[dict]:
    """One result dict per row: name, error, psnr, worst seed psnr, block-call share, speedup."""
    from cachedit.bundled import comfyui as bundled_comfy

    patcher, bundled = bundled_comfy.load_patcher(arch)
    labels = [torch.tensor([(8 * k + i) % 10 for i in range(batch)]) for k in range(seeds)]
    gen = lambda model, k: bundled_comfy.generate(model, bundled, labels[k], seed=k, steps=steps)  # noqa: E731
    counter = BlockCalls(patcher.model.diffusion_model)
    refs = [gen(patcher, k) for k in range(seeds)]
    base_calls = counter.count / seeds
    out = []
    for name, build in _rows(patcher).items():
        row = {"name": name, "error": None}
        try:
            model = build()
            counter.count = 0
            images = [gen(model, k) for k in range(seeds)]
            row["calls"] = counter.count / seeds / base_calls
            mses = [float(((a - b) ** 2).mean()) for a, b in zip(images, refs)]
            row["psnr"] = _db(sum(mses) / len(mses))
            row["psnr_min"] = min(_db(m) for m in mses)
            ratios = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                gen(patcher, 0)
                t1 = time.perf_counter()
                gen(model, 0)
                ratios.append((t1 - t0) / (time.perf_counter() - t1))
            row["speedup"] = statistics.median(ratios)
        except Exception as exc:  # noqa: BLE001 - a peer that crashes mid-sampling is a result
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:140]}" if str(exc) else type(exc).__name__
        out.append(row)
        log(f"{arch} batch {batch}: {_cells(row)}")
    counter.remove()
    return out


def _db(mse: float) -> float:
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _cells(row: dict) -> str:
    if row["error"]:
        return f"{row['name']} | crashed: {row['error']} | | | "
    return (f"{row['name']} | {row['speedup']:.2f}x | {100 * row['calls']:.0f}% | {row['psnr']:.1f} | "
            f"{row['psnr_min']:.1f}")


def table(results: Dict[tuple, List[dict]], images: int, repeats: int) -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [f"CacheDit Accelerate vs ComfyUI's core EasyCache / LazyCache (commit of COMFYUI_PATH), bundled models in "
             f"ComfyUI's own classes, 28 Euler steps, CFG 3 batched; PSNR pooled over {images} images per cell "
             f"(batch 1: {images} seeds) against unpatched, and the worst seed's; block calls against unpatched; "
             f"wall speedup median of {repeats} interleaved pairs; {cpu}, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}", "",
             "| model | batch | row | wall speedup | block calls | PSNR dB | worst seed |", "|---|---|---|---|---|---|---|"]
    for (arch, batch), rows in results.items():
        for row in rows:
            lines.append(f"| {arch} | {batch} | {_cells(row)} |")
    lines += ["", "Best row at >= 40 dB pooled, per model and batch:", ""]
    for (arch, batch), rows in results.items():
        ok = [r for r in rows if not r["error"] and r["psnr"] >= 40]
        best = {fam: max((r for r in ok if r["name"].startswith(fam)), key=lambda r: r["speedup"], default=None)
                for fam in ("CacheDit", "EasyCache", "LazyCache")}
        lines.append(f"- {arch}, batch {batch}: " + "; ".join(
            f"{fam} " + (f"{r['speedup']:.2f}x at {r['psnr']:.1f} dB ({r['name']})" if r else "none")
            for fam, r in best.items()))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["flux", "wan", "qwen"], choices=("flux", "wan", "qwen", "hidream"),
                   help="bundled models (hidream: the held-out one that loads into ComfyUI's own class)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--images", type=int, default=8, help="images per cell (seeds = images / batch, at least 1)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(HERE, "results", "comfyui_peers.md"))
    args = p.parse_args(argv)
    for flag in ("images", "repeats", "threads"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if any(b < 1 for b in args.batch):
        p.error(f"--batch values must be >= 1, got {args.batch}")
    sys.path.insert(0, ROOT)
    from tests.comfyui import harness

    harness.ensure_comfy()
    torch.set_num_threads(args.threads)
    results = {(a, b): run(a, b, max(1, args.images // b), args.repeats,
                           log=lambda s: print(s, file=sys.stderr, flush=True))
               for a in args.arch for b in args.batch}
    text = table(results, args.images, args.repeats)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
