"""ComfyUI adapter: CacheDit for ComfyUI ModelPatcher objects.

`enable(patcher, options)` returns a patched clone; nothing is stored on the diffusion model
module, which every clone of a loaded checkpoint shares. This module says *how* each diffusion
model is hooked (`layout.py`: block replace patches, object patches of block `forward`s, or whole
steps for models without a DiT block list, with the reason logged); `hooks.py` installs the wrappers and block patches
(ComfyUI's official extension points only, the model's own code runs unchanged) and `handle.py`
keeps the engine and the run's sigma schedule on the patcher. `disable(patcher)` returns a clone
with all of it removed.
"""

from __future__ import annotations

import copy
import logging
import weakref
from typing import Any, Optional

from ...config import CacheOptions
from ...config.presets import family_of
from ...events import report
from ...manager import get_manager
from ...manager.distributed import DecisionGroup
from ...manager.engine import CacheEngine
from .handle import KEY, _Handle, handle_of
from .hooks import install, strip
from .layout import Layout, layout_of
from .notices import warn_other_caches

logger = logging.getLogger("cachedit")

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
    engine.family = family_of(dm, engine.step_level)  # what a preset's rules go by (config/presets.py)
    handle = _Handle(engine, layout, m)
    install(m, handle)
    ref = weakref.ref(m)  # the manager must not keep the patcher alive

    def detach() -> None:
        engine.enabled = False
        patched = ref()
        if patched is not None:
            strip(patched)

    handle_ref = weakref.ref(handle)  # the handle keeps its patcher alive: the manager must not keep the handle

    def rehook() -> None:
        patched, handle = ref(), handle_ref()
        if patched is not None and handle is not None and handle_of(patched) is handle:
            strip(patched)
            install(patched, handle)

    get_manager().register(m, engine, detach, [attr for attr, _ in layout.lists], rehook=rehook)
    if layout.mode == "step":
        logger.info("cachedit: %s is cached at step level (whole steps reused): %s", engine.name, layout.reason)
    else:
        report.warn_setup(engine, detail=f" ({layout.matched})", hint="")
    warn_other_caches(m)
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
