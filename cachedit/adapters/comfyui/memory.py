"""ComfyUI memory: where the cache goes (`cache_device="auto"`) and telling ComfyUI's planner about it.

Before each sampling run ComfyUI's `prepare_sampling` asks the model how much memory sampling
needs (`BaseModel.memory_required`) and loads or offloads weights so that much stays free. The
cache is memory on the model's device the planner would not know about (a FLUX-layout cache
holds five hidden-state-sized tensors per CFG branch: 2-3 GB for Wan 14B at 480p), so our keyed
`WrappersMP.PREPARE_SAMPLING` wrapper adds the cache's bytes on that device to `memory_required`
while ComfyUI plans (context windows use the same wrapper to change the plan), then restores it.

`auto` is decided there too, per run: the cache goes to the model's offload device when ComfyUI
is low on VRAM: its VRAM state is LOW_VRAM / NO_VRAM, or what the device has free (plus what
ComfyUI could free by unloading other models) is below what this run needs there: the weights
not loaded yet, ComfyUI's own inference estimate and reserve, and the cache.

The estimate: the bytes the cache held per latent element on this model's last run, else
hidden size x tokens x tensors (hidden size: the commonest `in_features` of the first block's
Linear layers; tokens: latent positions / 4, the 2x2 patch of every DiT ComfyUI runs; tensors:
the probe, each block list's residual and TaylorSeer terms, per CFG branch, plus the two probe
buffers).
"""

from __future__ import annotations

import collections
import logging
import math
from typing import Any, Callable, Optional, Sequence

import torch

logger = logging.getLogger("cachedit")


def hidden_size(diffusion_model: Any, lists: Sequence[str]) -> Optional[int]:
    """The transformer's hidden size, read from its first block (None: no block list)."""
    for attr in lists:
        blocks = getattr(diffusion_model, attr, None)
        if blocks is None or len(blocks) == 0:
            continue
        block = blocks[0] if isinstance(blocks, torch.nn.ModuleList) else next(iter(blocks.children()), None)
        sizes = collections.Counter(m.in_features for m in block.modules() if isinstance(m, torch.nn.Linear))
        if sizes:
            return sizes.most_common(1)[0][0]
    return None


def estimate_bytes(handle: Any, noise_shape: Sequence[int], dtype: torch.dtype) -> tuple:
    """(total, probe part) of the cache's bytes for a run on a latent of `noise_shape`."""
    engine = handle.engine
    numel = math.prod(noise_shape)
    if handle.bytes_per_element:
        total = int(handle.bytes_per_element * numel)
        return total, int(total * handle.probe_share)
    size = torch.empty((), dtype=dtype).element_size()
    if engine.step_level:
        total = 2 * 2 * numel * size  # last input and output per branch, cond and uncond
        return total, 0
    dm = handle.owner.model.diffusion_model
    hidden = hidden_size(dm, [a for a, _ in handle.layout.lists]) or 3072
    per_tensor = 2 * noise_shape[0] * max(1, math.prod(noise_shape[2:]) // 4) * hidden * size  # cond + uncond
    order = max(engine.options.taylorseer_order, engine.base_options.max_taylorseer_order)  # a long run may raise it
    probe = (1 if engine.strategy.needs_probe else 0)
    residuals = len(handle.layout.lists) * (order + 1)
    total = per_tensor * (probe + residuals) + per_tensor * 2  # + the two probe buffers (per call batch)
    return total, per_tensor * (probe + 2)


def low_on_vram(patcher: Any, device_bytes: int, noise_shape: Sequence[int]) -> bool:
    """Whether ComfyUI is low on memory on the model's load device for this run (see module doc)."""
    import comfy.model_management as mm  # noqa: PLC0415

    device = patcher.load_device
    if torch.device(device).type == "cpu":
        return False
    if mm.vram_state in (mm.VRAMState.LOW_VRAM, mm.VRAMState.NO_VRAM):
        return True
    try:
        free = mm.get_free_memory(device)
        freeable = sum(lm.model_loaded_memory() for lm in mm.current_loaded_models
                       if lm.device == device and lm.model is not None and not lm.model.is_clone(patcher))
        weights = patcher.model_size() - patcher.loaded_size()
        inference = patcher.model.memory_required([noise_shape[0] * 2, *noise_shape[1:]])
        need = weights + inference + mm.minimum_inference_memory() + device_bytes
    except Exception:  # an unusual ComfyUI or model: never break sampling over a placement guess
        logger.debug("cachedit: could not read ComfyUI's memory state", exc_info=True)
        return False
    return free + freeable < need


def prepare_sampling_wrapper(handle: Any) -> Callable:
    """The keyed PREPARE_SAMPLING wrapper: decide `auto`, add the cache to ComfyUI's estimate."""
    engine = handle.engine

    def prepare_sampling(executor, model, noise_shape, *args, **kwargs):
        if not engine.enabled:
            return executor(model, noise_shape, *args, **kwargs)
        base = model.model
        dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
        total, probe = estimate_bytes(handle, list(noise_shape), dtype)
        placement = engine.placement
        placement.auto_device = None
        if placement.mode == "auto" and not engine.step_level and low_on_vram(model, total, noise_shape):
            placement.auto_device = torch.device(model.offload_device)
        on_device = not placement.offloaded(torch.device(model.load_device))
        extra = total if on_device or engine.step_level else probe
        handle.planned = {"device_bytes": extra, "cache_bytes": total, "cache_device": str(
            placement.device_for(torch.device(model.load_device)))}
        had_own = "memory_required" in base.__dict__
        previous = base.memory_required

        def memory_required(input_shape, *a, **kw):
            return previous(input_shape, *a, **kw) + extra

        base.memory_required = memory_required
        try:
            return executor(model, noise_shape, *args, **kwargs)
        finally:
            if base.__dict__.get("memory_required") is memory_required:
                if had_own:
                    base.memory_required = previous
                else:
                    del base.memory_required

    prepare_sampling._cachedit = True
    return prepare_sampling


def remember_run(handle: Any, noise: Any) -> None:
    """After a run (before its buffers go): the bytes per latent element the cache held, for the
    next estimate, and the share of them that stays on the model's device (the probe's)."""
    if not isinstance(noise, torch.Tensor) or noise.numel() == 0:
        return
    by_device = handle.engine.buffer_bytes_by_device()
    total = sum(by_device.values())
    if total:
        handle.bytes_per_element = total / noise.numel()
        probe = sum(b.nbytes() for b in handle.engine.placer.all_buffers())
        handle.probe_share = min(1.0, probe / total)
