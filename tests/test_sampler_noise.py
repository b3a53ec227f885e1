"""Samplers that add fresh noise at every step (ancestral / SDE): the presets compute every step
once the model input's path shows it, say so, and calibrate nothing from such a run; an explicit
cache-dit configuration keeps cache-dit's behaviour (manager/sampler_noise.py)."""

from __future__ import annotations

import logging

import pytest
import torch

import cachedit
from cachedit.manager import sampler_noise
from cachedit.manager.state import BranchState
from conftest import flux_inputs, make_tiny_flux, sample


def noisy_sample(model, steps: int = 10, batch: int = 2, renoise: float = 0.5, cfg: str = "none", seed: int = 0):
    """The Euler loop of conftest.sample with fresh noise added after every step, as an ancestral
    sampler does (renoise x the next sigma x a seeded normal draw)."""
    x, enc, pooled, img_ids, txt_ids = flux_inputs(batch, 16, seed)
    uncond = torch.zeros_like(enc)
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    g = torch.Generator().manual_seed(seed + 100)

    def call(h, e, s):
        return model(hidden_states=h, encoder_hidden_states=e, pooled_projections=pooled, timestep=s.expand(h.shape[0]),
                     img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]

    with torch.no_grad():
        for i in range(steps):
            s, s_next = sigmas[i], sigmas[i + 1]
            if cfg == "separate":
                vc, vu = call(x, enc, s), call(x, uncond, s)
                v = vu + 2.0 * (vc - vu)
            else:
                v = call(x, enc, s)
            x = x + (s_next - s) * v
            if s_next > 0:
                x = x + renoise * s_next * torch.randn(x.shape, generator=g)
    return x


def _cosine_of(inputs):
    branch = BranchState(index=0)
    for step, x in enumerate(inputs):
        branch.last_computed_step = step - 1  # every step before computed
        sampler_noise.track(branch, step, x)
    pending = branch.noise_pending
    return None if pending is None else float(pending)


def test_cosine_of_consecutive_input_changes():
    """A smooth path (a deterministic sampler) has changes that point the same way, fresh noise does
    not; no change at all is no evidence; one input per step (a step's second call is not taken)."""
    g = torch.Generator().manual_seed(0)
    start, drift = torch.randn(2, 64, generator=g), torch.randn(2, 64, generator=g)
    smooth = [start + k * drift * (1 + 0.05 * k) for k in range(3)]
    assert _cosine_of(smooth) == pytest.approx(1.0, abs=1e-6)
    noisy = [start + k * 0.1 * drift + torch.randn(2, 64, generator=g) for k in range(3)]
    assert _cosine_of(noisy) < sampler_noise.NOISE_COSINE
    assert _cosine_of([start, start, start]) == 1.0
    assert _cosine_of(smooth[:2]) is None  # two inputs: one change, nothing to compare yet
    branch = BranchState(index=0)
    sampler_noise.track(branch, 0, smooth[0])
    branch.last_computed_step = 0
    sampler_noise.track(branch, 1, smooth[1])
    sampler_noise.track(branch, 1, noisy[2])  # the same step again (another call): ignored
    branch.last_computed_step = 1
    sampler_noise.track(branch, 2, smooth[2])
    assert float(branch.noise_pending) == pytest.approx(1.0, abs=1e-6)
    # a large (video) latent: an even sample of about SAMPLED_ELEMENTS per batch element is followed
    big_start, big_drift = torch.randn(2, 300_000, generator=g), torch.randn(2, 300_000, generator=g)
    big = [big_start + k * big_drift for k in range(3)]
    branch = BranchState(index=0)
    for step, x in enumerate(big):
        branch.last_computed_step = step - 1
        sampler_noise.track(branch, step, x)
    assert branch.noise_input.shape == (2, 75_000) and float(branch.noise_pending) == pytest.approx(1.0, abs=1e-5)
    big_noisy = [x + torch.randn(x.shape, generator=g) for x in big]
    assert _cosine_of(big_noisy) < sampler_noise.NOISE_COSINE
    # a change made from a reused output does not count (a multistep sampler bends its path after one)
    branch = BranchState(index=0)
    for step, x in enumerate(noisy):
        branch.last_computed_step = 0
        sampler_noise.track(branch, step, x)
    assert branch.noise_pending is None
    # the worst batch element counts: one image re-noised is enough
    mixed = [torch.stack([smooth[k][0], noisy[k][1]]) for k in range(3)]
    assert _cosine_of(mixed) == pytest.approx(_cosine_of([n[1:] for n in noisy]), abs=1e-6)
    # read: [seen, cosine] (summed over ranks under torch.distributed); a cosine <= 0 decides at once,
    # shallower dips add up, and after any dip the branch doubts (computes) until the next cosine
    for seen, cosine, noisy_flag in ((1, 0.9, False), (1, -0.1, True), (1, 0.0, True), (0, 0.0, False),
                                     (2, 1.8, False), (2, -0.6, True)):
        branch = BranchState(index=0)
        sampler_noise.read(branch, seen, cosine)
        assert branch.noisy is noisy_flag
    branch = BranchState(index=0)
    sampler_noise.read(branch, 1, 0.2)
    assert branch.noise_doubt and not branch.noisy and branch.noise_evidence == pytest.approx(0.3)
    sampler_noise.read(branch, 1, 0.9)
    assert not branch.noise_doubt and not branch.noisy
    sampler_noise.read(branch, 1, 0.3)
    assert branch.noise_doubt and branch.noisy


@pytest.mark.parametrize("cfg", ["none", "separate"])
def test_presets_compute_every_step_of_a_noisy_run(cfg, caplog):
    """The default reuses steps of a deterministic run; on the same model with noise added at every
    step it computes all of them from the step the noise shows (the third: two changes to compare)
    and its output is the uncached one, bit for bit. The run's record, summary(), its log line and a
    one-time warning say so."""
    model = make_tiny_flux()
    reference = noisy_sample(model, cfg=cfg)
    cachedit.enable_cache(model, debug=True)  # debug: the per-run log lines too
    sample(model, steps=10, cfg=cfg)
    assert cachedit.summary(model, logging=False)[0].cached_steps  # deterministic: steps are reused
    assert cachedit.summary(model, logging=False)[0].sampler_noise_step is None
    with caplog.at_level(logging.INFO, logger="cachedit"):
        out = noisy_sample(model, cfg=cfg)
        noisy_sample(model, cfg=cfg)  # a second noisy run: no second warning
        sample(model, steps=10, cfg=cfg)  # ends the second noisy run
    assert torch.equal(out, reference)
    record = cachedit.get_manager().stats.last_record(cachedit.get_manager().entry(model).key)
    assert record.noisy_from == 2 and not any(s.reused for s in record.steps)
    lines = [r.getMessage() for r in caplog.records]
    warnings = [m for m in lines if "adds new noise at every step" in m]
    assert len(warnings) == 1 and "from step 2" in warnings[0]
    runs = [m for m in lines if "event='cachedit.run'" in m]
    assert sum("sampler_noise='every step computed from step 2'" in m for m in runs) == 2
    assert len(runs) == 3 and "sampler_noise" not in runs[0] and "reused='0/" not in runs[0]  # the deterministic run
    cachedit.disable_cache(model)


def test_summary_after_a_noisy_run(caplog):
    model = make_tiny_flux()
    cachedit.enable_cache(model)
    noisy_sample(model)
    noisy_sample(model)  # ends the first run
    s = cachedit.summary(model, logging=False)[0]
    assert s.sampler_noise_step == 2 and s.cached_steps == []
    with caplog.at_level(logging.INFO, logger="cachedit"):
        cachedit.summary(model)
    assert any("added new noise at every step" in r.getMessage() and "from step 2 on" in r.getMessage()
               for r in caplog.records)
    cachedit.disable_cache(model)


def test_a_noisy_run_calibrates_nothing():
    """Error feedback's ratios after a deterministic run are what the next deterministic run starts
    from; a noisy run in between measures errors of another kind and must not move them."""
    model = make_tiny_flux()
    cachedit.enable_cache(model)
    engine = cachedit.get_manager().entry(model).engine
    sample(model, steps=10)
    sample(model, steps=10)
    engine.finish_run()  # its last error is read as the run ends
    feedback = engine.feedback
    ratios, provisional = dict(feedback.log_ratios), dict(feedback.provisional)
    assert ratios
    noisy_sample(model)
    noisy_sample(model)
    engine.finish_run()
    assert feedback.log_ratios == ratios and feedback.provisional == provisional
    cachedit.disable_cache(model)


def test_explicit_cache_dit_config_keeps_reusing():
    """cache-dit decides from its threshold alone, whatever the sampler: an explicit threshold
    (cache-dit's config) reuses in a noisy run as it does there, and nothing is tracked."""
    model = make_tiny_flux()
    cachedit.enable_cache(model, residual_diff_threshold=0.8, max_warmup_steps=2)
    noisy_sample(model)
    noisy_sample(model)
    s = cachedit.summary(model, logging=False)[0]
    assert s.cached_steps and s.sampler_noise_step is None
    engine = cachedit.get_manager().entry(model).engine
    assert not engine.decider.check_noise
    cachedit.disable_cache(model)
