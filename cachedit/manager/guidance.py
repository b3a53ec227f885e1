"""The run's classifier-free guidance scale, step count and scheduler, read from the pipeline that runs the model.

Error feedback scales its budget down at high guidance (feedback.py). ComfyUI tells the engine the
guider's cfg before each run (RunInfo); a diffusers pipeline knows its own: inside `__call__` it
sets `guidance_scale` and says through `do_classifier_free_guidance` whether that scale is CFG
(SD3, Wan, Chroma, LTX, Lumina2, HiDream, SDXL... in diffusers 0.42). Pipelines whose
`guidance_scale` is an embedded, distilled guidance (FLUX.1-dev) or whose CFG scale is another
argument (`true_cfg_scale`: Qwen-Image, HunyuanVideo) have no such property and are left alone,
as are modules enabled without their pipeline (the engine then keeps the budget as given).

The step count comes from the same place: diffusers pipelines set `num_timesteps` (the length of
their timestep schedule) before the denoising loop, so it is there when the first model call of a
run starts it: the presets' few-step rule (FLUX schnell, Lightning / Turbo LoRAs) then applies in
diffusers as it does in ComfyUI (presets.py); a transformer enabled alone does not know its steps.
The scheduler's class says the sampler (error feedback's budget follows it: sampler_kind.py).
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Any, Callable, Optional

from .sampler_kind import pipeline_scheduler_name


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


def pipeline_steps(pipe: Any) -> Optional[int]:
    """The number of timesteps `pipe`'s current call runs (`num_timesteps`), or None."""
    try:
        n = getattr(pipe, "num_timesteps", None)
    except Exception:  # not set before the first call on some pipelines
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return None
    return n


@dataclasses.dataclass(frozen=True)
class PipelineRun:
    """What a pipeline says about the run it is in: its CFG scale, its number of steps, its scheduler."""

    guidance: Optional[float]
    steps: Optional[int]
    sampler: Optional[str] = None  # the scheduler's class name


def probe_for(pipe: Any) -> Optional[Callable[[], PipelineRun]]:
    """A callable reading `pipe`'s guidance, steps and scheduler at each run start, holding `pipe` weakly
    (None when `pipe` takes no weak references)."""
    try:
        ref = weakref.ref(pipe)
    except TypeError:
        return None

    def probe() -> PipelineRun:
        target = ref()
        if target is None:
            return PipelineRun(None, None)
        return PipelineRun(pipeline_guidance(target), pipeline_steps(target), pipeline_scheduler_name(target))

    return probe
