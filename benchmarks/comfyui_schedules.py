"""CacheDit Accelerate's default in real ComfyUI across schedulers and samplers: PSNR and computed steps.

    COMFYUI_PATH=/path/to/ComfyUI .venv/bin/python -m benchmarks.comfyui_schedules [--arch flux,wan,qwen]
    COMFYUI_PATH=... .venv/bin/python -m benchmarks.comfyui_schedules --schedules linear \
        --samplers euler,dpmpp_2m,uni_pc,euler_ancestral,dpmpp_2m_sde --out benchmarks/results/comfyui_samplers.md

Each bundled model is converted into ComfyUI's own class (`cachedit.bundled.comfyui`) and sampled
with ComfyUI's sampler (28 Euler steps, CFG 3, cond and uncond batched) on the bundled linear
schedule and on ComfyUI's simple, beta and karras schedules of the model's own model_sampling,
uncached and with `cachedit.enable_cache(patcher)` (what the Accelerate node does); `--steps` and
`--cfg` change the 28 steps and CFG 3 (KSampler's default is 20 steps); `--samplers`
runs other ComfyUI samplers than euler (ancestral / SDE ones compute every step: sampler_noise.py).
Seeds 0..n-1,
batch 8, seed k drawing digits 8k..8k+7. Quality only (no timing): PSNR pooled over every image
(mean MSE), the worst seed's, and the steps each generation computed (calibration carries over
from one generation to the next, as for a user). Prints a markdown table and writes it to
benchmarks/results/comfyui_schedules.md (`--out`).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from .common import seeds_quality, write_markdown

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCHEDULES = ("linear", "simple", "beta", "karras")


def run(arch: str, schedules, seeds: int, steps: int = 28, samplers=("euler",), cfg: float = 3.0):
    """Rows (arch, schedule, sampler, pooled PSNR, worst seed PSNR, computed steps per seed)."""
    import comfy.samplers

    import cachedit
    from cachedit.bundled import comfyui as bundled_comfy

    patcher, bundled = bundled_comfy.load_patcher(arch)
    sampling = patcher.get_model_object("model_sampling")
    rows = []
    for schedule in schedules:
        for sampler in samplers:
            sigmas = None if schedule == "linear" else comfy.samplers.calculate_sigmas(sampling, schedule, steps).float()
            labels = [torch.tensor([(8 * k + i) % 10 for i in range(8)]) for k in range(seeds)]
            refs = [bundled_comfy.generate(patcher, bundled, labels[k], seed=k, steps=steps, sigmas=sigmas,
                                           sampler=sampler, cfg=cfg) for k in range(seeds)]
            accelerated = cachedit.enable_cache(patcher)

            def images(k):
                return bundled_comfy.generate(accelerated, bundled, labels[k], seed=k, steps=steps, sigmas=sigmas,
                                              sampler=sampler, cfg=cfg), refs[k]

            pooled, worst, computed = seeds_quality(accelerated, steps, seeds, images)
            cachedit.disable_cache(accelerated)
            rows.append((arch, schedule, sampler, pooled, worst, computed))
            print(f"{arch} {schedule} {sampler}: {pooled:.2f} dB (worst seed {worst:.2f}), computed {computed}",
                  file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="flux,wan,qwen")
    parser.add_argument("--schedules", default=",".join(SCHEDULES))
    parser.add_argument("--samplers", default="euler", help="ComfyUI sampler names, comma separated")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=28, help="sampling steps (ComfyUI's KSampler default: 20)")
    parser.add_argument("--cfg", type=float, default=3.0, help="CFG scale (1: the positive only, as FLUX.1-dev runs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "comfyui_schedules.md"))
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    from tests.comfyui import harness

    harness.ensure_comfy()
    torch.set_num_threads(args.threads)
    rows = []
    samplers = args.samplers.split(",")
    for arch in args.arch.split(","):
        rows += run(arch, args.schedules.split(","), args.seeds, steps=args.steps, samplers=samplers, cfg=args.cfg)
    by_sampler = samplers != ["euler"]
    lines = [f"CacheDit Accelerate's default in ComfyUI (commit of COMFYUI_PATH), bundled models in ComfyUI's own "
             f"classes, {args.steps} {'steps' if by_sampler else 'Euler steps'}, "
             f"{f'CFG {args.cfg:g} batched' if args.cfg != 1 else 'CFG 1 (positive only)'}, batch 8, seeds 0-{args.seeds - 1}; "
             f"quality only (`!`: below 40 dB; inf: every step computed, the uncached images)", "",
             f"| model | schedule |{' sampler |' if by_sampler else ''} PSNR dB pooled | worst seed | "
             f"steps computed per seed (of {args.steps}) |", "|---|---|---|---|---|" + ("---|" if by_sampler else "")]
    for arch, schedule, sampler, pooled, worst, computed in rows:
        flag = " !" if pooled < 40.0 else ""
        lines.append(f"| {arch} | {schedule} |{f' {sampler} |' if by_sampler else ''} {pooled:.2f}{flag} | {worst:.2f} | "
                     f"{', '.join(map(str, computed))} |")
    write_markdown("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
