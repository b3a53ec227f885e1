"""CacheDit Accelerate in real ComfyUI on the bundled model: speedup, PSNR and accuracy per sampler.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m benchmarks.comfyui_bundled [--repeats 2]

The bundled digits model is converted into ComfyUI's own Flux class (ComfyUI's converter) and
sampled through comfy.sample (28 steps, CFG 3, cond and uncond batched as ComfyUI does), uncached
and through exactly what the CacheDit Accelerate node does. Timings are medians of interleaved
repeats. Writes benchmarks/results/comfyui_bundled.md and the Detailed Stats node's chart of the
first row to benchmarks/results/comfyui_stats_chart.png (`--chart-only`: that row alone, once, for the chart).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _setup_comfy():
    sys.path.insert(0, ROOT)
    from tests.comfyui import harness

    harness.ensure_comfy()


def _stats_node():
    """Our CacheDitDetailedStats, imported as part of the node pack (ComfyUI owns top-level `nodes`)."""
    import importlib
    import importlib.util

    if "cachedit_pack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("cachedit_pack", os.path.join(ROOT, "__init__.py"),
                                                      submodule_search_locations=[ROOT])
        module = importlib.util.module_from_spec(spec)
        sys.modules["cachedit_pack"] = module
        spec.loader.exec_module(module)
    return importlib.import_module("cachedit_pack.nodes.stats").CacheDitDetailedStats


def _accuracy(D, images, labels):
    if images.shape[-1] != 16:
        images = F.interpolate(images, size=(16, 16), mode="area")
    return D.digit_accuracy(images, labels)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "comfyui_bundled.md"))
    parser.add_argument("--chart-only", action="store_true",
                        help="only the first row, once, to redraw results/comfyui_stats_chart.png (no table written)")
    args = parser.parse_args(argv)
    if args.chart_only:
        args.repeats = 1
    _setup_comfy()
    torch.set_num_threads(args.threads)
    import cachedit
    from cachedit.bundled import comfyui as bundled_comfy
    from cachedit.bundled import digits as D

    patcher, bundled = bundled_comfy.load_patcher()
    rows = []
    chart_saved = False
    cases = [("euler", 8, 16), ("heun", 8, 16), ("dpmpp_2m", 8, 16), ("euler", 1, 16), ("euler", 4, 16),
             ("euler, 16px then 24px", 8, (16, 24))][:1 if args.chart_only else None]
    for sampler_label, batch, sizes in cases:
        sampler = sampler_label.split(",")[0]
        labels = torch.arange(batch) % 10
        accelerated = cachedit.enable_cache(patcher)  # what CacheDit Accelerate does
        sizes = sizes if isinstance(sizes, tuple) else (sizes,)
        base_t, fast_t, psnrs, acc_ref, acc_fast, reused = [], [], [], [], [], []
        for r in range(args.repeats):
            for size in sizes:  # back to back in one accelerated model: a new shape must start clean
                t0 = time.perf_counter()
                ref = bundled_comfy.generate(patcher, bundled, labels, sampler=sampler, size=size)
                t1 = time.perf_counter()
                img = bundled_comfy.generate(accelerated, bundled, labels, sampler=sampler, size=size)
                t2 = time.perf_counter()
                base_t.append(t1 - t0)
                fast_t.append(t2 - t1)
                if r == 0:
                    psnrs.append(D.psnr(img, ref))
                    acc_ref.append(_accuracy(D, ref, labels))
                    acc_fast.append(_accuracy(D, img, labels))
                    reused.append(len(cachedit.summary(accelerated, logging=False)[0].cached_steps))
        if not chart_saved:
            out = _stats_node().execute(accelerated, latent={"samples": torch.zeros(1)})
            chart = out.result[3][0]
            from PIL import Image

            Image.fromarray((chart.numpy() * 255).astype("uint8")).save(
                os.path.join(HERE, "results", "comfyui_stats_chart.png"))
            chart_saved = True
        rows.append(dict(case=sampler_label, batch=batch, reused="/".join(map(str, reused)),
                         speedup=statistics.median(base_t) / statistics.median(fast_t),
                         psnr=min(psnrs), acc_ref=min(acc_ref), acc=min(acc_fast)))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    lines = [f"CacheDit Accelerate in ComfyUI (commit of COMFYUI_PATH), bundled model converted to ComfyUI's Flux, "
             f"28 steps, CFG 3; {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
             f"median of {args.repeats} interleaved repeats", "",
             "| sampler | batch | steps reused (of 28) | wall speedup | PSNR vs unpatched (dB) | digit accuracy unpatched → cached |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['batch']} | {r['reused']} | {r['speedup']:.2f}x | {r['psnr']:.1f} | "
                     f"{r['acc_ref']:.3f} → {r['acc']:.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.chart_only:
        return
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text + "\n")


if __name__ == "__main__":
    main()
