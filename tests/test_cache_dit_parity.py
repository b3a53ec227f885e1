"""Same DBCacheConfig, same model, same inputs: CacheDit reuses the same steps as the real cache-dit.

Differences on purpose (each pinned by a test below):
1. Run boundaries: cache-dit on a bare transformer needs `num_inference_steps` (or
   `refresh_context`) to know where a generation ends; CacheDit infers it from the timestep
   going back up. Without `num_inference_steps`, cache-dit carries its step counter (and so its
   warmup and its Fn buffer) into the next generation; CacheDit starts clean.
2. Default config: `enable_cache(model)` with no config runs CacheDit's tuned `adaptive` defaults
   (F1B0 with TaylorSeer), not cache-dit's F8B0 R0.08 W8 (which reuses far fewer steps here).
3. Diffusers pipelines with true CFG (two calls per step): CacheDit counts steps by timestep and
   keeps one branch per call position; cache-dit, unless told `enable_separate_cfg=True`, counts
   every call as a step.
"""

from __future__ import annotations

import logging

import pytest
import torch

import cachedit

cache_dit = pytest.importorskip("cache_dit", reason="cache-dit is a test dependency (pip install -e .[test])")
digits = pytest.importorskip("cachedit.bundled.digits")

STEPS = 28
LABELS = list(range(10))


def _generate(model, steps: int = STEPS) -> torch.Tensor:
    return digits.generate(model, LABELS, num_steps=steps, guidance_scale=3.0, seed=0, cfg_mode="batched")


def _cache_dit_steps(config_kwargs: dict, runs: int = 1, num_inference_steps=STEPS):
    model = digits.load_model()
    logging.getLogger("cache_dit").setLevel(logging.ERROR)
    cache_dit.enable_cache(model.transformer, cache_config=cache_dit.DBCacheConfig(
        num_inference_steps=num_inference_steps, **config_kwargs))
    steps = []
    for _ in range(runs):
        _generate(model)
        steps.append(list(cache_dit.summary(model.transformer, logging=False)[0].cached_steps))
    cache_dit.disable_cache(model.transformer)
    return steps


def _our_steps(config_kwargs: dict, runs: int = 1):
    model = digits.load_model()
    cachedit.enable_cache(model.transformer, cache_config=cachedit.DBCacheConfig(**config_kwargs))
    steps = []
    for _ in range(runs):
        _generate(model)
        steps.append(list(cachedit.summary(model.transformer, logging=False)[0].cached_steps))
    cachedit.disable_cache(model.transformer)
    return steps


CONFIGS = [
    dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.12),
    dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.2),
    dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.3, max_warmup_steps=4,
         max_continuous_cached_steps=3),
    dict(Fn_compute_blocks=8, Bn_compute_blocks=0, residual_diff_threshold=0.08),
    dict(Fn_compute_blocks=8, Bn_compute_blocks=0, residual_diff_threshold=0.3),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"F{c['Fn_compute_blocks']}B0_R{c['residual_diff_threshold']}")
def test_same_config_reuses_the_same_steps_as_cache_dit(config):
    theirs = _cache_dit_steps(config)[0]
    ours = _our_steps(config)[0]
    assert ours == theirs
    if config["Fn_compute_blocks"] == 1 and config["residual_diff_threshold"] >= 0.2:
        assert len(ours) >= 5  # the comparison means something: many steps reused


def test_difference_1_run_boundaries_without_num_inference_steps():
    config = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.2)
    ours = _our_steps(config, runs=2)
    assert ours[0] == ours[1]  # each generation starts clean
    theirs_told = _cache_dit_steps(config, runs=2)
    assert theirs_told[0] == theirs_told[1] == ours[0]
    theirs_untold = _cache_dit_steps(config, runs=2, num_inference_steps=None)
    assert theirs_untold[0] == ours[0]
    assert theirs_untold[1] != ours[1]  # cache-dit's second generation continues the first's counters


def test_difference_2_default_config():
    model = digits.load_model()
    cachedit.enable_cache(model.transformer)
    _generate(model)
    ours = cachedit.summary(model.transformer, logging=False)[0]
    cachedit.disable_cache(model.transformer)
    assert ours.strategy == "adaptive" and len(ours.cached_steps) >= 10
    theirs = _cache_dit_steps({})[0]
    # cache-dit's own default (F8B0 R0.08 W8) still means the same thing here when asked for explicitly
    model = digits.load_model()
    cachedit.enable_cache(model.transformer, cache_config=cachedit.DBCacheConfig())
    _generate(model)
    default_cd = cachedit.summary(model.transformer, logging=False)[0]
    cachedit.disable_cache(model.transformer)
    assert default_cd.cached_steps == theirs
    assert default_cd.blocks_skipped == 4 * len(theirs)  # 12 blocks - Fn 8 = 4 middle blocks per reused step
    assert len(ours.cached_steps) > len(theirs)
