"""Sampler kind: Euler, which error feedback's budget is stated for, or a sampler that carries a
reused step's error further (multistep and higher-order solvers), whose runs get a smaller budget.

Euler uses each model output once: x += v * d_sigma. Multistep solvers (dpmpp_2m, deis,
res_multistep, uni_pc, ipndm, lms; diffusers' UniPC, DPM-Solver multistep and PNDM schedulers:
Wan's and SD1.5's defaults there) extrapolate from the last outputs with weights above 1, and
Heun-type solvers (heun, dpm_2; diffusers' FlowMatchHeun) correct a step with a second output: a
reused output's error goes into the next steps too. Measured in real ComfyUI (bundled FLUX and Wan layouts, 28
steps, batch 8, CFG 3, seeds 0-2, the default `balanced` budget 0.2 of a 28-step run): Euler 41.7 /
41.4 dB, but heun, dpmpp_2m, uni_pc, deis and res_multistep 39.0-40.7 on FLUX and dpmpp_2m, deis,
res_multistep 38.5-39.4 on Wan, with every measured reuse error within the budget. At 0.8 of the
budget (0.16) every one of those cells held 41.7-47.7 dB for 1-2 more computed steps of 28 per
generation (benchmarks/results/runs/2026-12-02_sampler_budget.md); at 0.9 FLUX uni_pc stayed at
39.6. Euler runs, and runs whose sampler is not known (a transformer enabled without its pipeline),
keep the budget as given.

Multistep samplers of order 3 and more (uni_pc, uni_pc_bh2, deis, ipndm, lms) are worse: with
strong guidance they amplify any error in a model output (the instability of high-order multistep
solvers under guidance that DPM-Solver++ describes). On Wan's template schedule in ComfyUI (shift 8,
simple, 30 steps) a 1% perturbation of one output in the second half of the noise costs uni_pc at
CFG 6 about 25 dB more PSNR than euler or dpmpp_2m (47 against 72 dB), at CFG 3 nothing more; the
default there landed at 34-35 dB with uni_pc, uni_pc_bh2, deis and ipndm (dpmpp_2m, res_multistep
51-52 dB), and no budget mends it (0.4 of it: 37.4 dB). So such a run takes 0.6 of the budget, and
above CFG 3 reuses only in the first 15% of the noise level (HIGH_ORDER_GUIDED_END), where a shifted
schedule crowds its first steps and a reuse costs nothing visible: uni_pc at CFG 6 50.4 dB for 17.7
computed steps of 30 (1.7x; reusing up to 25% of the noise: 38.0 dB). Past that end the check for
added noise stops too (decisions.py): nothing is reused there, and the solver's own turns under
guidance read as noise and warned the user of an ancestral sampler.

The sampler is read by name: ComfyUI's KSAMPLER holds its sampling function (`sample_<name>`), a
diffusers pipeline its scheduler. A sampler from another node pack, under a name not known here as
Euler, counts as higher-order: the smaller budget costs a computed step where the larger one could
cost the image. With no name (a transformer called from a loop of its own), a step whose calls take
two different latents at one timestep shows a Heun-type sampler (SECOND_EVALUATION, calls.py), and
the run's budget follows from there: on the held-out HiDream layout, Heun 14 steps, batch 8, CFG 3,
the default went from 39.6 dB at 58% of the block compute to 45.0 at 63% (the budget the same run
gets through a pipeline with FlowMatchHeunDiscreteScheduler). Only which tensor each call gets is
compared (no values: no host sync), so a loop that builds a fresh copy of the same latent for each
CFG branch reads as Heun-type too; the smaller budget costs it about a computed step, not the image.
Pipelines pass one latent to both branches, and they name their scheduler anyway.
"""

from __future__ import annotations

from typing import Any, Optional

HIGHER_ORDER_BUDGET_SCALE = 0.8  # the budget's share on a sampler other than Euler
SECOND_EVALUATION = "heun-type (two latents per step)"  # the sampler's name when only its calls showed it
HIGH_ORDER_BUDGET_SCALE = 0.6  # the budget's share on a multistep sampler of order 3 or more
HIGH_ORDER_GUIDED_END = 0.15  # with CFG above 3 such a sampler reuses only before this noise progress
GUIDED = 3.0  # the CFG scale above which HIGH_ORDER_GUIDED_END applies

# ComfyUI multistep samplers of order 3 or more (uni_pc / uni_pc_bh2 and deis order 3, ipndm and
# lms order 4): unstable under strong guidance (see the module docstring).
HIGH_ORDER_SAMPLERS = frozenset({"uni_pc", "uni_pc_bh2", "deis", "ipndm", "ipndm_v", "lms"})

# ComfyUI sampler names that take one output per step and use it once (ddim runs sample_euler;
# the ancestral / SDE ones among them are caught by sampler_noise.py anyway).
EULER_SAMPLERS = frozenset({"euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "ddim", "ddpm",
                            "lcm"})
# ComfyUI sampler names whose function is named otherwise (sample_unipc runs "uni_pc").
COMFY_FUNCTION_NAMES = {"unipc": "uni_pc", "unipc_bh2": "uni_pc_bh2"}
# diffusers scheduler classes of the same kind.
EULER_SCHEDULERS = frozenset({"FlowMatchEulerDiscreteScheduler", "EulerDiscreteScheduler",
                              "EulerAncestralDiscreteScheduler", "DDIMScheduler", "DDPMScheduler", "LCMScheduler",
                              "FlowMatchLCMScheduler"})


def comfy_sampler_name(sampler: Any) -> Optional[str]:
    """The name of a ComfyUI sampler object as its sampler list says it: KSAMPLER's function without
    `sample_` (`dpm_fast` for its local dpm_fast_function, `uni_pc` for sample_unipc), another
    Sampler's class name; None for None."""
    if sampler is None:
        return None
    function = getattr(sampler, "sampler_function", None)
    name = getattr(function, "__name__", None) if function is not None else None
    if not isinstance(name, str) or not name:
        return type(sampler).__name__
    if name.startswith("sample_"):
        name = name[len("sample_"):]
    elif name.endswith("_function"):
        name = name[: -len("_function")]
    return COMFY_FUNCTION_NAMES.get(name, name)


def pipeline_scheduler_name(pipe: Any) -> Optional[str]:
    """The class name of a diffusers pipeline's scheduler, None when it has none."""
    scheduler = getattr(pipe, "scheduler", None)
    return type(scheduler).__name__ if scheduler is not None else None


def is_euler(name: str) -> bool:
    """Whether a ComfyUI sampler name or a diffusers scheduler class name is an Euler-type sampler."""
    return name in EULER_SAMPLERS or name in EULER_SCHEDULERS


def budget_scale(name: Optional[str]) -> float:
    """What a run's sampler makes of the error budget: 1 for Euler or an unknown sampler (None),
    HIGH_ORDER_BUDGET_SCALE for a multistep sampler of order 3 or more, HIGHER_ORDER_BUDGET_SCALE
    for any other."""
    if name is None or is_euler(name):
        return 1.0
    return HIGH_ORDER_BUDGET_SCALE if name in HIGH_ORDER_SAMPLERS else HIGHER_ORDER_BUDGET_SCALE


def reuse_end(name: Optional[str], guidance: Optional[float]) -> Optional[float]:
    """The noise progress after which a run reuses nothing: HIGH_ORDER_GUIDED_END for a multistep
    sampler of order 3 or more at a CFG scale above GUIDED, else None (no end)."""
    if name in HIGH_ORDER_SAMPLERS and guidance is not None and guidance > GUIDED:
        return HIGH_ORDER_GUIDED_END
    return None
