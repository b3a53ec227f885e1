"""Sampling progress from a call's sigma, the way ComfyUI's own nodes measure it.

ComfyUI's `start_percent` / `end_percent` (EasyCache, LazyCache, ControlNet, hooks) are not step
fractions: each is turned into a sigma by the model's `model_sampling.percent_to_sigma`, and a
call is inside the window when `percent_to_sigma(end) < sigma <= percent_to_sigma(start)`. That
makes the window the same for every sampler, scheduler and step split: in a Wan 2.2 workflow the
high-noise and the low-noise expert (two samplers, steps 0-10 and 10-20) each see the part of
the window that falls in their sigma range.

The engine compares its window with a call's *progress*, so the adapter hands it this progress:
the percent p whose sigma is this call's sigma (the inverse of `percent_to_sigma`, found by
bisection since every model_sampling class has its own formula). With it the engine's test
`start <= p <= end` is exactly ComfyUI's sigma test above.

Error feedback needs another progress: the noise level's. A reused output moves the image by the
step it is used for (Euler: x += v * d_sigma), so its budget follows each step's sigma span. On a
flow model (ComfyUI's CONST sampling: FLUX, SD3, Wan, Qwen-Image, HunyuanVideo, LTXV, Lumina2...)
that is 1 - sigma / sigma_max, which differs from the percent whenever the schedule is not the
model's own (karras, beta, a linear schedule on a shifted model: bundled FLUX layout in ComfyUI
with its linear schedule, percent spans 0.09 early against 1/28, the default fell to 38.7 dB;
with sigma spans 42.1 dB, and every schedule tried held 40 dB; benchmarks/results/runs/
2026-12-01_comfyui_noise_progress.md). Other samplings keep the percent (`noise_progress` None).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

_ITERATIONS = 48  # bisection steps: the percent to ~4e-15


def sigma_percent(model_sampling: Any, sigma: float) -> float:
    """The percent of sampling done at `sigma`: the smallest p in [0, 1] with
    `percent_to_sigma(p) < sigma` (1.0 for sigma <= percent_to_sigma(1) = 0).

    So `start <= p` holds exactly when sigma <= percent_to_sigma(start), and `p <= end` when
    sigma > percent_to_sigma(end): ComfyUI's own window rule (EasyCache's `is_past_end_timestep`)."""
    def sigma_at(p: float) -> float:
        return float(model_sampling.percent_to_sigma(p))

    if sigma_at(1.0) >= sigma:
        return 1.0
    if sigma_at(0.0) < sigma:
        return 0.0
    lo, hi = 0.0, 1.0  # invariant: sigma_at(lo) >= sigma > sigma_at(hi)
    for _ in range(_ITERATIONS):
        mid = (lo + hi) / 2.0
        if sigma_at(mid) >= sigma:
            lo = mid
        else:
            hi = mid
    return hi


def flow_sigma_max(model_sampling: Any) -> Optional[float]:
    """sigma_max of a flow-matching sampling (ComfyUI's CONST parameterisation), else None."""
    try:
        import comfy.model_sampling

        if not isinstance(model_sampling, comfy.model_sampling.CONST):
            return None
        value = float(model_sampling.sigma_max)
    except Exception:  # no ComfyUI, or an unusual model_sampling: never break sampling
        return None
    return value if value > 0.0 and value == value else None


class SigmaProgress:
    """`sigma_percent` per (model_sampling, sigma), cached: a run asks once per schedule entry.
    The cache follows the model_sampling object, so a shift changed by a ModelSampling* node
    (an object patch) is seen on the next run."""

    def __init__(self) -> None:
        self._sampling: Any = None
        self._cache: Dict[float, float] = {}
        self._flow_sampling: Any = None
        self._flow_sigma_max: Optional[float] = None  # of _flow_sampling; None: not a flow model

    def noise_progress(self, model_sampling: Any, sigma: Optional[float],
                       start: Optional[float] = None) -> Optional[float]:
        """1 - sigma / the run's first sigma (`start`; sigma_max when not known or above it) on a
        flow model's sampling (CONST), else None (the percent stands). A run that starts below
        sigma_max (img2img, a hires-fix pass: denoise < 1) counts its spans in its own noise range,
        as the diffusers path does (1 - t / the run's first timestep): measured from sigma_max,
        its steps looked short and error feedback gave each reuse up to 2x the budget (bundled FLUX
        layout, 28 steps at denoise 0.5-0.6 from a generated image: 40.0-40.3 dB pooled, worst
        image 37.8; from its own first sigma 42.7-44.3, worst 39.9)."""
        if sigma is None or model_sampling is None:
            return None
        if model_sampling is not self._flow_sampling:
            self._flow_sampling, self._flow_sigma_max = model_sampling, flow_sigma_max(model_sampling)
        top = self._flow_sigma_max
        if top is None:
            return None
        if start is not None and 0.0 < start < top:
            top = start
        return min(1.0, max(0.0, 1.0 - sigma / top))

    def __call__(self, model_sampling: Any, sigma: Optional[float]) -> Optional[float]:
        """The progress of a call at `sigma`, or None (no sigma, or no usable model_sampling:
        the engine then counts progress in steps)."""
        if sigma is None or model_sampling is None or not hasattr(model_sampling, "percent_to_sigma"):
            return None
        if model_sampling is not self._sampling:
            self._sampling, self._cache = model_sampling, {}
        progress = self._cache.get(sigma)
        if progress is None:
            try:
                progress = sigma_percent(model_sampling, sigma)
            except Exception:  # an unusual model_sampling must never break sampling
                return None
            self._cache[sigma] = progress
        return progress
