"""Shared pieces of the benchmarks: machine info, the Euler sampler, compute/memory counters, timing.

Everything here is framework plumbing for measuring; nothing in it changes what a cache does.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import math
import os
import platform
import statistics
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

# Re-exported: the counters used to live here.
from .counters import (  # noqa: F401
    ComputeCounter,
    block_lists,
    diffusers_hook_roots,
    param_ptrs,
    reachable_tensor_bytes,
)


# ----------------------------------------------------------------------------------------------
# Machine
# ----------------------------------------------------------------------------------------------
def machine_info(threads: Optional[int] = None) -> Dict[str, str]:
    """CPU model, cores, torch/diffusers/cache-dit versions and the date, for every results file."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
    }
    if threads is not None:
        info["torch threads"] = str(threads)
    for pkg in ("diffusers", "cache_dit"):
        try:
            mod = __import__(pkg)
            info[pkg.replace("_", "-")] = getattr(mod, "__version__", "?")
        except Exception:  # noqa: BLE001 - optional
            info[pkg.replace("_", "-")] = "not installed"
    try:
        with open("/proc/loadavg") as f:
            info["load avg at start"] = " ".join(f.read().split()[:3])
    except OSError:
        pass
    return info


def machine_block(info: Dict[str, str]) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in info.items())


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """Everything a flow-matching Euler run needs (batched CFG when `guidance` is set).

    The transformer's call arguments come from `cachedit.bundled.archs.transformer_kwargs` for
    `arch` (the one place that knows each layout's kwargs)."""

    latents: torch.Tensor  # noise in the layout's latent shape ([B, N, C] packed for Flux)
    ehs: torch.Tensor  # encoder hidden states of the model call ([2B, ...] with CFG: uncond first)
    pooled: Optional[torch.Tensor]  # pooled text embedding (Flux) or None
    sigmas: torch.Tensor  # steps + 1 values, 1 -> 0
    guidance: Optional[float] = None
    arch: str = "flux"  # key of cachedit.bundled.archs.ARCHS

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def call_batch(self) -> int:
        return self.latents.shape[0] * (2 if self.guidance is not None else 1)

    def call_kwargs(self, x: torch.Tensor, sigma: float) -> Dict[str, Any]:
        """Keyword arguments of the transformer call on `x` (the call's batch) at `sigma`."""
        from cachedit.bundled.archs import transformer_kwargs

        return transformer_kwargs(self.arch, x, sigma, (self.ehs, self.pooled))

    def velocity(self, output: Any) -> torch.Tensor:
        """The velocity from the call's first output (`cachedit.bundled.archs.velocity`)."""
        from cachedit.bundled.archs import velocity

        return velocity(self.arch, output)

    @property
    def img_ids(self) -> torch.Tensor:
        """Flux's image position ids (what the model call gets; their count = image tokens)."""
        return self.call_kwargs(self.latents, 1.0)["img_ids"]

    @property
    def txt_ids(self) -> torch.Tensor:
        return self.call_kwargs(self.latents, 1.0)["txt_ids"]


def diffusers_cache_api(transformer: nn.Module, name: str) -> Callable[..., Any]:
    """diffusers' `CacheMixin.<name>` (enable_cache, disable_cache, cache_context, _reset_stateful_cache)
    for `transformer`. A model class without the mixin (SD3Transformer2DModel in diffusers 0.42) gets the
    mixin's functions bound to it, and for enable_cache the public `diffusers.hooks.apply_*` function the
    mixin would call (its own enable_cache reads a property the class lacks): the same hooks on the
    same modules, which is how a user gives such a model diffusers' caches."""
    from diffusers.models.cache_utils import CacheMixin

    if isinstance(transformer, CacheMixin):
        return getattr(transformer, name)
    if not hasattr(transformer, "_cache_config"):
        transformer._cache_config = None
    if name == "enable_cache":
        return functools.partial(_apply_diffusers_cache, transformer)
    return types.MethodType(getattr(CacheMixin, name), transformer)


def _apply_diffusers_cache(transformer: nn.Module, config: Any) -> None:
    """`CacheMixin.enable_cache(config)` for a model without the mixin."""
    from diffusers import hooks as H

    apply = {"FasterCacheConfig": H.apply_faster_cache, "FirstBlockCacheConfig": H.apply_first_block_cache,
             "MagCacheConfig": H.apply_mag_cache, "PyramidAttentionBroadcastConfig": H.apply_pyramid_attention_broadcast,
             "TaylorSeerCacheConfig": H.apply_taylorseer_cache, "SeaCacheConfig": H.apply_sea_cache}[type(config).__name__]
    if transformer._cache_config is not None:
        raise ValueError("a diffusers cache is already enabled on this model")
    apply(transformer, config)
    H.HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    transformer._cache_config = config


@dataclass
class SampleHooks:
    """Optional per-run plumbing the caches need: diffusers' cache_context, a timestep holder
    (PyramidAttentionBroadcast / FasterCache read it), and an after-step callback."""

    diffusers_context: bool = False
    after_step: Optional[Callable[[int], None]] = None
    current_timestep: List[float] = field(default_factory=lambda: [1000.0])
    arch: str = "flux"  # the transformer's layout (set by the diffusers methods)


def euler(transformer: nn.Module, inp: Inputs, hooks: Optional[SampleHooks] = None) -> torch.Tensor:
    """The Euler loop of `cachedit.bundled.digits.generate` (batched CFG, uncond half first),
    generalised to any inputs; returns the final packed latents. Bit-identical to `generate`."""
    x = inp.latents
    n = inp.steps
    with torch.no_grad():
        for i in range(n):
            s, s_next = float(inp.sigmas[i]), float(inp.sigmas[i + 1])
            dt = s_next - s
            h = torch.cat([x, x], dim=0) if inp.guidance is not None else x
            ctx: Any = contextlib.nullcontext()
            if hooks is not None:
                hooks.current_timestep[0] = s * 1000.0
                if hooks.diffusers_context:
                    ctx = diffusers_cache_api(transformer, "cache_context")("cond", step_index=i, num_inference_steps=n,
                                                                            timestep=s * 1000.0, sigma=s)
            with ctx:
                out = inp.velocity(transformer(**inp.call_kwargs(h, s))[0])
            if inp.guidance is not None:
                v_unc, v_cond = out.chunk(2)
                v = v_unc + inp.guidance * (v_cond - v_unc)
            else:
                v = out
            x = x + dt * v
            if hooks is not None and hooks.after_step is not None:
                hooks.after_step(i)
    return x


def bundled_inputs(model, labels: Sequence[int], steps: int, guidance: float = 3.0, seed: int = 0) -> Inputs:
    """The inputs `digits.generate(model, labels, steps, guidance, seed, cfg_mode="batched")` uses
    (any bundled arch: `model.arch`)."""
    from cachedit.bundled import archs as A
    from cachedit.bundled import digits as D

    p = next(model.transformer.parameters())
    device, dtype = p.device, p.dtype
    labels_t = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    b = labels_t.shape[0]
    latents = A.initial_latents(model.arch, b, seed, device=device, dtype=dtype)
    with torch.no_grad():
        cond_ehs, cond_pooled = model.condition(labels_t.to(device))
        unc_ehs, unc_pooled = model.condition(torch.full((b,), D.NULL_LABEL, dtype=torch.long, device=device))
    pooled = torch.cat([unc_pooled, cond_pooled], 0) if cond_pooled is not None else None
    return Inputs(latents=latents, ehs=torch.cat([unc_ehs, cond_ehs], 0), pooled=pooled,
                  sigmas=D.sigmas_schedule(steps, model.sigma_shift), guidance=guidance, arch=model.arch)


def bundled_images(latents: torch.Tensor, arch: str = "flux") -> torch.Tensor:
    """Final latents -> images [B, 1, 16, 16] in [0, 1], as `generate` returns them."""
    from cachedit.bundled import digits as D

    return D.latents_to_images(latents, arch)


def random_flux(hidden: int, heads: int, double: int, single: int, in_channels: int = 64, text_dim: Optional[int] = None,
                seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """A random-weight diffusers FluxTransformer2DModel of the given width/depth (eval, no grad)."""
    from diffusers import FluxTransformer2DModel

    head_dim = hidden // heads
    # RoPE axes must sum to the head dim (FLUX: 16 + 56 + 56 = 128).
    a0 = max(2, (head_dim // 8) // 2 * 2)
    rest = head_dim - a0
    a1 = rest // 2 // 2 * 2
    a2 = rest - a1
    torch.manual_seed(seed)
    with torch.device(device):  # initialise where it runs: a FLUX-width CPU init takes minutes
        model = FluxTransformer2DModel(
            patch_size=1, in_channels=in_channels, out_channels=in_channels, num_layers=double, num_single_layers=single,
            attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=text_dim or hidden,
            pooled_projection_dim=text_dim or hidden, guidance_embeds=False, axes_dims_rope=(a0, a1, a2))
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model


def random_inputs(model: nn.Module, batch: int, img_tokens: int, txt_tokens: int, steps: int, seed: int = 0,
                  guidance: Optional[float] = None) -> Inputs:
    """Random latents/text for `random_flux` (an image token grid of side sqrt(img_tokens))."""
    p = next(model.parameters())
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    side = int(round(img_tokens ** 0.5))
    assert side * side == img_tokens, "img_tokens must be a square"
    call_batch = batch * (2 if guidance is not None else 1)
    latents = torch.randn(batch, img_tokens, cfg.in_channels, generator=g).to(p.device, p.dtype)
    ehs = torch.randn(call_batch, txt_tokens, cfg.joint_attention_dim, generator=g).to(p.device, p.dtype)
    pooled = torch.randn(call_batch, cfg.pooled_projection_dim, generator=g).to(p.device, p.dtype)
    return Inputs(latents=latents, ehs=ehs, pooled=pooled, sigmas=torch.linspace(1.0, 0.0, steps + 1), guidance=guidance)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "n/a"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n / (1024 * 1024):.2f} MiB"


def psnr_of_mse(mse: float) -> float:
    """PSNR (dB) of images in [0, 1] from their mean squared error; identical images give inf."""
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def write_markdown(text: str, path: str) -> None:
    """Print a results table and write it to `path` (its folder made if needed)."""
    print(text)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text + "\n")


def seeds_quality(accelerated: Any, steps: int, seeds: int,
                  images: Callable[[int], "tuple[torch.Tensor, torch.Tensor]"]) -> "tuple[float, float, List[int]]":
    """(PSNR pooled over the seeds, the worst seed's PSNR, steps computed per seed) of an enabled
    model: `images(k)` makes seed k's (cached, reference) images in [0, 1] after its stats are reset."""
    import cachedit

    mses, computed = [], []
    for k in range(seeds):
        cachedit.reset_cache_stats(accelerated)
        cached, reference = images(k)
        mses.append(float(((cached - reference) ** 2).mean()))
        computed.append(steps - len(cachedit.summary(accelerated, logging=False)[0].cached_steps))
    return psnr_of_mse(sum(mses) / len(mses)), min(psnr_of_mse(m) for m in mses), computed


def comfyui_quality_rows(doc: str, argv: Optional[Sequence[str]], default_arch: str, default_out: str,
                         run: Callable[[str, int], list]) -> "tuple[Any, list]":
    """The command line the ComfyUI quality benchmarks share (--arch, --seeds, --threads, --out):
    imports ComfyUI from COMFYUI_PATH and returns (the arguments, `run(arch, seeds)`'s rows for
    every arch)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default=default_arch)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=default_out)
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.comfyui import harness

    harness.ensure_comfy()
    torch.set_num_threads(args.threads)
    rows: list = []
    for arch in args.arch.split(","):
        rows += run(arch, args.seeds)
    return args, rows
