"""ComfyUI hooks: the model-level wrappers and the block patches of one engine, installed on and
removed from a ModelPatcher through ComfyUI's official extension points only.

* a keyed `WrappersMP.OUTER_SAMPLE` wrapper: one sampling run = one engine run (closed before and,
  in a `finally`, after sampling, so a cancelled run leaves nothing behind); records the sigmas
  and tells the engine the guider's CFG scale and the sampler's name;
* a keyed `WrappersMP.APPLY_MODEL` wrapper (runs for every model, SD3 included): opens each model
  call with its step, its progress as ComfyUI measures it (the sigma's percent, progress.py), its
  CFG branch (keyed by the conditioning uuids) and whether a ControlNet / VACE adds to the
  hidden stream between blocks (`_adds_between_blocks`), and, for models without hookable
  blocks, reuses whole steps;
* block hooks on the blocks the engine gives a role, both driving the block protocol:
  `patches_replace["dit"]` patches where the model honours them (`ReplaceCodec`), and object
  patches of a block's `forward` where it does not (`BlockIO`). Object patches keep state_dict
  keys unchanged (LoRA weight patches still apply); ComfyUI restores them when it unpatches.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch

from ...manager.blocks import BlockIO
from ...manager.engine import CacheEngine
from ...manager.protocol import Streams, block_forward
from ...manager.sampler_kind import comfy_sampler_name
from ...config.presets import RunInfo
from .handle import KEY, _Handle
from .memory import prepare_sampling_wrapper, remember_run
from .layout import block_entries

# -- block hooks ------------------------------------------------------------------------------------


class ReplaceCodec:
    """Streams of a `patches_replace["dit"]` patch: `args["img"]` / `args["txt"]` are the hidden /
    encoder streams; the block returns a dict of the same keys (learned from its first output)."""

    __slots__ = ("returns",)

    def __init__(self) -> None:
        self.returns: Dict[str, bool] = {}  # keys the block returns -> whether that value is None (SD3's last txt)

    @property
    def ready(self) -> bool:
        return bool(self.returns)

    def learn(self, out: dict, args: tuple, kwargs: dict) -> None:
        self.returns.update({k: v is None for k, v in out.items()})

    def read_inputs(self, args: tuple, kwargs: dict) -> Streams:
        block_args = args[0]
        txt = block_args.get("txt")
        if isinstance(txt, torch.Tensor):
            return {"hidden": block_args["img"], "encoder": txt}
        return {"hidden": block_args["img"]}

    def read_outputs(self, out: dict) -> Streams:
        txt = out.get("txt")
        return {"hidden": out.get("img"), "encoder": txt} if txt is not None else {"hidden": out.get("img")}

    def make_output(self, streams: Streams, args: tuple, kwargs: dict) -> dict:
        block_args = args[0]
        out = {}
        for key, was_none in self.returns.items():
            if was_none:
                out[key] = None
            elif key == "img":
                out[key] = streams["hidden"]
            elif key == "txt":
                out[key] = streams.get("encoder", block_args.get("txt"))
            else:
                out[key] = block_args.get(key)
        return out


def _replace_patch(engine: CacheEngine, index: int, previous: Optional[Callable]) -> Callable:
    """A `patches_replace["dit"]` patch for engine block `index`; it chains `previous` (another
    node's patch for the same block) in place of the original block."""

    def run(args: dict, extra: dict) -> dict:
        return previous(args, extra) if previous is not None else extra["original_block"](args)

    patch = block_forward(engine, index, ReplaceCodec(), run)
    patch._cachedit = True
    patch._cachedit_previous = previous
    return patch


class _ForwardSignature:
    """Stands in for a block when BlockIO reads its forward signature (the block's `forward`
    attribute may be another clone's object patch at this moment)."""

    def __init__(self, forward: Callable) -> None:
        self.forward = forward


class _CopyingIO(BlockIO):
    """BlockIO whose reused outputs are fresh tensors: for models that write into the tensor passed
    between blocks (Cosmos 1's `x += extra_per_block_pos_emb`), where every skipped block would
    otherwise hand on the one reused tensor, written into once per block."""

    def make_output(self, streams, args=(), kwargs=None):
        return super().make_output({k: v.clone() if v is not None else None for k, v in streams.items()}, args, kwargs)


def _object_forward(engine: CacheEngine, index: int, original: Callable, previous_patch: Any,
                    copy_reused: bool = False) -> Callable:
    """A replacement `forward` for engine block `index` (installed as a ComfyUI object patch)."""
    codec = (_CopyingIO if copy_reused else BlockIO)(_ForwardSignature(original))
    forward = block_forward(engine, index, codec, original)
    forward._cachedit = True
    forward._cachedit_previous = previous_patch
    return forward


# -- model-level wrappers ---------------------------------------------------------------------------

def _outer_sample_wrapper(handle: _Handle) -> Callable:
    engine = handle.engine

    def outer_sample(executor, *args, **kwargs):
        sigmas = args[3] if len(args) > 3 else kwargs.get("sigmas")
        sampler = args[2] if len(args) > 2 else kwargs.get("sampler")
        engine.finish_run()
        handle.set_schedule(sigmas)
        engine.expect_run(_run_info(handle, getattr(executor, "class_obj", None), comfy_sampler_name(sampler)))
        try:
            return executor(*args, **kwargs)
        finally:
            remember_run(handle, args[0] if args else kwargs.get("noise"))
            engine.finish_run()
            handle.clear_schedule()

    outer_sample._cachedit = True
    return outer_sample


def _run_info(handle: _Handle, guider: Any, sampler: Optional[str] = None) -> RunInfo:
    """What a run covers (presets.py): its steps and the share of the whole denoising done at its
    first and last sigma (a Wan 2.2 expert's run covers one part of it), the guider's CFG scale and
    the `sampler`'s name (error feedback's budget follows both)."""
    cfg = getattr(guider, "cfg", None)  # CFGGuider's scale; BasicGuider has none, DualCFGGuider two
    guidance = float(cfg) if isinstance(cfg, (int, float)) and not isinstance(cfg, bool) else None
    schedule = handle.schedule
    if not schedule:
        return RunInfo(guidance=guidance, sampler=sampler)
    patcher = getattr(guider, "model_patcher", None)
    sampling = patcher.get_model_object("model_sampling") if patcher is not None else None
    start, end = handle.progress(sampling, schedule[0]), handle.progress(sampling, schedule[-1])
    return RunInfo(len(schedule) - 1, start if start is not None else 0.0, end, guidance, sampler)


def _span_start(handle: _Handle) -> Optional[float]:
    """The sigma error feedback's spans are measured from (progress.py): the run's first, except for
    Wan, whose run that starts late is Wan 2.2's low-noise expert, one part of a whole denoising
    (its spans stay fractions of sigma_max, as its presets were set)."""
    return None if handle.engine.family == "wan" else handle.first_sigma()


def _branch_key(transformer_options: dict) -> Optional[tuple]:
    uuids = transformer_options.get("uuids")
    if uuids:
        return tuple(uuids)
    cond_or_uncond = transformer_options.get("cond_or_uncond")
    if cond_or_uncond:
        return tuple(cond_or_uncond)
    return None


def _adds_between_blocks(args: tuple, kwargs: dict, transformer_options: dict) -> bool:
    """Whether this model call adds something to the hidden stream between DiT blocks: a
    ControlNet's per-block residuals (`control`: Flux, Chroma, HunyuanVideo, SD3, Qwen-Image), Wan
    VACE's hints (`vace_context`), or "double_block" patches (Qwen-Image's DiffSynth ControlNet)."""
    control = args[4] if len(args) > 4 else kwargs.get("control")
    return (control is not None or kwargs.get("vace_context") is not None
            or bool(transformer_options.get("patches", {}).get("double_block")))


def _reference_form(kwargs: dict) -> tuple:
    """The shapes of the reference latents this call appends to its image tokens (Flux Kontext,
    Qwen-Image-Edit: `ref_latents` from ReferenceLatent / TextEncodeQwenImageEdit), () without:
    what makes the CFG branches' hidden streams differ in form. Not the hidden stream's length,
    which also differs with the prompts' when a model runs text and image tokens as one stream
    (Lumina2) and ComfyUI cannot batch the two prompts."""
    refs = kwargs.get("ref_latents")
    if not isinstance(refs, (list, tuple)):
        return ()
    return tuple(tuple(r.shape) for r in refs if isinstance(r, torch.Tensor))


def _apply_model_wrapper(handle: _Handle) -> Callable:
    engine = handle.engine

    def apply_model(executor, *args, **kwargs):
        if not engine.enabled:
            return executor(*args, **kwargs)
        x = args[0] if args else kwargs.get("x")
        to = args[5] if len(args) > 5 else kwargs.get("transformer_options")
        if not isinstance(x, torch.Tensor) or not isinstance(to, dict):
            return executor(*args, **kwargs)
        t = args[1] if len(args) > 1 else kwargs.get("t")
        sigmas = to.get("sigmas", t)
        sigma = float(sigmas.reshape(-1)[0]) if isinstance(sigmas, torch.Tensor) and sigmas.numel() else None
        step, total = handle.step_of(sigma, to)
        # progress = the sigma's percent through the model's sampling (executor.class_obj is the
        # BaseModel, whose model_sampling carries a ModelSampling* node's shift while it samples)
        sampling = getattr(getattr(executor, "class_obj", None), "model_sampling", None)
        progress = handle.progress(sampling, sigma)
        call = engine.begin_call(sigma, _branch_key(to), (tuple(x.shape), x.dtype, x.device),
                                 total_steps=total, step_index=step, progress=progress,
                                 noise_progress=handle.progress.noise_progress(sampling, sigma, _span_start(handle)),
                                 model_input=x, injected=_adds_between_blocks(args, kwargs, to),
                                 form=_reference_form(kwargs))
        if call is None:
            return executor(*args, **kwargs)
        if engine.step_level and sigma and isinstance(t, torch.Tensor):
            return engine.run_call(call, lambda: _step_level(engine, call, executor, args, kwargs, x, t))
        return engine.run_call(call, lambda: executor(*args, **kwargs))

    apply_model._cachedit = True
    return apply_model


def _step_level(engine: CacheEngine, call, executor, args: tuple, kwargs: dict, x: torch.Tensor, t: torch.Tensor):
    """Whole-step reuse for models without hookable blocks. apply_model returns the denoised
    latent; the engine caches the model's prediction in noise space, eps = (x - denoised) / sigma
    (the velocity for flow models), as "output minus input", so a reused step is rescaled to its
    own sigma: denoised = x - sigma * eps."""
    sigma = t.reshape((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)
    holder: Dict[str, torch.Tensor] = {}

    def compute() -> torch.Tensor:
        denoised = executor(*args, **kwargs)
        holder["out"] = denoised
        return x + (x - denoised) / sigma

    pseudo = engine.step_level_call(call, x, compute)
    if "out" in holder:
        return holder["out"]
    return x - sigma * (pseudo - x)


# -- install / remove -------------------------------------------------------------------------------

def install(m: Any, handle: _Handle) -> None:
    """Add the wrappers and block hooks of `handle` to the ModelPatcher `m`."""
    from comfy.patcher_extension import WrappersMP  # noqa: PLC0415 (ComfyUI only inside ComfyUI)

    engine = handle.engine
    layout = handle.layout
    m.set_attachments(KEY, handle)
    m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, KEY, _outer_sample_wrapper(handle))
    m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, KEY, _apply_model_wrapper(handle))
    m.add_wrapper_with_key(WrappersMP.PREPARE_SAMPLING, KEY, prepare_sampling_wrapper(handle))
    if layout.mode == "step":
        return
    dm = m.model.diffusion_model
    hooked = set(engine.hooked_blocks())
    offset = 0
    for attr, kind in layout.lists:
        entries = block_entries(getattr(dm, attr))
        for j, (key, block) in enumerate(entries):
            index = offset + j
            if index not in hooked:
                continue
            if layout.mode == "replace":
                to = m.model_options.get("transformer_options", {})
                previous = to.get("patches_replace", {}).get("dit", {}).get((kind, j))
                m.set_model_patch_replace(_replace_patch(engine, index, previous), "dit", kind, j)
            else:
                name = f"diffusion_model.{attr}.{key}.forward"
                previous_patch = m.object_patches.get(name)
                original = previous_patch if previous_patch is not None else type(block).forward.__get__(block)
                m.add_object_patch(name, _object_forward(engine, index, original, previous_patch, layout.copy_reused))
        offset += len(entries)


def strip(m: Any) -> None:
    """Remove every CacheDit wrapper, block patch and attachment from the ModelPatcher `m`
    (other nodes' patches that ours chained are put back)."""
    from comfy.patcher_extension import WrappersMP  # noqa: PLC0415

    for wrapper_type in (WrappersMP.OUTER_SAMPLE, WrappersMP.APPLY_MODEL, WrappersMP.PREPARE_SAMPLING):
        m.remove_wrappers_with_key(wrapper_type, KEY)
    to = m.model_options.get("transformer_options", {})
    dit = to.get("patches_replace", {}).get("dit")
    if dit:
        for key, patch in list(dit.items()):
            if getattr(patch, "_cachedit", False):
                _unchain(dit, key, patch._cachedit_previous)
    for name, obj in list(m.object_patches.items()):
        if getattr(obj, "_cachedit", False):
            _unchain(m.object_patches, name, obj._cachedit_previous)
    m.remove_attachments(KEY)


def _unchain(patches: dict, key: Any, previous: Any) -> None:
    """Put back the patch ours replaced (or remove ours when there was none)."""
    if previous is None:
        del patches[key]
    else:
        patches[key] = previous
