"""Warnings about what else is on a ComfyUI model when CacheDit is enabled on it.

Two caches on one model skip blocks on each other's reused outputs: the errors add up and neither
cache's stats mean what they say. ComfyUI's own EasyCache / LazyCache add keyed wrappers
(`ModelPatcher.wrappers`, or `model_options["transformer_options"]["wrappers"]`); TeaCache-style packs (TeaCache, WaveSpeed's
First Block Cache, MagCache) patch `forward_orig` / `diffusion_model.forward`, through object
patches, a `model_function_wrapper`, or by replacing the method on the class. Each finding is
said once per process (ComfyUI runs the node again whenever an input changes).
"""

from __future__ import annotations

import logging
from typing import Any, List, Set

logger = logging.getLogger("cachedit")

OUR_KEY = "cachedit"
CACHE_WORDS = ("cache", "teacache", "fbcache", "wavespeed", "magcache")  # names that say "a cache"
PATCHED_METHODS = ("forward_orig", "forward", "_forward")
_warned: Set[str] = set()


def _is_cache_name(text: str) -> bool:
    low = text.lower()
    return any(word in low for word in CACHE_WORDS) and OUR_KEY not in low


def _where(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '') or ''}.{getattr(fn, '__qualname__', '') or type(fn).__name__}"


def other_caches(patcher: Any) -> List[str]:
    """What looks like another cache on a ModelPatcher (CacheDit's own hooks are never listed)."""
    found: List[str] = []
    options = getattr(patcher, "model_options", {}) or {}
    for wrappers in (getattr(patcher, "wrappers", None) or {},  # ModelPatcher.add_wrapper_with_key
                     options.get("transformer_options", {}).get("wrappers", {}) or {}):  # model_options' own
        for wrapper_type, by_key in wrappers.items():
            for key, fns in (by_key or {}).items():
                if key != OUR_KEY and (_is_cache_name(str(key)) or any(_is_cache_name(_where(f)) for f in fns or ())):
                    found.append(f"{key!r} {wrapper_type} wrapper")
    wrapper = options.get("model_function_wrapper")
    if wrapper is not None and _is_cache_name(_where(wrapper)):
        found.append(f"model_function_wrapper {_where(wrapper)}")
    for name, obj in (getattr(patcher, "object_patches", {}) or {}).items():
        if getattr(obj, "_cachedit", False):
            continue
        if name in {f"diffusion_model.{m}" for m in PATCHED_METHODS}:
            found.append(f"object patch {name} ({_where(obj)})")
    dm = getattr(getattr(patcher, "model", None), "diffusion_model", None)
    if dm is not None:
        for method in PATCHED_METHODS:
            fn = getattr(type(dm), method, None)
            module = getattr(fn, "__module__", None) or ""
            if fn is not None and not module.startswith(("comfy", "torch")) and OUR_KEY not in module:
                found.append(f"{type(dm).__name__}.{method} replaced by {_where(fn)}")
    return found


def warn_other_caches(patcher: Any) -> None:
    """One WARNING (once per finding and process) when another cache is already on `patcher`."""
    try:
        found = [f for f in other_caches(patcher) if f not in _warned]
    except Exception:  # a check must never break enabling the cache
        return
    if not found:
        return
    _warned.update(found)
    logger.warning("cachedit: another cache is already on this model (%s); two caches reuse each other's "
                   "outputs and the errors add up. Bypass the other cache node, or CacheDit.", "; ".join(found))


__all__ = ["other_caches", "warn_other_caches"]
