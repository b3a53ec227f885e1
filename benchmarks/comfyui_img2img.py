"""CacheDit Accelerate's default in real ComfyUI on img2img / hires-fix passes (denoise < 1).

    COMFYUI_PATH=/path/to/ComfyUI .venv/bin/python -m benchmarks.comfyui_img2img [--arch flux,wan,qwen]

Each bundled model in ComfyUI's own class, 28 Euler steps at CFG 3 batched, batch 8: a source
image is generated (other digits, seed 100 + k), then sampled again from it over the last part of
the bundled schedule (denoise d: the last 28 of round(28 / d) steps, as KSampler's denoise does),
uncached and with `cachedit.enable_cache(patcher)`. Seeds 0..n-1; calibration carries over from
one generation to the next. Quality only (no timing): PSNR pooled over every image (mean MSE), the
worst seed's, and the steps each generation computed. Writes benchmarks/results/comfyui_img2img.md.
"""

from __future__ import annotations

import os
import sys

import torch

from .common import comfyui_quality_rows, seeds_quality, write_markdown

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = ((28, 1.0), (28, 0.75), (28, 0.6), (28, 0.5), (20, 0.5), (50, 0.5))  # (steps, denoise)


def _generate(patcher, bundled, labels, seed: int, sigmas, latent):
    """SamplerCustom-like euler sampling from `latent` (ComfyUI's latent); returns ComfyUI's latent."""
    import comfy.sample
    import comfy.samplers

    from cachedit.bundled import digits as D

    with torch.no_grad():
        cond = bundled.condition(labels)
        uncond = bundled.condition(torch.full_like(labels, D.NULL_LABEL))

    def entry(c):
        return [[c[0], {"pooled_output": c[1]} if c[1] is not None else {}]]

    noise = torch.randn((labels.shape[0], 1, 16, 16), generator=torch.Generator().manual_seed(seed))
    if bundled.arch != "flux":
        noise = noise.unsqueeze(2)
    with torch.inference_mode():
        return comfy.sample.sample_custom(patcher, noise, 3.0, comfy.samplers.sampler_object("euler"), sigmas,
                                          entry(cond), entry(uncond), latent, disable_pbar=True, seed=seed)


def run(arch: str, seeds: int, cases=CASES):
    """Rows (arch, steps, denoise, pooled PSNR, worst seed PSNR, computed steps per seed)."""
    import cachedit
    from cachedit.bundled import comfyui as bundled_comfy
    from cachedit.bundled import digits as D

    patcher, bundled = bundled_comfy.load_patcher(arch)
    latent_format = patcher.model.latent_format

    def image(latent):
        z = latent_format.process_in(latent)
        return ((z.squeeze(2) if z.ndim == 5 else z) + 1.0).mul(0.5).clamp(0.0, 1.0)

    rows = []
    for steps, denoise in cases:
        sigmas = D.sigmas_schedule(int(round(steps / denoise)), bundled.sigma_shift)[-(steps + 1):]
        accelerated = cachedit.enable_cache(patcher)

        def images(k):
            labels = torch.tensor([(8 * k + i) % 10 for i in range(8)])
            source = _generate(patcher, bundled, (labels + 3) % 10, 100 + k, D.sigmas_schedule(28, bundled.sigma_shift),
                               torch.zeros(1))  # the image to start from: other digits
            reference = _generate(patcher, bundled, labels, k, sigmas, source)
            return image(_generate(accelerated, bundled, labels, k, sigmas, source)), image(reference)

        pooled, worst, computed = seeds_quality(accelerated, steps, seeds, images)
        cachedit.disable_cache(accelerated)
        rows.append((arch, steps, denoise, pooled, worst, computed))
        print(f"{arch} {steps} steps, denoise {denoise}: {pooled:.2f} dB (worst seed {worst:.2f}), computed {computed}",
              file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> None:
    args, rows = comfyui_quality_rows(__doc__, argv, "flux,wan,qwen", os.path.join(HERE, "results", "comfyui_img2img.md"),
                                      run)
    lines = [f"CacheDit Accelerate's default in ComfyUI (commit of COMFYUI_PATH) on img2img from a generated image, "
             f"bundled models in ComfyUI's own classes, Euler, CFG 3 batched, batch 8, seeds 0-{args.seeds - 1}; "
             f"quality only (`!`: below 40 dB)", "",
             "| model | steps | denoise | PSNR dB pooled | worst seed | steps computed per seed |", "|---|---|---|---|---|---|"]
    for arch, steps, denoise, pooled, worst, computed in rows:
        flag = " !" if pooled < 40.0 else ""
        lines.append(f"| {arch} | {steps} | {denoise:g} | {pooled:.2f}{flag} | {worst:.2f} | "
                     f"{', '.join(map(str, computed))} |")
    write_markdown("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
