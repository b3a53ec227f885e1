"""Quality on the bundled trained model (28 Euler steps, CFG 3 batched): exact outcomes, no timing.

Speed is measured by the demo and benchmarks/, never here."""

from __future__ import annotations

import pytest
import torch

import cachedit

digits = pytest.importorskip("cachedit.bundled.digits")

STEPS = 28
LABELS = [i % 10 for i in range(20)]


@pytest.fixture(scope="module")
def model_and_reference():
    torch.set_num_threads(1)
    model = digits.load_model()
    reference = digits.generate(model, LABELS, num_steps=STEPS, guidance_scale=3.0, seed=0, cfg_mode="batched")
    return model, reference


def _cached(model, **kwargs):
    cachedit.enable_cache(model.transformer, **kwargs)
    try:
        images = digits.generate(model, LABELS, num_steps=STEPS, guidance_scale=3.0, seed=0, cfg_mode="batched")
        stats = cachedit.summary(model.transformer, logging=False)[0]
    finally:
        cachedit.disable_cache(model.transformer)
    return images, stats


def test_default_adaptive_reuses_most_steps_at_high_psnr(model_and_reference):
    model, reference = model_and_reference
    images, stats = _cached(model)
    assert len(stats.cached_steps) >= 14
    assert digits.psnr(images, reference) >= 40.0
    assert digits.digit_accuracy(images, LABELS) == digits.digit_accuracy(reference, LABELS)


def test_never_reuse_is_bit_identical_on_the_trained_model(model_and_reference):
    model, reference = model_and_reference
    images, stats = _cached(model, cache_config=cachedit.DBCacheConfig(
        Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=1e-9, max_warmup_steps=0))
    assert stats.cached_steps == [] and len(stats.residual_diffs) == STEPS - 1
    assert torch.equal(images, reference)
    again = digits.generate(model, LABELS, num_steps=STEPS, guidance_scale=3.0, seed=0, cfg_mode="batched")
    assert torch.equal(again, reference)  # after disable_cache


@pytest.mark.parametrize("kwargs", [dict(strategy="fixed", skip_interval=2), dict(strategy="dynamic", skip_interval=2)],
                         ids=["fixed", "dynamic"])
def test_schedule_strategies_keep_digits(model_and_reference, kwargs):
    model, reference = model_and_reference
    images, stats = _cached(model, **kwargs)
    assert len(stats.cached_steps) >= 8
    assert digits.psnr(images, reference) >= 30.0
    assert digits.digit_accuracy(images, LABELS) >= digits.digit_accuracy(reference, LABELS) - 0.05


def test_separate_cfg_calls_cache_per_branch(model_and_reference):
    model, _ = model_and_reference
    reference = digits.generate(model, LABELS, num_steps=STEPS, guidance_scale=3.0, seed=0, cfg_mode="separate")
    cachedit.enable_cache(model.transformer)
    images = digits.generate(model, LABELS, num_steps=STEPS, guidance_scale=3.0, seed=0, cfg_mode="separate")
    stats = cachedit.summary(model.transformer, logging=False)[0]
    cachedit.disable_cache(model.transformer)
    assert stats.accumulated_executed_steps == STEPS and stats.accumulated_transformer_executed_steps == 2 * STEPS
    assert len(stats.cached_steps) >= 10 and len(stats.cfg_cached_steps) >= 10
    assert digits.psnr(images, reference) >= 38.0


def test_heun_sampler_with_cache(model_and_reference):
    model, _ = model_and_reference
    reference = digits.generate(model, LABELS, num_steps=14, guidance_scale=3.0, seed=0, sampler="heun")
    cachedit.enable_cache(model.transformer)
    images = digits.generate(model, LABELS, num_steps=14, guidance_scale=3.0, seed=0, sampler="heun")
    cachedit.disable_cache(model.transformer)
    assert digits.psnr(images, reference) >= 35.0
    assert digits.digit_accuracy(images, LABELS) == digits.digit_accuracy(reference, LABELS)
