"""Pieces of the ComfyUI adapter that need no ComfyUI: step indices from a sigma schedule, and
the layout table's fallback."""

from __future__ import annotations

import torch

from cachedit.adapters import comfyui
from cachedit.config import CacheOptions
from cachedit.manager.engine import CacheEngine


def _handle(sigmas):
    handle = comfyui._Handle(CacheEngine(0, "t", CacheOptions(), [4]), comfyui.layout_of(torch.nn.Linear(1, 1)), None)
    handle.set_schedule(torch.tensor(sigmas))
    return handle


def test_step_of_exact_between_and_duplicates():
    s = [1.0, 0.75, 0.5, 0.25, 0.0]
    h = _handle(s)
    f = [float(v) for v in torch.tensor(s)]
    assert [h.step_of(f[i], {}) for i in range(4)] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    h = _handle(s)
    # Heun: first evaluation at sigma_i, second at sigma_{i+1}; dpm_2: second between the two
    assert [h.step_of(x, {})[0] for x in (f[0], f[1], f[1], f[2], 0.6, f[2])] == [0, 1, 1, 2, 1, 2]
    assert h.step_of(f[4], {})[0] == 3  # the final sigma never gets its own step
    h = _handle([1.0, 0.5, 0.5, 0.0])
    assert [h.step_of(x, {})[0] for x in (1.0, 0.5, 0.5)] == [0, 1, 1]


def test_step_of_from_sample_sigmas_and_none():
    h = comfyui._Handle(CacheEngine(0, "t", CacheOptions(), [4]), None, None)
    assert h.step_of(None, {}) == (None, None)
    assert h.step_of(0.5, {}) == (None, None)  # no schedule anywhere: the engine falls back to timesteps
    first = torch.tensor([1.0, 0.5, 0.0])
    assert h.step_of(0.5, {"sample_sigmas": first}) == (1, 2)
    second = torch.tensor([0.8, 0.6, 0.4, 0.0])
    assert h.step_of(0.8, {"sample_sigmas": second}) == (0, 3)  # a new tensor: a new schedule
    h.set_schedule(first)  # what the OUTER_SAMPLE wrapper does: it wins over sample_sigmas
    assert h.step_of(0.5, {"sample_sigmas": second}) == (1, 2)


def test_unknown_models_cache_whole_steps():
    layout = comfyui.layout_of(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert layout.mode == "step" and layout.lists == () and not layout.clone_inputs
