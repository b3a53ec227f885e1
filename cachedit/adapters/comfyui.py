"""ComfyUI adapter: every piece of CacheDit's caching logic for ComfyUI ModelPatcher objects.

`enable(patcher, options)` returns a patched clone; nothing is stored on the diffusion model
module, which every clone of a loaded checkpoint shares. Only official extension points are used:

* a keyed `WrappersMP.OUTER_SAMPLE` wrapper: one sampling run = one engine run. It closes the
  previous run before sampling and closes this one in a `finally` (a cancelled run leaves
  nothing behind), and records the run's sigma schedule (step indices, total steps);
* a keyed `WrappersMP.APPLY_MODEL` wrapper (runs for every model, SD3 included): places each
  model call in a step and a CFG branch (keyed by the conditioning uuids, so batched or separate
  cond/uncond, Heun's second evaluation and SkipLayerGuidance's extra pass each get their own
  buffers) and, for models without hookable blocks, reuses whole steps;
* block hooks, only on the blocks the engine gives a role: `patches_replace["dit"]` replace
  patches where the model honours them (Flux, Chroma, HunyuanVideo, Wan, Qwen-Image, LTXV,
  SD3, AuraFlow), and object patches of a block's `forward` attribute where it does not (Lumina2 /
  Z-Image `layers`, HiDream). Object patches keep state_dict keys unchanged (LoRA weight
  patches still apply) and ComfyUI restores the attribute when the model is unpatched.

Everything that makes a decision runs under `torch.compiler.disable`, so a model compiled with
ComfyUI's TorchCompileModel keeps the cache logic out of its graphs while the blocks themselves
are still compiled. `disable(patcher)` returns a clone with all of it removed.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import logging
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..config import CacheOptions
from ..manager import get_manager
from ..manager.blocks import BlockIO
from ..manager.engine import ROLE_FIRST, ROLE_MID, ROLE_PROBE, ROLE_SEG_FIRST, ROLE_SEG_LAST, CacheEngine

logger = logging.getLogger("cachedit")

KEY = "cachedit"  # wrapper key and attachment name on the ModelPatcher

_DOUBLE_SINGLE = (("double_blocks", "double_block"), ("single_blocks", "single_block"))
_FLUX = ("comfy.ldm.flux.model", "Flux")
_CHROMA = ("comfy.ldm.chroma.model", "Chroma")
_HUNYUAN_VIDEO = ("comfy.ldm.hunyuan_video.model", "HunyuanVideo")
_WAN = ("comfy.ldm.wan.model", "WanModel")
_QWEN_IMAGE = ("comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel")
_LTXV = ("comfy.ldm.lightricks.model", "LTXVModel")
_SD3 = ("comfy.ldm.modules.diffusionmodules.mmdit", "MMDiT")
_AURA_FLOW = ("comfy.ldm.aura.mmdit", "MMDiT")
_LUMINA2 = ("comfy.ldm.lumina.model", "NextDiT")
_HIDREAM = ("comfy.ldm.hidream.model", "HiDreamImageTransformer2DModel")

# Models whose forward honours transformer_options["patches_replace"]["dit"][(kind, i)]:
# (module, class) of the diffusion model (or a base class) -> ((block list attribute, replace kind), ...).
REPLACE_LAYOUTS: Dict[Tuple[str, str], Tuple[Tuple[str, str], ...]] = {
    _FLUX: _DOUBLE_SINGLE,
    _CHROMA: _DOUBLE_SINGLE,
    _HUNYUAN_VIDEO: _DOUBLE_SINGLE,
    _WAN: (("blocks", "double_block"),),
    _QWEN_IMAGE: (("transformer_blocks", "double_block"),),
    _LTXV: (("transformer_blocks", "double_block"),),
    _SD3: (("joint_blocks", "double_block"),),
    _AURA_FLOW: (("double_layers", "double_block"), ("single_layers", "single_block")),
}
# Models without block replace patches: their blocks' `forward` attributes are object-patched.
OBJECT_LAYOUTS: Dict[Tuple[str, str], Tuple[str, ...]] = {
    _LUMINA2: ("layers",),  # Lumina2, Z-Image (never the refiners)
    _HIDREAM: ("double_stream_blocks", "single_stream_blocks"),
}
# Blocks checked NOT to write into their inputs (tests/comfyui/test_harness.py for the replace
# archs). ComfyUI samples under inference_mode, where the engine cannot see in-place writes, so
# every other model gets the block inputs it keeps copied.
NO_INPLACE = {_WAN, _QWEN_IMAGE, _SD3, _AURA_FLOW, _LUMINA2, _HIDREAM}


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one diffusion model is hooked."""

    mode: str  # "replace" | "object" | "step"
    lists: Tuple[Tuple[str, Optional[str]], ...]  # (block list attribute, replace kind or None)
    clone_inputs: bool
    matched: str  # the class that matched (for logs)


def layout_of(diffusion_model: Any) -> Layout:
    """The hook layout for a ComfyUI diffusion model (step level when nothing is known)."""
    for cls in type(diffusion_model).__mro__:
        ident = (cls.__module__, cls.__name__)
        clone = ident not in NO_INPLACE
        if ident in REPLACE_LAYOUTS:
            lists = REPLACE_LAYOUTS[ident]
            if _lists_ok(diffusion_model, [a for a, _ in lists]):
                return Layout("replace", lists, clone, cls.__name__)
        if ident in OBJECT_LAYOUTS:
            attrs = OBJECT_LAYOUTS[ident]
            if _lists_ok(diffusion_model, attrs):
                return Layout("object", tuple((a, None) for a in attrs), clone, cls.__name__)
    generic = _generic_lists(diffusion_model)
    if generic:
        # An unknown DiT (a new model ComfyUI added after this table): block lists found the way the
        # library finds them, hooked by object patches; inputs are copied since nothing is known.
        return Layout("object", tuple((a, None) for a in generic), True, f"generic {type(diffusion_model).__name__}")
    return Layout("step", (), False, type(diffusion_model).__name__)


def _generic_lists(dm: Any) -> Tuple[str, ...]:
    """Block lists of an unknown model whose blocks take a recognisable hidden-state argument."""
    import inspect

    from ..manager.blocks import HIDDEN_NAMES, find_block_lists

    try:
        lists = find_block_lists(dm)
    except Exception:  # detection must never break loading a model
        return ()
    names = []
    for name, blocks in lists:
        if "." in name:
            return ()  # nested lists (a UNet's attention stacks) are no DiT block stack
        try:
            params = list(inspect.signature(type(blocks[0]).forward).parameters)[1:]
        except (TypeError, ValueError):
            return ()
        if not params or params[0] not in HIDDEN_NAMES:
            return ()
        names.append(name)
    return tuple(names)


def _lists_ok(dm: Any, attrs) -> bool:
    lists = [getattr(dm, a, None) for a in attrs]
    return all(isinstance(bl, torch.nn.ModuleList) for bl in lists) and sum(len(bl) for bl in lists) > 0


# -- per-model runtime carried by the patched ModelPatcher (and its clones) -------------------------

class _Handle:
    """What a patched ModelPatcher carries as attachment `cachedit`: its engine, layout and the
    sigma schedule of the run in progress. Clones share it (ComfyUI copies attachments by
    reference), and it keeps the registered patcher alive while any clone uses the engine."""

    def __init__(self, engine: CacheEngine, layout: Layout, owner: Any) -> None:
        self.engine = engine
        self.layout = layout
        self.owner = owner  # the ModelPatcher registered with the manager
        self.schedule: Optional[List[float]] = None
        self.from_outer_sample = False  # schedule set by our OUTER_SAMPLE wrapper (else from sample_sigmas)
        self._source: Any = None
        self._exact: Dict[float, List[int]] = {}
        self._neg: List[float] = []
        self._last = 0

    def set_schedule(self, sigmas: Any, from_outer_sample: bool = True) -> None:
        """Record a run's sigmas (one device->host copy per run)."""
        self.from_outer_sample = from_outer_sample
        if not isinstance(sigmas, torch.Tensor) or sigmas.numel() < 2:
            self.clear_schedule()
            return
        values = [float(v) for v in sigmas.detach().reshape(-1).float().cpu().tolist()]
        self.schedule = values
        self._source = sigmas
        self._exact = {}
        for i, v in enumerate(values):
            self._exact.setdefault(v, []).append(i)
        self._neg = [-v for v in values]
        self._last = 0

    def clear_schedule(self) -> None:
        self.from_outer_sample = False
        self.schedule = None
        self._source = None
        self._exact = {}
        self._neg = []
        self._last = 0

    def step_of(self, sigma: Optional[float], transformer_options: dict) -> Tuple[Optional[int], Optional[int]]:
        """(step index, total steps) of a call at `sigma`: the schedule index of that sigma, or of
        the step in progress for a sigma between two schedule entries (dpm_2, dpmpp_2s...)."""
        if sigma is None:
            return None, None
        if not self.from_outer_sample:
            # sampled without our OUTER_SAMPLE wrapper running (a custom sampling loop): use the
            # schedule ComfyUI puts in transformer_options, re-read whenever it is another tensor
            sample_sigmas = transformer_options.get("sample_sigmas")
            if sample_sigmas is not self._source:
                self.set_schedule(sample_sigmas, from_outer_sample=False)
            if self.schedule is None:
                return None, None
        n = len(self.schedule)
        exact = self._exact.get(sigma)
        if exact is not None:
            # a sigma listed twice: the occurrence at or after the step in progress
            index = next((i for i in exact if i >= self._last), exact[0])
        else:
            index = bisect.bisect_right(self._neg, -sigma) - 1
        index = max(0, min(index, n - 2))
        self._last = index
        return index, n - 1


def _handle_of(patcher: Any) -> Optional[_Handle]:
    attachments = getattr(patcher, "attachments", None)
    if not isinstance(attachments, dict):
        return None
    handle = attachments.get(KEY)
    return handle if isinstance(handle, _Handle) else None


# -- block hooks (everything but the original block runs outside compiled graphs) --------------------

@torch.compiler.disable
def _enter(engine: CacheEngine, call, index: int, args: dict) -> None:
    """Replace-patch args -> engine streams ("img" -> hidden, "txt" -> encoder) at a block input."""
    txt = args.get("txt")
    streams = {"hidden": args["img"], "encoder": txt} if isinstance(txt, torch.Tensor) else {"hidden": args["img"]}
    engine.block_input(call, index, streams)


@torch.compiler.disable
def _leave(engine: CacheEngine, call, index: int, out: dict) -> None:
    """Replace-patch output -> engine streams at a block output."""
    txt = out.get("txt")
    streams = {"hidden": out.get("img"), "encoder": txt} if txt is not None else {"hidden": out.get("img")}
    engine.block_output(call, index, streams)


@torch.compiler.disable
def _reused(streams: Dict[str, Any], returns: Dict[str, bool], args: dict) -> dict:
    """What a skipped block returns: its segment's reused streams under the keys the block returns."""
    out = {}
    for key, was_none in returns.items():
        if was_none:
            out[key] = None
        elif key == "img":
            out[key] = streams["hidden"]
        elif key == "txt":
            out[key] = streams.get("encoder", args.get("txt"))
        else:
            out[key] = args.get(key)
    return out


def _replace_patch(engine: CacheEngine, index: int, previous: Optional[Callable]) -> Callable:
    """A `patches_replace["dit"]` patch for engine block `index` (chains `previous`, another
    node's patch for the same block, in place of the original block)."""
    role = engine.roles[index]
    is_mid = bool(role & ROLE_MID)
    seg_first = bool(role & ROLE_SEG_FIRST)
    input_roles = bool(role & (ROLE_FIRST | ROLE_SEG_FIRST))
    output_roles = bool(role & (ROLE_PROBE | ROLE_SEG_LAST))
    segment = engine.segment_of[index]
    returns: Dict[str, bool] = {}  # keys the block returns -> whether that value is None (SD3's last txt)

    def patch(args: dict, extra: dict) -> dict:
        call = engine.current
        if call is not None:
            if is_mid and call.reuse:
                if seg_first:
                    _enter(engine, call, index, args)
            elif input_roles:
                _enter(engine, call, index, args)  # may decide (Fn=0): then reuse right away
            if is_mid and call.reuse and returns:
                streams = call.seg_out.get(segment)
                if streams is not None:
                    return _reused(streams, returns, args)
                # this segment's first block ran another node's patch (SkipLayerGuidance...): compute
        out = previous(args, extra) if previous is not None else extra["original_block"](args)
        if call is not None:
            if not returns:
                returns.update({k: v is None for k, v in out.items()})
            if output_roles and not call.reuse:
                _leave(engine, call, index, out)
        return out

    patch = torch.compiler.disable(patch, recursive=False)  # the original block itself still compiles
    patch._cachedit = True
    patch._cachedit_previous = previous
    return patch


class _ForwardSignature:
    """Stands in for a block when BlockIO reads its forward signature (the block's `forward`
    attribute may be another clone's object patch at this moment)."""

    def __init__(self, forward: Callable) -> None:
        self.forward = forward


def _object_forward(engine: CacheEngine, index: int, original: Callable, previous_patch: Any) -> Callable:
    """A replacement `forward` for engine block `index` (installed as a ComfyUI object patch)."""
    role = engine.roles[index]
    is_mid = bool(role & ROLE_MID)
    seg_first = bool(role & ROLE_SEG_FIRST)
    input_roles = bool(role & (ROLE_FIRST | ROLE_SEG_FIRST))
    output_roles = bool(role & (ROLE_PROBE | ROLE_SEG_LAST))
    segment = engine.segment_of[index]
    io = BlockIO(_ForwardSignature(original))

    @torch.compiler.disable
    def before(call, args: tuple, kwargs: dict) -> Any:
        """Engine work before the block; returns the reused output, or None to run the block."""
        inputs = None
        if (is_mid and call.reuse and seg_first) or (input_roles and not (is_mid and call.reuse)):
            inputs = io.read_inputs(args, kwargs)
            engine.block_input(call, index, inputs)
        if is_mid and call.reuse and io.output_kind is not None:
            streams = call.seg_out.get(segment)
            if streams is not None:
                return io.make_output(streams)
        if io.output_kind is None:
            learn[0] = inputs if inputs is not None else io.read_inputs(args, kwargs)
        return None

    @torch.compiler.disable
    def after(call, out: Any) -> None:
        if io.output_kind is None:
            io.learn_output(out, learn[0] or {})
            learn[0] = None
        if output_roles and not call.reuse:
            engine.block_output(call, index, io.read_outputs(out))

    learn: List[Any] = [None]

    def forward(*args: Any, **kwargs: Any) -> Any:
        call = engine.current
        if call is None:
            return original(*args, **kwargs)
        if is_mid or input_roles or io.output_kind is None:
            reused = before(call, args, kwargs)
            if reused is not None:
                return reused
        out = original(*args, **kwargs)
        after(call, out)
        return out

    forward = torch.compiler.disable(forward, recursive=False)
    forward._cachedit = True
    forward._cachedit_previous = previous_patch
    return forward


# -- model-level wrappers ---------------------------------------------------------------------------

def _outer_sample_wrapper(handle: _Handle) -> Callable:
    engine = handle.engine

    def outer_sample(executor, *args, **kwargs):
        sigmas = args[3] if len(args) > 3 else kwargs.get("sigmas")
        engine.finish_run()
        handle.set_schedule(sigmas)
        try:
            return executor(*args, **kwargs)
        finally:
            engine.finish_run()
            handle.clear_schedule()

    outer_sample._cachedit = True
    return outer_sample


def _branch_key(transformer_options: dict) -> Optional[tuple]:
    uuids = transformer_options.get("uuids")
    if uuids:
        return tuple(uuids)
    cond_or_uncond = transformer_options.get("cond_or_uncond")
    if cond_or_uncond:
        return tuple(cond_or_uncond)
    return None


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
        call = engine.begin_call(sigma, _branch_key(to), (tuple(x.shape), x.dtype, x.device),
                                 total_steps=total, step_index=step)
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

def _install(m: Any, handle: _Handle) -> None:
    """Add the wrappers and block hooks of `handle` to the ModelPatcher `m`."""
    from comfy.patcher_extension import WrappersMP  # noqa: PLC0415 (ComfyUI only inside ComfyUI)

    engine = handle.engine
    layout = handle.layout
    m.set_attachments(KEY, handle)
    m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, KEY, _outer_sample_wrapper(handle))
    m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, KEY, _apply_model_wrapper(handle))
    if layout.mode == "step":
        return
    dm = m.model.diffusion_model
    hooked = set(engine.hooked_blocks())
    offset = 0
    for attr, kind in layout.lists:
        blocks = getattr(dm, attr)
        for j in range(len(blocks)):
            index = offset + j
            if index not in hooked:
                continue
            if layout.mode == "replace":
                to = m.model_options.get("transformer_options", {})
                previous = to.get("patches_replace", {}).get("dit", {}).get((kind, j))
                m.set_model_patch_replace(_replace_patch(engine, index, previous), "dit", kind, j)
            else:
                name = f"diffusion_model.{attr}.{j}.forward"
                previous_patch = m.object_patches.get(name)
                block = blocks[j]
                original = previous_patch if previous_patch is not None else type(block).forward.__get__(block)
                m.add_object_patch(name, _object_forward(engine, index, original, previous_patch))
        offset += len(blocks)


def _strip(m: Any) -> None:
    """Remove every CacheDit wrapper, block patch and attachment from the ModelPatcher `m`
    (other nodes' patches that ours chained are put back)."""
    from comfy.patcher_extension import WrappersMP  # noqa: PLC0415

    for wrapper_type in (WrappersMP.OUTER_SAMPLE, WrappersMP.APPLY_MODEL):
        m.remove_wrappers_with_key(wrapper_type, KEY)
    to = m.model_options.get("transformer_options", {})
    dit = to.get("patches_replace", {}).get("dit")
    if dit:
        for key, patch in list(dit.items()):
            if getattr(patch, "_cachedit", False):
                previous = patch._cachedit_previous
                if previous is None:
                    del dit[key]
                else:
                    dit[key] = previous
    for name, obj in list(m.object_patches.items()):
        if getattr(obj, "_cachedit", False):
            previous = obj._cachedit_previous
            if previous is None:
                del m.object_patches[name]
            else:
                m.object_patches[name] = previous
    m.remove_attachments(KEY)


# -- public entry points (called from cachedit.api) ------------------------------------------------

def _model_name(m: Any) -> str:
    return type(m.model).__name__


def enable(patcher: Any, options: CacheOptions, name: Optional[str] = None) -> Any:
    """A clone of `patcher` with CacheDit installed (an earlier CacheDit setup on it is replaced)."""
    m = patcher.clone()
    _strip(m)
    options = copy.deepcopy(options)
    options.log_runs = True
    dm = m.model.diffusion_model
    layout = layout_of(dm)
    lists = [getattr(dm, attr) for attr, _ in layout.lists]
    engine = CacheEngine(id(m), name or _model_name(m), options, [len(bl) for bl in lists],
                         clone_inputs=layout.clone_inputs)
    handle = _Handle(engine, layout, m)
    _install(m, handle)
    ref = weakref.ref(m)  # the manager must not keep the patcher alive

    def detach() -> None:
        engine.enabled = False
        patched = ref()
        if patched is not None:
            _strip(patched)

    def rehook() -> None:
        patched = ref()
        if patched is not None and _handle_of(patched) is handle:
            _strip(patched)
            _install(patched, handle)

    block_names = [attr for attr, _ in layout.lists]
    get_manager().register(m, engine, detach, block_names, "step" if layout.mode == "step" else "block", rehook=rehook)
    if layout.mode == "step":
        logger.warning("cachedit: no transformer blocks hooked for %s (%s): caching whole steps",
                       engine.name, layout.matched)
    elif engine.num_middle == 0:
        logger.warning("cachedit: %s has %d blocks and Fn=%d/Bn=%d compute all of them: nothing can be reused. "
                       "Lower Fn_compute_blocks.", engine.name, engine.num_blocks, engine.fn, engine.bn)
    return m


def disable(patcher: Any) -> Any:
    """A clone of `patcher` without CacheDit: sampling it is bit-identical to the model CacheDit
    was enabled on. `patcher` itself is left as it is (other nodes may still use it)."""
    m = patcher.clone()
    _strip(m)
    return m


def entries(patcher: Any) -> list:
    """The manager entries behind a patched ModelPatcher or any clone of it ([] if none)."""
    handle = _handle_of(patcher)
    if handle is None:
        return []
    entry = get_manager().entry(handle.owner)
    return [entry] if entry is not None else []


def engine_of(patcher: Any) -> Optional[CacheEngine]:
    """The CacheEngine a patched ModelPatcher (or a clone of it) runs with, or None."""
    handle = _handle_of(patcher)
    return handle.engine if handle is not None else None


__all__ = ["KEY", "Layout", "disable", "enable", "engine_of", "entries", "layout_of"]
