"""Additions between blocks (ControlNet residuals, Wan VACE hints): a reused step must add this
step's additions once, on top of the blocks' own cached residuals, never last step's again.

The blocks here add a constant (their residual does not depend on their input or the step), so a
cached residual is exact and every difference from the uncached output is the cache's handling of
the additions: the cached run must equal the uncached one.
"""

from __future__ import annotations

import math
from typing import List, Optional

import pytest
import torch
from torch import nn

import cachedit
from cachedit.manager.torch_hooks import adds_between_blocks

BLOCKS, TOKENS, DIM = 6, 8, 16


class ConstantBlock(nn.Module):
    """A block whose residual is a constant: attention-free, but named like a DiT block list entry."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(DIM, generator=torch.Generator().manual_seed(seed)))

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.bias


class ControlledDiT(nn.Module):
    """Adds `controlnet_block_samples[i]` after block i, in place (as ComfyUI does) or not (diffusers)."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place = in_place
        self.transformer_blocks = nn.ModuleList(ConstantBlock(i) for i in range(BLOCKS))

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor,
                controlnet_block_samples: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        temb = timestep.reshape(-1, 1).float()
        h = hidden_states
        for i, block in enumerate(self.transformer_blocks):
            h = block(h, temb)
            if controlnet_block_samples is not None:
                if self.in_place:
                    h += controlnet_block_samples[i]
                else:
                    h = h + controlnet_block_samples[i]
        return h


def _samples(t: float) -> List[torch.Tensor]:
    """This step's additions: a different pattern per block, changing with the timestep."""
    g = torch.Generator().manual_seed(7)
    return [math.sin(3.0 * t * (i + 1)) * torch.randn(1, TOKENS, DIM, generator=g) for i in range(BLOCKS)]


def _sample(model: nn.Module, steps: int = 12, control_until: int = 99) -> torch.Tensor:
    """Euler-like loop; the control is passed at steps < control_until."""
    x = torch.randn(2, TOKENS, DIM, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for i in range(steps):
            t = 1.0 - i / steps
            samples = _samples(t) if i < control_until else None
            out = model(x, torch.tensor([t * 1000.0]), controlnet_block_samples=samples)
            x = x - 0.05 * out / (1.0 + out.abs().mean())
    return x


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place adds (ComfyUI)", "out-of-place adds (diffusers)"])
def test_reused_steps_add_this_steps_control_once(in_place):
    model = ControlledDiT(in_place)
    reference = _sample(model)
    cachedit.enable_cache(model, strategy="fixed", skip_interval=2, warmup_steps=1)
    try:
        cached = _sample(model)
        stats = cachedit.summary(model, logging=False)[0]
    finally:
        cachedit.disable_cache(model)
    assert len(stats.cached_steps) >= 4  # the comparison below covers reused steps
    torch.testing.assert_close(cached, reference, rtol=1e-5, atol=1e-5)


def test_control_ending_mid_run_computes_the_first_two_steps_without_it():
    model = ControlledDiT(in_place=True)
    reference = _sample(model, control_until=5)
    cachedit.enable_cache(model, strategy="fixed", skip_interval=2, warmup_steps=1)
    try:
        cached = _sample(model, control_until=5)
        stats = cachedit.summary(model, logging=False)[0]
    finally:
        cachedit.disable_cache(model)
    # the residuals were made with the control present; forecasts restart from two steps without it
    assert 5 not in stats.cached_steps and 6 not in stats.cached_steps
    assert any(s > 6 for s in stats.cached_steps) and any(s < 5 for s in stats.cached_steps)
    torch.testing.assert_close(cached, reference, rtol=1e-5, atol=1e-5)


def test_adds_between_blocks_reads_diffusers_keywords():
    t = torch.zeros(1)
    assert adds_between_blocks({"controlnet_block_samples": [t], "controlnet_blocks_repeat": False})
    assert adds_between_blocks({"block_controlnet_hidden_states": (None, t)})  # SD3
    assert adds_between_blocks({"control_hidden_states": t, "control_hidden_states_scale": t})  # Wan VACE
    assert not adds_between_blocks({"controlnet_block_samples": None, "controlnet_blocks_repeat": True})
    assert not adds_between_blocks({"controlnet_single_block_samples": [], "encoder_hidden_states": t})


def test_comfyui_calls_with_control_vace_or_block_patches_are_injected():
    from cachedit.adapters.comfyui.hooks import _adds_between_blocks

    x, t = torch.zeros(1), torch.zeros(1)
    plain = (x, t, None, None, None, {})
    assert not _adds_between_blocks(plain, {}, {})
    assert _adds_between_blocks((x, t, None, None, {"input": [x]}, {}), {}, {})  # ControlNet (apply_model's 5th argument)
    assert _adds_between_blocks(plain, {"vace_context": x, "vace_strength": [1.0]}, {})  # Wan VACE
    assert _adds_between_blocks(plain, {}, {"patches": {"double_block": [lambda args: args]}})  # Qwen DiffSynth
    assert not _adds_between_blocks(plain, {}, {"patches": {"post_input": [lambda args: args]}})  # before the blocks


def test_follow_additions_drops_residuals_and_forecasts_for_two_calls():
    from cachedit.manager.block_reuse import BlockReuse
    from cachedit.manager.state import BranchState

    branch = BranchState(index=0)
    branch.residuals[0] = {"hidden": torch.ones(1)}
    branch.taylor[(0, "hidden")] = object()
    BlockReuse.follow_additions(branch, False, 0)  # plain calls, as before: nothing changes
    assert branch.residuals and branch.taylor
    BlockReuse.follow_additions(branch, True, 1)  # a ControlNet starts
    assert not branch.residuals and not branch.taylor and branch.additions_changed_step == 1
    branch.residuals[0] = {"hidden": torch.ones(1)}  # stored by the computed call
    BlockReuse.follow_additions(branch, True, 2)  # the next call computes too
    assert not branch.residuals
    branch.residuals[0] = {"hidden": torch.ones(1)}
    branch.taylor[(0, "hidden")] = object()
    BlockReuse.follow_additions(branch, True, 3)  # from then on it may reuse
    assert branch.residuals and branch.taylor


def test_sampler_noise_check_skips_the_turn_after_a_control_starts_or_stops():
    """The model's output turns where a ControlNet stops (its end percent): the next step's input
    change points elsewhere, which is not sampler noise (a strong ControlNet ending at 50% made the
    bundled FLUX layout compute 24 of 28 steps)."""
    from cachedit.manager import sampler_noise
    from cachedit.manager.state import BranchState

    def cosines(changed_at: int) -> dict:
        branch = BranchState(index=0)
        branch.additions_changed_step = changed_at
        x, direction, seen = torch.zeros(2, 16), torch.ones(2, 16), {}
        for step in range(6):
            branch.last_computed_step = step - 1  # every step computed
            sampler_noise.track(branch, step, x)
            seen[step] = None if branch.noise_pending is None else round(float(branch.noise_pending), 3)
            branch.noise_pending = None
            if step == 3:
                direction = -direction  # the output computed at step 3 turns the path
            x = x + 0.1 * direction
        return seen

    assert cosines(changed_at=-1) == {0: None, 1: None, 2: 1.0, 3: 1.0, 4: -1.0, 5: 1.0}
    assert cosines(changed_at=3) == {0: None, 1: None, 2: 1.0, 3: 1.0, 4: None, 5: 1.0}
