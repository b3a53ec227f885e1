"""ComfyUI adapter: CacheDit for ComfyUI ModelPatcher objects.

`enable(patcher, options)` returns a patched clone; nothing is stored on the diffusion model
module, which every clone of a loaded checkpoint shares. This module says *how* each diffusion
model is hooked (`layout_of`: block replace patches, object patches of block `forward`s, or whole
steps for models without a DiT block list); `hooks.py` installs the wrappers and block patches
(ComfyUI's official extension points only, the model's own code runs unchanged) and `handle.py`
keeps the engine and the run's sigma schedule on the patcher. `disable(patcher)` returns a clone
with all of it removed.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import weakref
from typing import Any, Dict, Optional, Tuple

import torch

from ...config import CacheOptions
from ...events import report
from ...manager import get_manager
from ...manager.blocks import HIDDEN_NAMES, find_block_lists
from ...manager.distributed import DecisionGroup
from ...manager.engine import CacheEngine
from .handle import KEY, _Handle, handle_of
from .hooks import install, strip

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


# -- public entry points (called from cachedit.api) ------------------------------------------------

def _model_name(m: Any) -> str:
    return type(m.model).__name__


def enable(patcher: Any, options: CacheOptions, name: Optional[str] = None, process_group: Any = None) -> Any:
    """A clone of `patcher` with CacheDit installed (an earlier CacheDit setup on it is replaced)."""
    m = patcher.clone()
    strip(m)
    options = copy.deepcopy(options)
    options.log_runs = True
    dm = m.model.diffusion_model
    layout = layout_of(dm)
    lists = [getattr(dm, attr) for attr, _ in layout.lists]
    engine = CacheEngine(id(m), name or _model_name(m), options, [len(bl) for bl in lists],
                         clone_inputs=layout.clone_inputs, group=DecisionGroup(dm, process_group, options.distributed))
    handle = _Handle(engine, layout, m)
    install(m, handle)
    ref = weakref.ref(m)  # the manager must not keep the patcher alive

    def detach() -> None:
        engine.enabled = False
        patched = ref()
        if patched is not None:
            strip(patched)

    def rehook() -> None:
        patched = ref()
        if patched is not None and handle_of(patched) is handle:
            strip(patched)
            install(patched, handle)

    get_manager().register(m, engine, detach, [attr for attr, _ in layout.lists], rehook=rehook)
    report.warn_setup(engine, detail=f" ({layout.matched})", hint="")
    return m


def disable(patcher: Any) -> Any:
    """A clone of `patcher` without CacheDit: sampling it is bit-identical to the model CacheDit
    was enabled on. `patcher` itself is left as it is (other nodes may still use it)."""
    m = patcher.clone()
    strip(m)
    return m


def entries(patcher: Any) -> list:
    """The manager entries behind a patched ModelPatcher or any clone of it ([] if none)."""
    handle = handle_of(patcher)
    if handle is None:
        return []
    entry = get_manager().entry(handle.owner)
    return [entry] if entry is not None else []


def engine_of(patcher: Any) -> Optional[CacheEngine]:
    """The CacheEngine a patched ModelPatcher (or a clone of it) runs with, or None."""
    handle = handle_of(patcher)
    return handle.engine if handle is not None else None


__all__ = ["KEY", "Layout", "disable", "enable", "engine_of", "entries", "layout_of"]
