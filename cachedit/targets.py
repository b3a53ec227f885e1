"""What the public functions act on: the modules inside a pipeline, transformer, BlockAdapter or
ComfyUI ModelPatcher, and their manager entries. Values that are never a model are refused here."""

from __future__ import annotations

from typing import Any, List

from torch import nn

from .adapters.block_adapter import BlockAdapter
from .manager import get_manager

TRANSFORMER_ATTRS = ("transformer", "transformer_2", "transformer_3")


def is_comfy_patcher(obj: Any) -> bool:
    """Duck-typed: a ComfyUI ModelPatcher (ComfyUI is only importable inside ComfyUI)."""
    return hasattr(obj, "model_options") and hasattr(obj, "clone") and hasattr(obj, "model")


# Values that are never a model: refused by name instead of "not accelerated" (as cache-dit refuses them).
_NOT_A_MODEL = (type(None), bool, int, float, complex, str, bytes)


def check_target(obj: Any, function: str) -> None:
    """Refuse, by name, a value that is never a model."""
    if isinstance(obj, _NOT_A_MODEL):
        raise ValueError(f"obj={obj!r} is invalid for {function}(); allowed: a diffusers DiffusionPipeline, a torch.nn.Module, "
                         f"a cachedit.BlockAdapter, or a ComfyUI ModelPatcher")


def check_flag(function: str, name: str, value: Any) -> None:
    """`value` must be True or False (a keyword of `function`)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is invalid for {function}(); allowed: True or False")


def targets_of(obj: Any) -> List[nn.Module]:
    """The modules to accelerate in `obj`: a BlockAdapter's transformer(s), the transformers a
    BlockAdapter linked to this pipeline, a pipeline's transformer(s) (or UNet), or `obj` itself."""
    if isinstance(obj, BlockAdapter):
        return obj.transformers()
    if isinstance(obj, nn.Module):
        return [obj]
    linked = get_manager().pipe_modules(obj)
    if linked:
        return linked
    found = [getattr(obj, a) for a in TRANSFORMER_ATTRS if isinstance(getattr(obj, a, None), nn.Module)]
    if not found and isinstance(getattr(obj, "unet", None), nn.Module):
        found = [obj.unet]
    if not found:
        raise ValueError(
            f"obj={type(obj).__name__} is not supported; allowed: a diffusers DiffusionPipeline (with a transformer "
            f"or unet), a torch.nn.Module, a cachedit.BlockAdapter, or a ComfyUI ModelPatcher")
    return found


def entries_of(obj: Any) -> list:
    """The manager entries of what `obj` accelerated (none for an object never accelerated)."""
    manager = get_manager()
    if is_comfy_patcher(obj):
        from .adapters import comfyui  # noqa: PLC0415 (ComfyUI is only importable inside ComfyUI)

        return comfyui.entries(obj)
    try:
        modules = targets_of(obj)
    except ValueError:
        return []
    return [e for e in (manager.entry(m) for m in modules) if e is not None]


__all__ = ["TRANSFORMER_ATTRS", "check_flag", "check_target", "entries_of", "is_comfy_patcher", "targets_of"]
