"""CacheDit Accelerate's default in real ComfyUI with a ControlNet applied: PSNR and computed steps.

    COMFYUI_PATH=/path/to/ComfyUI .venv/bin/python -m benchmarks.comfyui_control [--arch flux,qwen]

A ControlNet adds its own residual to the hidden stream after each DiT block, in the model's
forward loop, outside the blocks a cache skips (ComfyUI's Flux, Chroma, HunyuanVideo, SD3 and
Qwen-Image all do `img[:, :n] += control["input"][i]`). There are no ControlNet weights for the
bundled models, so `BlockResidualControl` stands in for one through ComfyUI's own ControlBase:
for every block a residual computed from this step's noisy latent and a fixed hint, bounded
(tanh) at `scale` (0.3: about 14% of the FLUX layout's hidden RMS, 1.0: about 45%), scaled by
the strength and the start / end percent as ComfyUI's ControlNet nodes do. On the FLUX layout a
real ComfyUI ControlNet runs as well: `comfy.ldm.flux.controlnet.ControlNetFlux` (InstantX-style,
latent hint; 2 double and 4 single blocks sharing the bundled model's weights, its control
projections random at std `size`) in `comfy.controlnet.ControlNet`, with a generated digit as
the hint. Either goes into both conditionings, as Apply ControlNet (advanced) puts it.

Each bundled model in ComfyUI's own class, 28 Euler steps, CFG 3 batched, batch 8, seeds
0..n-1, uncached and with `cachedit.enable_cache(patcher)`. `--positive-only`: the control on the
positive alone, as the legacy Apply ControlNet node puts it (the two branches then run as separate
calls of different form) -> benchmarks/results/comfyui_control_positive.md. Quality only (no timing): PSNR
pooled over every image, the worst seed's, and the steps each generation computed. Writes
benchmarks/results/comfyui_control.md. Wan has no ControlNet in ComfyUI (its VACE hints are
added the same way; tests/test_block_injections.py covers that path with diffusers' keywords).
"""

from __future__ import annotations

import functools
import os
import sys

import torch

from .common import comfyui_quality_rows, seeds_quality, write_markdown

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# (control, size, end percent): "none", "stand-in" (BlockResidualControl at scale `size`) or
# "ControlNetFlux" (FLUX layout only; control projections at std `size`)
CASES = (("none", 0.0, 1.0), ("stand-in", 0.3, 1.0), ("stand-in", 1.0, 1.0), ("stand-in", 0.3, 0.5), ("stand-in", 1.0, 0.5))
FLUX_CASES = (("ControlNetFlux", 0.05, 1.0), ("ControlNetFlux", 0.01, 1.0), ("ControlNetFlux", 0.05, 0.5),
              ("ControlNetFlux", 0.01, 0.5))
# `--positive-only`: the control on the positive conditioning alone (the legacy Apply ControlNet node):
# the negative's calls then run without additions, apart from the positive's
POSITIVE_CASES = (("stand-in", 0.3, 1.0), ("stand-in", 1.0, 1.0))
FLUX_POSITIVE_CASES = (("ControlNetFlux", 0.05, 1.0), ("ControlNetFlux", 0.01, 1.0))


@functools.lru_cache(maxsize=None)
def control_class():
    """BlockResidualControl (built on first use: ComfyUI must be importable)."""
    from comfy.controlnet import ControlBase

    class BlockResidualControl(ControlBase):
        """A ControlNet stand-in: per-block residuals from the noisy latent and a fixed hint."""

        def __init__(self, n_input: int, n_output: int, dim: int, scale: float, seed: int = 0) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.n_input, self.scale = n_input, scale
            self.weights = torch.randn(n_input + n_output, 4, dim, generator=g) * 0.5
            self.hint = torch.randn(n_input + n_output, 64, dim, generator=g)

        def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
            if self.timestep_range is not None and not (self.timestep_range[1] <= float(t[0]) <= self.timestep_range[0]):
                return None  # outside start / end percent, like ComfyUI's ControlNet
            x = x_noisy.float()
            x = x.squeeze(2) if x.ndim == 5 else x
            b = x.shape[0]
            tokens = x.reshape(b, 1, 8, 2, 8, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, 64, 4)  # 2x2 patches
            adds = [self.scale * torch.tanh(tokens @ w + h) for w, h in zip(self.weights, self.hint)]
            return self.control_merge({"input": adds[:self.n_input], "output": adds[self.n_input:]}, None,
                                      x_noisy.dtype)

        def copy(self):
            c = BlockResidualControl.__new__(BlockResidualControl)
            ControlBase.__init__(c)
            self.copy_to(c)
            c.n_input, c.scale, c.weights, c.hint = self.n_input, self.scale, self.weights, self.hint
            return c

    return BlockResidualControl


def make_control(diffusion_model, scale: float, end_percent: float = 1.0, strength: float = 1.0):
    """A control for a bundled model in ComfyUI: Flux gets double ("input") and single ("output")
    block residuals, Qwen-Image one per transformer block."""
    dm = diffusion_model
    if hasattr(dm, "double_blocks"):
        n_input, n_output, dim = len(dm.double_blocks), len(dm.single_blocks), dm.hidden_size
    else:
        n_input, n_output, dim = len(dm.transformer_blocks), 0, dm.inner_dim
    control = control_class()(n_input, n_output, dim, scale)
    return control.set_cond_hint(None, strength, (0.0, end_percent))


def controlnet_flux(patcher, bundled, size: float, end_percent: float = 1.0, seed: int = 0):
    """ComfyUI's own Flux ControlNet for the bundled FLUX layout (see the module docstring)."""
    import json

    import comfy.controlnet
    import comfy.ldm.flux.controlnet
    import comfy.ops

    from cachedit.bundled import comfyui as bundled_comfy

    with open(os.path.join(ROOT, "cachedit", "bundled", "digits_flux_config.json")) as fh:
        cfg = json.load(fh)["transformer"]
    model = comfy.ldm.flux.controlnet.ControlNetFlux(
        latent_input=True, operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="cpu",
        in_channels=cfg["in_channels"] // 4, out_channels=cfg["out_channels"] // 4, patch_size=2,
        vec_in_dim=cfg["pooled_projection_dim"], context_in_dim=cfg["joint_attention_dim"],
        hidden_size=cfg["num_attention_heads"] * cfg["attention_head_dim"], mlp_ratio=4.0,
        num_heads=cfg["num_attention_heads"], depth=2, depth_single_blocks=4, axes_dim=list(cfg["axes_dims_rope"]),
        theta=10000, qkv_bias=True, guidance_embed=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # disable_weight_init leaves them uninitialised
            p.copy_(torch.randn(p.shape, generator=g) * (size if "controlnet" in name else 0.02) if p.dim() > 1
                    else torch.zeros_like(p))
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in patcher.model.diffusion_model.state_dict().items()
                               if k in own and own[k].shape == v.shape}, strict=False)
    hint = bundled_comfy.generate(patcher, bundled, torch.arange(8) % 10, seed=100)  # digits as the control image
    control = comfy.controlnet.ControlNet(model, compression_ratio=1, latent_format=None,
                                          load_device=torch.device("cpu"), extra_conds=["y", "guidance"])
    return control.set_cond_hint(hint * 2 - 1, 1.0, (0.0, end_percent))


def run(arch: str, seeds: int, cases=None, steps: int = 28, positive_only: bool = False):
    """Rows (arch, control, size, end percent, pooled PSNR, worst seed PSNR, computed steps per seed);
    `positive_only`: the control on the positive conditioning only (POSITIVE_CASES by default)."""
    import cachedit
    from cachedit.bundled import comfyui as bundled_comfy

    patcher, bundled = bundled_comfy.load_patcher(arch)
    if cases is None and positive_only:
        cases = POSITIVE_CASES + (FLUX_POSITIVE_CASES if arch == "flux" else ())
    elif cases is None:
        cases = CASES + (FLUX_CASES if arch == "flux" else ())
    negative = {} if positive_only else None
    rows = []
    for kind, size, end in cases:
        if kind == "ControlNetFlux":
            options = {"control": controlnet_flux(patcher, bundled, size, end)}
        else:
            options = {"control": make_control(patcher.model.diffusion_model, size, end)} if kind != "none" else None
        accelerated = cachedit.enable_cache(patcher)

        def images(k):
            labels = torch.tensor([(8 * k + i) % 10 for i in range(8)])
            reference = bundled_comfy.generate(patcher, bundled, labels, steps=steps, seed=k, cond_options=options,
                                               uncond_options=negative)
            return bundled_comfy.generate(accelerated, bundled, labels, steps=steps, seed=k,
                                          cond_options=options, uncond_options=negative), reference

        pooled, worst, computed = seeds_quality(accelerated, steps, seeds, images)
        cachedit.disable_cache(accelerated)
        rows.append((arch, kind, size, end, pooled, worst, computed))
        print(f"{arch} {kind} {size:g} until {end:g}: {pooled:.2f} dB (worst seed {worst:.2f}), computed {computed}",
              file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    positive_only = "--positive-only" in argv
    argv = [a for a in argv if a != "--positive-only"]
    out = os.path.join(HERE, "results", "comfyui_control_positive.md" if positive_only else "comfyui_control.md")
    args, rows = comfyui_quality_rows(__doc__, argv, "flux,qwen", out,
                                      functools.partial(run, positive_only=positive_only))
    where = ("on the positive conditioning only (the negative's calls without it, run apart)" if positive_only
             else "on both conditionings")
    lines = [f"CacheDit Accelerate's default in ComfyUI (commit of COMFYUI_PATH) with a ControlNet {where} from 0% to the "
             f"end percent, strength 1: the stand-in (`BlockResidualControl`, per-block residuals bounded at `size`) "
             f"or ComfyUI's ControlNetFlux (control projections at std `size`); bundled models in ComfyUI's own "
             f"classes, 28 Euler steps, CFG 3 ({'two calls per step' if positive_only else 'batched'}), batch 8, "
             f"seeds 0-{args.seeds - 1}; quality only (`!`: below "
             f"40 dB)", "",
             "| model | control | size | end percent | PSNR dB pooled | worst seed | steps computed per seed |",
             "|---|---|---|---|---|---|---|"]
    for arch, kind, size, end, pooled, worst, computed in rows:
        flag = " !" if pooled < 40.0 else ""
        lines.append(f"| {arch} | {kind} | {size:g} | {end:g} | {pooled:.2f}{flag} | {worst:.2f} | "
                     f"{', '.join(map(str, computed))} |")
    write_markdown("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
