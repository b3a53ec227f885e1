"""Sampler noise: notice a sampler that adds fresh noise at every step, where reuse changes the image.

Ancestral and SDE samplers (euler_ancestral, dpmpp_2m_sde, dpmpp_sde, er_sde, sa_solver, seeds,
lcm, ddpm...) re-noise the latent after each step. The model's job at the next step is to remove
that new noise, and a reused output does not know it: the image follows another noise path than
the uncached one. Measured in ComfyUI (bundled FLUX-layout model, 28 steps, batch 8, CFG 3, the
default's own decisions): euler_ancestral reused 3 steps at 38.2 dB, dpmpp_2m_sde 5 steps at 23.3 dB,
dpmpp_sde 9 steps at 26.3 dB, against 18 reused steps at 44.3 dB with euler. Reusing the denoised
estimate instead of the model output does not save it (20-28 dB with 18 reused steps), and on
dpmpp_2m_sde one reused step late in the run already costs 37-39 dB. Error feedback does not see it
either: its reuse errors are relative to the blocks' output, where the new noise is a small part.

The sampler is recognised from what it does to the model input, not from its name (custom samplers
have any name): a deterministic sampler moves the latent along a smooth path, so two consecutive
steps' input changes point the same way (cosine 0.76-1.0 over euler, heun, dpmpp_2m, uni_pc, deis,
ipndm, lms, res_multistep, gradient_estimation, dpm_fast on the bundled models), while fresh noise
makes them unrelated or opposed (-0.8 to 0.4 at the steps where noise is added). Only changes made
from computed outputs count: after a reuse, a multistep sampler (uni_pc, ipndm) corrects its path
and bends it (cosines down to 0.5 with the default's reuses). Each cosine below NOISE_COSINE adds
its shortfall to the branch's evidence, and at NOISE_EVIDENCE the run computes every step from there
on and says so (the run's record, its log line, the stats node): a clearly negative cosine (most
ancestral / SDE samplers at step 2, before the first reuse) decides at once, a single dip of a
solver with inner stages does not (dpm_fast: one cosine of 0.12 in a run). After a cosine below
NOISE_COSINE the next step computes, so the next cosine can be read (er_sde: 0.2 at step 2, below
zero at step 3; a reuse in between would have hidden it). The cosine is computed on the device
at each step's first call and read with the decision's one host copy (decisions.py). Only with
error feedback (the presets): an explicit cache-dit configuration keeps cache-dit's behaviour.
The cosine right after a ControlNet started or stopped (block_reuse.follow_additions) is not read:
the model's output turns there, and a strong ControlNet ending at 50% turned the path to a cosine
below 0.5 on the bundled FLUX layout.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from .state import BranchState

NOISE_COSINE = 0.5  # below this cosine of consecutive input changes a step added noise
NOISE_EVIDENCE = 0.5  # the summed shortfalls (NOISE_COSINE - cosine) that mark a run as noisy
SAMPLED_ELEMENTS = 65536  # per batch element at most about this many input elements are followed


def track(branch: BranchState, step: int, x: Optional[torch.Tensor]) -> None:
    """Take the model input `x` of `branch`'s call at `step` (its first call of that step counts):
    the cosine of this step's input change with the previous step's, both made from computed
    outputs, per batch element, kept on the device (`branch.noise_pending`) until the decision
    reads it. No host sync."""
    if x is None or step == branch.noise_step or not x.is_floating_point():
        return
    # this step's change counts when it follows the last step taken and came from a computed output
    follows = step == branch.noise_step + 1 and branch.last_computed_step == step - 1
    branch.noise_step = step
    flat = x.detach().reshape(x.shape[0] if x.dim() else 1, -1)
    # a video latent: an even sample of it; one float32 copy, kept (the sampler may reuse x's memory)
    flat = flat[:, ::max(1, flat.shape[1] // SAMPLED_ELEMENTS)].to(torch.float32, copy=True)
    last, last_change = branch.noise_input, branch.noise_change
    branch.noise_input = flat
    if last is None or last.shape != flat.shape or not follows:
        branch.noise_change = None
        return
    change = flat - last
    branch.noise_change = change
    if last_change is None or branch.additions_changed_step == step - 1:
        return  # a ControlNet that started or stopped at the last step turned the path: not noise
    dot = (change * last_change).sum(1)
    norms = change.square().sum(1) * last_change.square().sum(1)
    cosine = torch.where(norms > 0, dot / norms.clamp_min(1e-30).sqrt(), torch.ones_like(dot))  # no change: no evidence
    branch.noise_pending = cosine.min()


def parts(branch: BranchState, device: torch.device, fixed: bool = False) -> List[torch.Tensor]:
    """[seen, cosine]: the pending cosine for the decision's host copy, and clears it. None pending:
    [] (nothing to read), or with `fixed` [0, 0] (every rank sends the same length to a
    torch.distributed reduction)."""
    pending, branch.noise_pending = branch.noise_pending, None
    if pending is None:
        if not fixed:
            return []
        zero = torch.zeros(1, device=device)
        return [zero, zero]
    return [torch.ones(1, device=pending.device), pending.reshape(1)]


def read(branch: BranchState, seen: float, cosine: float) -> None:
    """Take the values `parts` gave back (summed over the ranks under torch.distributed: their
    mean cosine): a cosine below NOISE_COSINE adds its shortfall to the evidence, and enough of it
    marks the branch as sampled with added noise."""
    if seen > 0.0:
        shortfall = NOISE_COSINE - cosine / seen
        branch.noise_doubt = shortfall > 0.0  # until the next cosine: compute, so that it can be read
        branch.noise_evidence += max(0.0, shortfall)
        branch.noisy = branch.noise_evidence >= NOISE_EVIDENCE - 1e-9
