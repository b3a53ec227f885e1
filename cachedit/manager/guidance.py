"""The run's classifier-free guidance scale, read from the pipeline that runs the model.

Error feedback scales its budget down at high guidance (feedback.py). ComfyUI tells the engine the
guider's cfg before each run (RunInfo); a diffusers pipeline knows its own: inside `__call__` it
sets `guidance_scale` and says through `do_classifier_free_guidance` whether that scale is CFG
(SD3, Wan, Chroma, LTX, Lumina2, HiDream, SDXL... in diffusers 0.42). Pipelines whose
`guidance_scale` is an embedded, distilled guidance (FLUX.1-dev) or whose CFG scale is another
argument (`true_cfg_scale`: Qwen-Image, HunyuanVideo) have no such property and are left alone,
as are modules enabled without their pipeline (the engine then keeps the budget as given).
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable, Optional


def pipeline_guidance(pipe: Any) -> Optional[float]:
    """The CFG scale `pipe` runs with now, or None (no CFG, not a CFG pipeline, not readable)."""
    try:
        if getattr(pipe, "do_classifier_free_guidance", False) is not True:
            return None
        g = getattr(pipe, "guidance_scale", None)
    except Exception:  # a property that needs state the pipeline has not set yet
        return None
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
        return None
    return float(g)


def probe_for(pipe: Any) -> Optional[Callable[[], Optional[float]]]:
    """A callable reading `pipe`'s guidance at each run start, holding `pipe` weakly (None when
    `pipe` takes no weak references)."""
    try:
        ref = weakref.ref(pipe)
    except TypeError:
        return None

    def probe() -> Optional[float]:
        target = ref()
        return None if target is None else pipeline_guidance(target)

    return probe
