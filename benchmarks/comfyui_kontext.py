"""CacheDit Accelerate's default in real ComfyUI on a FLUX.1 Kontext-style edit: PSNR and computed steps.

    COMFYUI_PATH=/path/to/ComfyUI .venv/bin/python -m benchmarks.comfyui_kontext

FLUX.1 Kontext (and Qwen-Image-Edit) condition on a reference image by appending its clean latent
tokens after the noisy image tokens (ComfyUI: the ReferenceLatent node puts `reference_latents`
into the conditioning; Flux's forward concatenates them, RoPE ids (1, row, col), and keeps only
the image tokens of the output). The bundled Kontext-style model
(`cachedit/bundled/kontext.py`, trained by `scripts/train_kontext.py`) is the bundled FLUX
layout fine-tuned on one edit, "mirror the reference digit", loaded into ComfyUI's Flux class.

Cases, 28 Euler steps, batch 8 (dataset digits as references, their labels as prompts), seeds 0..n-1:
* reference on both conditionings, CFG 3 (batched cond/uncond call);
* reference on the positive only, CFG 3 (the two calls differ in length: ComfyUI runs them apart);
* CFG 1 (Kontext dev's usual setting: guidance distilled, the negative never runs);
* the plain bundled FLUX model given the same references (never trained with them: a stress case).
Quality only (no timing): PSNR of `cachedit.enable_cache(patcher)` against the uncached images,
pooled and worst seed, steps computed per seed (summary's first branch), and the edit accuracy
(the output mirrored back, classified as the reference's digit) uncached -> cached.
Writes benchmarks/results/comfyui_kontext.md.
"""

from __future__ import annotations

import os
import sys

import torch

from .common import comfyui_quality_rows, psnr_of_mse, write_markdown

HERE = os.path.dirname(os.path.abspath(__file__))

# (model, where the reference goes, cfg): model "kontext" (trained with references) or "flux" (not)
CASES = (("kontext", "both", 3.0), ("kontext", "positive", 3.0), ("kontext", "both", 1.0), ("flux", "both", 3.0))


def references(seed: int, batch: int = 8) -> "tuple[torch.Tensor, torch.Tensor]":
    """(reference images [B, 1, 16, 16] in [0, 1], their labels) for one seed: dataset digits."""
    from cachedit.bundled import digits as D

    images, labels = D.digits_dataset()
    pick = (torch.arange(batch) * 97 + seed * 389) % images.shape[0]
    return images[pick], labels[pick]


def run(arch: str, seeds: int, cases=CASES, steps: int = 28):
    """Rows (model, reference on, cfg, pooled PSNR, worst seed PSNR, computed per seed, accuracy uncached, cached)."""
    import cachedit
    from cachedit.bundled import comfyui as bundled_comfy
    from cachedit.bundled import kontext as K
    from cachedit.bundled.metrics import digit_accuracy

    if arch != "flux":
        raise SystemExit("benchmarks.comfyui_kontext: Kontext-style references are measured on the FLUX layout only")
    models = {"kontext": bundled_comfy.load_patcher("flux", weights=K.WEIGHTS_PATH),
              "flux": bundled_comfy.load_patcher("flux")}
    rows = []
    for name, on, cfg in cases:
        patcher, bundled = models[name]
        accelerated = cachedit.enable_cache(patcher)
        mses, computed, acc_ref, acc_out = [], [], [], []
        for k in range(seeds):
            ref_images, labels = references(k)
            latent = patcher.model.latent_format.process_out(ref_images * 2 - 1)  # as VAEEncode hands it over
            options = {"reference_latents": [latent]}
            negative = {} if on == "positive" else None
            kwargs = dict(steps=steps, seed=k, cfg=cfg, cond_options=options, uncond_options=negative)
            reference = bundled_comfy.generate(patcher, bundled, labels, **kwargs)
            cachedit.reset_cache_stats(accelerated)
            out = bundled_comfy.generate(accelerated, bundled, labels, **kwargs)
            computed.append(steps - len(cachedit.summary(accelerated, logging=False)[0].cached_steps))
            mses.append(float(((out - reference) ** 2).mean()))
            acc_ref.append(digit_accuracy(K.edit_target(reference), labels))
            acc_out.append(digit_accuracy(K.edit_target(out), labels))
        cachedit.disable_cache(accelerated)
        pooled, worst = psnr_of_mse(sum(mses) / len(mses)), min(psnr_of_mse(m) for m in mses)
        row = (name, on, cfg, pooled, worst, computed, sum(acc_ref) / seeds, sum(acc_out) / seeds)
        rows.append(row)
        print(f"{name} reference on {on}, CFG {cfg:g}: {pooled:.2f} dB (worst seed {worst:.2f}), computed {computed}, "
              f"edit accuracy {row[6]:.3f} -> {row[7]:.3f}", file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> None:
    args, rows = comfyui_quality_rows(__doc__, argv, "flux", os.path.join(HERE, "results", "comfyui_kontext.md"), run)
    lines = [f"CacheDit Accelerate's default in ComfyUI (commit of COMFYUI_PATH) on a Kontext-style edit: "
             f"`reference_latents` in the conditioning (as ReferenceLatent sets it), the bundled Kontext-style model "
             f"(`kontext`: FLUX layout fine-tuned to mirror the reference) and the plain FLUX layout (`flux`, never "
             f"trained with references), 28 Euler steps, batch 8, seeds 0-{args.seeds - 1}; quality only (`!`: below "
             f"40 dB). Edit accuracy: the output mirrored back, classified as the reference's digit.", "",
             "| model | reference on | CFG | PSNR dB pooled | worst seed | steps computed per seed | edit accuracy uncached -> cached |",
             "|---|---|---|---|---|---|---|"]
    for name, on, cfg, pooled, worst, computed, acc_ref, acc_out in rows:
        flag = " !" if pooled < 40.0 else ""
        lines.append(f"| {name} | {on} | {cfg:g} | {pooled:.2f}{flag} | {worst:.2f} | {', '.join(map(str, computed))} | "
                     f"{acc_ref:.3f} -> {acc_out:.3f} |")
    write_markdown("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
