"""How each ComfyUI diffusion model is hooked: the layout tables and `layout_of`.

Three modes: `patches_replace["dit"]` block patches where the model honours them ("replace"),
object patches of each block's `forward` where it does not ("object"), and whole-step reuse for
models without a usable DiT block list ("step"). A step-level layout always carries a one-line
`reason` (the adapter logs it at INFO), so a user can tell a UNet from a model the tables miss.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Dict, List, Optional, Tuple

import torch

from ...manager.blocks import HIDDEN_NAMES, find_block_lists

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
_COSMOS_PREDICT2 = ("comfy.ldm.cosmos.predict2", "MiniTrainDIT")  # blocks take x_B_T_H_W_D first
_COSMOS1 = ("comfy.ldm.cosmos.model", "GeneralDIT")  # blocks in an nn.ModuleDict ("block0", ...), x in T H W B D

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
    _COSMOS_PREDICT2: ("blocks",),
    _COSMOS1: ("blocks",),
}
# Classes left at step level on purpose, matched by class name (wherever ComfyUI puts them), with
# the reason logged. They are checked before the tables: LTXAVModel subclasses LTXVModel.
STEP_LEVEL: Dict[str, str] = {
    "LTXAVModel": ("LTX-2 passes img=(video, audio) tuples to its block patches, a layout CacheDit has not "
                   "verified against a real LTX-2 model; whole steps are reused instead"),
}
# Blocks checked NOT to write into their inputs (tests/comfyui/test_harness.py for the replace
# archs). ComfyUI samples under inference_mode, where the engine cannot see in-place writes, so
# every other model gets the block inputs it keeps copied.
NO_INPLACE = {_WAN, _QWEN_IMAGE, _SD3, _AURA_FLOW, _LUMINA2, _HIDREAM}
# Models that write into the tensor one block hands the next (Cosmos 1 adds its per-block position
# embedding in place between blocks): a reused segment hands each skipped block a fresh copy.
COPY_REUSED = {_COSMOS1}


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one diffusion model is hooked."""

    mode: str  # "replace" | "object" | "step"
    lists: Tuple[Tuple[str, Optional[str]], ...]  # (block list attribute, replace kind or None)
    clone_inputs: bool
    matched: str  # the class that matched (for logs)
    reason: str = ""  # step level: why (one line, logged at INFO)
    copy_reused: bool = False  # reused block outputs are copied (the model writes into what blocks pass on)


def block_entries(container: Any) -> List[Tuple[str, torch.nn.Module]]:
    """(name, block) of a block list in run order: a ModuleList's indices or a ModuleDict's keys."""
    if isinstance(container, torch.nn.ModuleDict):
        return list(container.items())
    return [(str(j), block) for j, block in enumerate(container)]


def layout_of(diffusion_model: Any) -> Layout:
    """The hook layout for a ComfyUI diffusion model (step level, with a reason, when nothing is known)."""
    name = type(diffusion_model).__name__
    for cls in type(diffusion_model).__mro__:
        if cls.__name__ in STEP_LEVEL:
            return Layout("step", (), False, name, STEP_LEVEL[cls.__name__])
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
                return Layout("object", tuple((a, None) for a in attrs), clone, cls.__name__,
                              copy_reused=ident in COPY_REUSED)
    generic, reason = _generic_lists(diffusion_model)
    if generic:
        # An unknown DiT (a new model ComfyUI added after this table): block lists found the way the
        # library finds them, hooked by object patches; inputs are copied since nothing is known.
        return Layout("object", tuple((a, None) for a in generic), True, f"generic {name}")
    return Layout("step", (), False, name, reason)


def _generic_lists(dm: Any) -> Tuple[Tuple[str, ...], str]:
    """Block lists of an unknown model whose blocks take a recognisable hidden-state argument,
    or () and why there are none."""
    if all(isinstance(getattr(dm, a, None), torch.nn.Module) for a in ("input_blocks", "output_blocks")):
        return (), "a UNet (input/middle/output blocks at several resolutions), not a stack of DiT blocks"
    try:
        lists = find_block_lists(dm)
    except Exception as exc:  # detection must never break loading a model
        return (), f"looking for block lists failed ({type(exc).__name__}: {exc})"
    if not lists:
        return (), "no list of identical transformer blocks found on the diffusion model"
    names = []
    for name, blocks in lists:
        if "." in name:
            return (), f"its only block lists are nested ({name}), not the model's own DiT stack"
        try:
            params = list(inspect.signature(type(blocks[0]).forward).parameters)[1:]
        except (TypeError, ValueError):
            return (), f"the forward signature of {type(blocks[0]).__name__} in '{name}' cannot be read"
        if not params or params[0] not in HIDDEN_NAMES:
            first = params[0] if params else "nothing"
            return (), (f"the blocks in '{name}' take {first!r} first, not a hidden-state argument "
                        f"({', '.join(HIDDEN_NAMES)}), and the class is not in CacheDit's tables")
        names.append(name)
    return tuple(names), ""


def _lists_ok(dm: Any, attrs) -> bool:
    lists = [getattr(dm, a, None) for a in attrs]
    return (all(isinstance(bl, (torch.nn.ModuleList, torch.nn.ModuleDict)) for bl in lists)
            and sum(len(bl) for bl in lists) > 0)


__all__ = ["Layout", "NO_INPLACE", "OBJECT_LAYOUTS", "REPLACE_LAYOUTS", "STEP_LEVEL", "block_entries", "layout_of"]
