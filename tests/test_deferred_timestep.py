"""The deferred timestep read (CUDA timesteps are copied without a GPU drain and the call is placed
in its run/step/branch just before the decision). On this CPU machine the same code path runs by
listing "cpu" among the deferred devices; every outcome must equal the immediate path's."""

from __future__ import annotations

import pytest
import torch

import cachedit
from cachedit.manager import torch_hooks
from conftest import sample

SETTINGS = [
    dict(cache_config=cachedit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.9,
                                             max_warmup_steps=2),  # adaptive F1B0 + TaylorSeer
         calibrator_config=cachedit.TaylorSeerCalibratorConfig(taylorseer_order=1)),
    dict(strategy="fixed", skip_interval=2, warmup_steps=2),
    dict(cache_config=cachedit.DBCacheConfig(Fn_compute_blocks=2, Bn_compute_blocks=1, residual_diff_threshold=0.5,
                                             max_warmup_steps=1)),
    dict(cache_config=cachedit.DBCacheConfig(Fn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=1)),
]


def _outcome(model, **kwargs):
    cachedit.enable_cache(model, **kwargs.pop("enable", {}))
    outs = [sample(model, **kwargs) for _ in range(2)]
    s = cachedit.summary(model, logging=False)[0]
    cachedit.disable_cache(model)
    return outs, (s.runs, s.cached_steps, s.cfg_cached_steps, s.residual_diffs, s.accumulated_cached_steps)


@pytest.mark.parametrize("settings", SETTINGS, ids=["F1B0-taylorseer", "fixed", "F2B1", "F0"])
@pytest.mark.parametrize("mode", [dict(cfg="separate", steps=10), dict(cfg="batched", steps=10), dict(heun=True, steps=6)],
                         ids=["separate", "batched", "heun"])
def test_deferred_placement_equals_immediate(tiny_flux, monkeypatch, settings, mode):
    ref_outs, ref_summary = _outcome(tiny_flux, enable=dict(settings), **mode)
    monkeypatch.setattr(torch_hooks, "DEFERRED_TIMESTEP_DEVICES", ("cuda", "cpu"))
    outs, summary = _outcome(tiny_flux, enable=dict(settings), **mode)
    assert summary == ref_summary
    assert ref_summary[1], "the settings must reuse something, or this test compares nothing"
    for a, b in zip(outs, ref_outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fn", [1, 0])
def test_call_is_pending_until_the_probe(tiny_flux, monkeypatch, fn):
    """Fn 1: pending at block 0's input, placed once its output (the probe) was seen; Fn 0 (the
    default): the probe is the blocks' input, so the call is placed before block 0 runs."""
    from cachedit.config import ADAPTIVE_DEFAULTS

    monkeypatch.setattr(torch_hooks, "DEFERRED_TIMESTEP_DEVICES", ("cuda", "cpu"))
    cachedit.enable_cache(tiny_flux, quality="balanced",
                          cache_config=cachedit.DBCacheConfig(**dict(ADAPTIVE_DEFAULTS, Fn_compute_blocks=fn)))
    engine = cachedit.get_manager().entry(tiny_flux).engine
    seen = []
    block0 = tiny_flux.transformer_blocks[0]
    hooked = block0.forward

    def spy(*args, **kwargs):
        seen.append(engine.current.pending is not None)
        out = hooked(*args, **kwargs)
        seen.append(engine.current.pending is not None)
        return out

    block0.forward = spy
    sample(tiny_flux, steps=4)
    del block0.forward
    assert seen == [bool(fn), False] * 4


def test_failure_before_placement_starts_the_next_run_clean(tiny_flux, monkeypatch):
    monkeypatch.setattr(torch_hooks, "DEFERRED_TIMESTEP_DEVICES", ("cuda", "cpu"))
    cachedit.enable_cache(tiny_flux, strategy="fixed", skip_interval=2, warmup_steps=1)
    ref = sample(tiny_flux, steps=8)
    block0 = tiny_flux.transformer_blocks[0]
    hooked = block0.forward
    calls = {"n": 0}

    def boom(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("interrupted before the probe")
        return hooked(*args, **kwargs)

    block0.forward = boom
    with pytest.raises(RuntimeError):
        sample(tiny_flux, steps=8)
    block0.forward = hooked
    assert torch.equal(sample(tiny_flux, steps=8), ref)
    s = cachedit.summary(tiny_flux, logging=False)[0]
    assert s.runs == 3 and s.cached_steps == [2, 4, 6]
