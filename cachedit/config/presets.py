"""Presets: one word (`quality`, `balanced`, `fast`) turned into what a run needs, per model family.

A preset is an error budget (QUALITY_PRESETS: the relative error a reused step may make, which
error feedback holds by moving the threshold). What a budget cannot express is decided per run
from the model's *family* (detected from its class) and what the run looks like at its start
(its number of steps, which part of the denoising it covers), each rule taken from published
settings of cache-dit and the peers (sources in README "Presets"):

- **few-step runs** (<= FEW_STEPS steps: FLUX schnell, LCM / Lightning / Turbo LoRAs, Z-Image-Turbo,
  CausVid): the warmup is a share of the run, not 3 steps (cache-dit's 8-step steps masks
  compute the first 5 / 4 / 3 steps for slow / medium / fast; its Qwen-Image-Lightning example
  warms up 4 of 8 steps and 2 of 4), reuse never twice in a row and at most 1-3 times a run
  (the same example: max_continuous_cached_steps=1, max_cached_steps=2 for 8 steps, 1 for 4);
- **Wan 2.2's two experts** (each its own model, so each its own cache; a run that covers only
  the start of the denoising is the high-noise expert, one that starts late the low-noise
  expert): cache-dit's Wan 2.2 example gives the high-noise transformer 4 warmup steps and at most
  8 reused steps, the low-noise one 2 warmup steps;
- **UNets** (SDXL, SD1.5: no transformer blocks, whole steps are reused): the window of ComfyUI's
  own EasyCache, reuse only between 15% and 95% of the denoising.

Everything else (FLUX dev, Qwen-Image, HunyuanVideo, ...) runs the budget with the adaptive
defaults, and a **long run** (LONG_RUN_STEPS or more steps, when the run tells its steps: ComfyUI's
sigmas, a diffusers pipeline's `num_timesteps`) predicts its reused steps with TaylorSeer order 2 at
a budget of its own (LONG_RUN_BUDGETS): a second-order prediction over short spans is closer to the
computed step than its first-order budget asks for, so the same image quality costs fewer computed
steps (bundled models, 28 steps, batch 8: 33-37% of the block compute at 42.8-44.5 dB instead of
42-43% at 43.9-44.8; benchmarks/results/runs/2026-11-30_long_run_ts2.md); a long run of fewer
than SHORT_LONG_RUN_STEPS (24) keeps its preset's order-1 budget, where that is lower (ComfyUI's
default 20 steps on its `simple` schedule: 46.5-48.0 dB instead of 40.3-42.7 over 12 generations,
about one computed step more of 20; runs/2026-12-03_twenty_step_budget.md). Below 20 steps order 2
fell to 32 dB (12 Euler steps; Heun's half steps), so shorter and unknown runs keep order 1. `fast`
takes 0.22, not 0.25: at 0.25 Qwen-layout runs with a shifted schedule, batch 1 separate CFG or
Heun fell to 37-40 dB, at 0.22 every 20+-step cell held >= 40 dB
(runs/2026-12-01_fast_long_run_0.22.md). The rule changes only the default's own TaylorSeer (not
an order the user chose). Runs of LONGER_RUN_STEPS (50) or more of their own steps may also reuse 5 steps in a row
instead of 4. 6 kept the three bundled models' 50-step cells >= 40.2 dB (balanced >= 41.5) at 19-22%
of the block compute instead of 24-26%, but the held-out SD3-layout model, trained afterwards to check
the defaults on a model they were not tuned on, fell to 39.9 dB at 50 steps, batch 1 (two of six seeds
at 35.5 and 37.9 with every measured error under the budget); 5 gives it 42.2 at 20% (4: 46.2 at 24%)
(runs/2026-12-01_sd3_heldout.md). 8 in a row fell to 39.6 dB (Qwen layout, batch 1), and 6 in 28-step
runs to 39.6 (FLUX layout, batch 1 separate CFG), so shorter runs keep 4
(runs/2026-12-01_longer_run_cap.md; with order 1, 8 in a row had cost batch-1 runs 37-39 dB:
runs/2026-11-30_defaults_long_streak.md). Standard and long runs that keep 4 in a row reuse at most
3 steps in their first streak (FIRST_STREAK_MAX: the reuses right after the warmup): on the held-out
Z-Image-layout model, trained after the defaults were settled, 4 reused steps right after the warmup
(steps 2-5 of 28), each within the budget, cost two of six batch-1 images 6-9 dB (36.8, 33.4; the
cell 38.5 dB); with the same computed steps but the first streak cut to 3 they held 43.1 and 39.0
(42.5 dB pooled), while shortening the later streaks did not help. Capping every streak in the
first quarter of the noise level instead mended that cell too but cost Qwen-layout runs on
ComfyUI's shifted `simple` schedule 3 dB (43.1 -> 40.0: a quarter of the noise is half of those
steps, and the computed steps moved where they mattered more); the first streak alone keeps 42.1.
50-step runs (5 in a row) keep theirs (runs/2026-12-02_early_streak.md). Rules apply only to what the user did
not set: any cache config, warmup or window given explicitly turns them off (`CacheOptions.preset`
is None then).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Optional

from .options import ADAPTIVE_DEFAULTS, FIRST_STREAK_MAX, LONG_RUN_STEPS, LONG_RUN_TAYLORSEER_ORDER, QUALITY_PRESETS

FEW_STEPS = 10  # a run of at most this many steps is a distilled few-step run
# Warmup share of a few-step run per preset (cache-dit's 8-step masks: 5/8, 4/8, 3/8 computed first).
FEW_STEP_WARMUP_SHARE = {"quality": 5 / 8, "balanced": 4 / 8, "fast": 3 / 8}
# At most this many reused steps in a few-step run of <= 4 / more steps (cache-dit: 1 / 2 at medium).
FEW_STEP_MAX_CACHED = {"quality": (1, 1), "balanced": (1, 2), "fast": (1, 3)}
WAN_HIGH_NOISE = {"max_warmup_steps": 4, "max_cached_steps": 8}  # cache-dit's Wan 2.2 example
WAN_LOW_NOISE = {"max_warmup_steps": 2}
# Budgets of a long run, predicted with TaylorSeer order 2 (QUALITY_PRESETS hold for order 1).
LONG_RUN_BUDGETS = {"quality": 0.1, "balanced": 0.2, "fast": 0.22}
# A long run of fewer whole steps than this keeps its preset's order-1 budget where that is lower
# (long_run_budget; the module docstring says why).
SHORT_LONG_RUN_STEPS = 24
# A long run of this many steps or more may reuse this many steps in a row (the default's 4 below).
# Its own steps count, not the whole denoising's it stands for: a 28-step img2img run at denoise 0.5
# stands for 56 steps, and 5 in a row there cost the bundled FLUX layout 3 dB (40.0 -> 43.4 with 4).
LONGER_RUN_STEPS = 50
LONGER_RUN_MAX_IN_A_ROW = 5
UNET_WINDOW = (0.15, 0.95)  # ComfyUI's EasyCache defaults (start_percent, end_percent)
SPLIT_MARGIN = 0.02  # a run starting after / ending before this share of the denoising is a split run

# Family by class name (ComfyUI's diffusion model or BaseModel class, diffusers' transformer / unet class).
FAMILIES = {
    "Flux": "flux", "FluxTransformer2DModel": "flux", "Flux2": "flux", "Flux2Transformer2DModel": "flux",
    "Chroma": "flux", "ChromaTransformer2DModel": "flux",
    "WanModel": "wan", "VaceWanModel": "wan", "WanTransformer3DModel": "wan",
    "QwenImageTransformer2DModel": "qwen-image", "HunyuanVideo": "hunyuan-video",
    "HunyuanVideoTransformer3DModel": "hunyuan-video", "LTXVModel": "ltxv", "LTXVideoTransformer3DModel": "ltxv",
    "MMDiT": "sd3", "SD3Transformer2DModel": "sd3", "NextDiT": "lumina2", "Lumina2Transformer2DModel": "lumina2",
    "ZImageTransformer2DModel": "lumina2", "HiDreamImageTransformer2DModel": "hidream",
    "UNetModel": "unet", "UNet2DConditionModel": "unet",
}


def detect_family(model: Any) -> str:
    """The family of a model object: its class or the first base class listed in FAMILIES
    ("dit" for an unknown transformer; the caller says "unet" for an unknown step-level model)."""
    for cls in type(model).__mro__:
        family = FAMILIES.get(cls.__name__)
        if family is not None:
            return family
    return "dit"


def family_of(model: Any, step_level: bool = False) -> str:
    """`detect_family`, with an unknown model cached at step level counted as a UNet."""
    family = detect_family(model)
    return "unet" if family == "dit" and step_level else family


def expert_of(index: int, count: int, family: str) -> Optional[str]:
    """Which Wan 2.2 expert the `index`-th of a pipeline's `count` transformers is ("high" for
    `transformer`, "low" for `transformer_2`, as diffusers' WanPipeline runs them); None otherwise."""
    if family != "wan" or count != 2:
        return None
    return "high" if index == 0 else "low"


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What is known about a run when it starts."""

    total_steps: Optional[int] = None  # steps of this run (None: unknown until it ends)
    start: float = 0.0  # share of the whole denoising done when it starts (ComfyUI: from the sigmas)
    end: Optional[float] = None  # share done when it ends (None: unknown, taken as the end)
    guidance: Optional[float] = None  # its classifier-free guidance scale (None: unknown or no CFG)
    sampler: Optional[str] = None  # its sampler's name (ComfyUI) or scheduler class (None: unknown)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What a preset sets for one run: the budget, and the config fields a family rule changed."""

    preset: str
    family: str
    rule: str  # "standard" | "long run" | "few-step" | "high-noise expert" | "low-noise expert" | "step level"
    budget: float
    config: dict  # DBCacheConfig fields changed by the rule
    window: Optional[tuple] = None  # (start_percent, end_percent) when the rule sets one
    taylorseer_order: Optional[int] = None  # the default TaylorSeer's order when the rule sets one
    first_streak_max: Optional[int] = None  # at most this many reused steps in the run's first streak

    def label(self) -> str:
        """What the per-run log line and the stats node say, e.g. `balanced, few-step: warmup 4 ...`."""
        parts = [f"budget {self.budget:g}"]
        names = {"max_warmup_steps": "warmup", "max_continuous_cached_steps": "max in a row",
                 "max_cached_steps": "max reused"}
        parts += [f"{names[k]} {v}" for k, v in self.config.items()]
        if self.first_streak_max is not None:
            parts.append(f"first streak {self.first_streak_max}")
        if self.taylorseer_order is not None:
            parts.append(f"TaylorSeer {self.taylorseer_order}")
        if self.window is not None:
            parts.append(f"window {self.window[0]:g}-{self.window[1]:g}")
        return f"{self.preset}, {self.rule}: " + ", ".join(parts)


def long_run_budget(preset: str, whole_steps: float) -> float:
    """The error budget of a long run (TaylorSeer order 2) of `whole_steps` steps over the whole
    denoising: LONG_RUN_BUDGETS, or the preset's own budget where that is lower below
    SHORT_LONG_RUN_STEPS (see the module docstring)."""
    budget = LONG_RUN_BUDGETS[preset]
    return min(budget, QUALITY_PRESETS[preset]) if whole_steps < SHORT_LONG_RUN_STEPS - 0.5 else budget


def plan_run(preset: str, family: str, run: RunInfo, step_level: bool = False,
             expert: Optional[str] = None, default_taylorseer: bool = False) -> RunSettings:
    """The settings of one run of a `family` model at `preset` (see the module docstring).
    `expert`: "high" / "low" when the caller knows which Wan 2.2 expert this is (a diffusers
    pipeline's transformer / transformer_2); else a Wan run's span of the denoising says it.
    `default_taylorseer`: the model runs the default's own TaylorSeer (the long-run rule may raise
    its order)."""
    if preset not in QUALITY_PRESETS:
        raise ValueError(f"preset={preset!r} is invalid; allowed: {' | '.join(repr(p) for p in QUALITY_PRESETS)}")
    budget = QUALITY_PRESETS[preset]
    steps = run.total_steps
    span = (1.0 if run.end is None else run.end) - run.start  # a split run (one Wan expert) covers part of it
    whole = steps / span if steps and span > 0.05 else steps  # the steps of the whole denoising, about
    if steps is not None and 0 < steps and whole <= FEW_STEPS + 0.5:
        warmup = min(steps - 1, max(1, math.ceil(FEW_STEP_WARMUP_SHARE[preset] * steps)))
        short, longer = FEW_STEP_MAX_CACHED[preset]
        config = {"max_warmup_steps": warmup, "max_continuous_cached_steps": 1,
                  "max_cached_steps": short if steps <= 4 else longer}
        return RunSettings(preset, family, "few-step", budget, config)
    if family == "wan":
        if expert == "low" or (expert is None and run.start > SPLIT_MARGIN):
            return RunSettings(preset, family, "low-noise expert", budget, dict(WAN_LOW_NOISE))
        if expert == "high" or (run.end is not None and run.end < 1.0 - SPLIT_MARGIN):
            return RunSettings(preset, family, "high-noise expert", budget, dict(WAN_HIGH_NOISE))
    if step_level or family == "unet":
        return RunSettings(preset, family, "step level", budget, {}, UNET_WINDOW)
    config = {"max_warmup_steps": ADAPTIVE_DEFAULTS["max_warmup_steps"]}
    first = FIRST_STREAK_MAX  # see FIRST_STREAK_MAX: the default's 4 in a row, 3 right after the warmup
    if default_taylorseer and whole is not None and whole >= LONG_RUN_STEPS - 0.5:
        if steps >= LONGER_RUN_STEPS:  # its own steps: see LONGER_RUN_STEPS
            config["max_continuous_cached_steps"] = LONGER_RUN_MAX_IN_A_ROW
            first = None
        return RunSettings(preset, family, "long run", long_run_budget(preset, whole), config,
                           taylorseer_order=LONG_RUN_TAYLORSEER_ORDER, first_streak_max=first)
    return RunSettings(preset, family, "standard", budget, config, first_streak_max=first)


def apply_settings(options: Any, settings: RunSettings) -> Any:
    """A copy of `options` (CacheOptions) with a run's settings applied."""
    out = copy.copy(options)  # shallow: `blocks` may hold the model's own ModuleLists
    out.cache_config = copy.copy(options.cache_config)
    out.error_budget = settings.budget
    for key, value in settings.config.items():
        setattr(out.cache_config, key, value)
    if settings.taylorseer_order is not None and out.calibrator_config is not None:
        out.calibrator_config = copy.copy(options.calibrator_config)
        out.calibrator_config.taylorseer_order = settings.taylorseer_order
    if settings.window is not None:
        out.start_percent, out.end_percent = settings.window
    out.first_streak_max = settings.first_streak_max
    return out.validate()
