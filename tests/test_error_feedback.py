"""Error feedback: the measured reuse error, the threshold it leads to, presets, and what stays
as in cache-dit. Exact outcomes on the tiny random Flux (mechanics) and the bundled model."""

from __future__ import annotations

import math

import pytest
import torch

import cachedit
from cachedit.config import ADAPTIVE_DEFAULTS, QUALITY_PRESETS
from cachedit.events import bus
from cachedit.manager import sampler_kind
from cachedit.manager.feedback import ErrorFeedback, bucket_of
from conftest import make_tiny_flux, sample


def test_ratio_per_gap_and_progress_bucket():
    fb = ErrorFeedback(budget=0.1, initial_threshold=0.24)
    assert fb.ratio(1, 0.5) is None and fb.threshold(3, 0.5) == 0.24  # nothing measured: the configured threshold
    fb.observe(gap=2, progress=0.5, error=0.05, diff=0.1)  # ratio 0.5 at gap 2 in bucket 2
    assert bucket_of(0.5) == 2 and fb.ratio(2, 0.6) == pytest.approx(0.5)
    assert fb.threshold_at(2, 0.6) == pytest.approx(0.2)  # span unknown: the budget as given
    assert fb.ratio(8, 0.6) == pytest.approx(0.5 * math.sqrt(8 / 2))  # longer gap: scaled up from the nearest shorter one
    assert fb.ratio(1, 0.6) == pytest.approx(0.5)  # only longer gaps measured: the shortest of them
    fb.observe(gap=2, progress=0.55, error=0.2, diff=0.1)  # log-space smoothing, half weight
    assert fb.ratio(2, 0.5) == pytest.approx(math.exp(0.5 * math.log(0.5) + 0.5 * math.log(2.0)))
    assert fb.ratio(2, 0.95) == pytest.approx(fb.ratio(2, 0.5))  # nearest bucket with data
    fb.observe(gap=2, progress=0.9, error=0.01, diff=0.1)
    assert fb.ratio(2, 0.95) == pytest.approx(0.1) and fb.observations == 3
    for bad in (dict(gap=0, error=0.1, diff=0.1), dict(gap=1, error=0.1, diff=None), dict(gap=1, error=float("nan"), diff=0.1),
                dict(gap=1, error=0.0, diff=0.1)):
        fb.observe(progress=0.1, **bad)
    assert fb.observations == 3 and bucket_of(0.1) not in {b for _, b in fb.log_ratios}


def test_provisional_ratios_stand_in_until_a_real_one():
    fb = ErrorFeedback(budget=0.1, initial_threshold=0.24)
    fb.observe(gap=1, progress=0.0, error=0.3, diff=0.1, provisional=True)
    assert fb.ratio(1, 0.1) == pytest.approx(3.0) and fb.threshold_at(1, 0.1) == pytest.approx(0.1 / 3.0)
    fb.observe(gap=4, progress=0.15, error=0.2, diff=0.1)  # the first real pair replaces it
    assert fb.ratio(1, 0.1) == pytest.approx(2.0) and fb.log_ratios == {(4, 0): pytest.approx(math.log(2.0))}
    fb.observe(gap=1, progress=0.0, error=0.9, diff=0.1, provisional=True)  # never mixes with real ones
    assert fb.ratio(1, 0.1) == pytest.approx(2.0) and list(fb.log_ratios) == [(4, 0)]


def test_each_taylorseer_order_keeps_its_own_ratios():
    """Runs predicted with another order (a preset's long runs use order 2) neither read nor move
    the ratios measured with the first; switching back finds them again."""
    fb = ErrorFeedback(budget=0.1, initial_threshold=0.24)
    fb.use_predictor(1)
    fb.observe(gap=1, progress=0.5, error=0.05, diff=0.1)
    fb.use_predictor(2)
    assert fb.ratio(1, 0.5) is None and fb.threshold_at(1, 0.5) == 0.24
    fb.observe(gap=1, progress=0.5, error=0.01, diff=0.1)
    fb.use_predictor(2)  # the same order again: nothing changes
    assert fb.ratio(1, 0.5) == pytest.approx(0.1)
    fb.use_predictor(1)
    assert fb.ratio(1, 0.5) == pytest.approx(0.5)


def test_budget_scales_with_the_step_span():
    """The budget is stated for 28-step spans: a quarter of the span (112 steps) doubles it, four
    times the span (7 steps) halves it, within [0.5, 2]; the span is the progress between the last
    two steps decided (branches of one step share it; a progress going back is a new run: unknown)."""
    fb = ErrorFeedback(budget=0.1, initial_threshold=0.24)
    assert fb.threshold(1, 0.0) == 0.24  # nothing measured yet
    fb.observe(gap=1, progress=0.5, error=0.05, diff=0.1)  # ratio 0.5: threshold 0.2 at the reference span
    assert fb.threshold(1, 0.5) == pytest.approx(0.2 * 0.5) and fb.span == pytest.approx(0.5)  # bounded
    fb.threshold(1, 0.0)  # a new run
    assert fb.span is None and fb.threshold(1, 0.0) == pytest.approx(0.2)
    assert fb.threshold(1, 1 / 28) == pytest.approx(0.2)  # one 28-step span
    assert fb.threshold(1, 1 / 28) == pytest.approx(0.2)  # the other branch of the same step
    assert fb.threshold(1, 1 / 28 + 1 / 7) == pytest.approx(0.1)  # 7-step spans: half the budget
    assert fb.threshold(1, 1 / 28 + 1 / 7 + 1 / 112) == pytest.approx(0.4)  # 112-step spans: twice
    assert fb.threshold(1, 1 / 28 + 1 / 7 + 1 / 112 + 1 / 14) == pytest.approx(0.2 / math.sqrt(2))  # 14 steps
    assert fb.threshold(1, 0.9) == pytest.approx(0.2 * 0.5)  # bounded
    assert fb.threshold_at(1, 0.5, span=1e-4) == pytest.approx(0.2 * 2.0) and fb.threshold_at(1, 0.5) == pytest.approx(0.2)


def test_presets_and_what_turns_feedback_on(tiny_flux):
    def budget(**kw):
        cachedit.enable_cache(tiny_flux, **kw)
        return cachedit.get_manager().entry(tiny_flux).engine.options.error_budget

    assert budget() == QUALITY_PRESETS["balanced"] == 0.15
    assert [budget(quality=q) for q in ("quality", "high", "balanced", "fast")] == [0.08, 0.08, 0.15, 0.2]
    assert budget(error_budget=0.05) == 0.05
    # cache-dit drop-in: a config or legacy keyword keeps the threshold fixed, unless asked otherwise
    assert budget(residual_diff_threshold=0.2) is None
    assert budget(cache_config=cachedit.DBCacheConfig(**ADAPTIVE_DEFAULTS)) is None
    assert budget(residual_diff_threshold=0.2, quality="fast") == 0.2
    assert budget(strategy="fixed") is None and budget(strategy="dynamic") is None


def test_taylorseer_kwargs_alone_shape_the_default(tiny_flux):
    """The default keeps error feedback and its TaylorSeer (order 1) unless a TaylorSeer keyword says
    otherwise; these keywords alone do not turn the default into cache-dit's fixed threshold."""
    def opts(**kw):
        cachedit.enable_cache(tiny_flux, **kw)
        o = cachedit.get_manager().entry(tiny_flux).engine.options
        return o.taylorseer_order, o.error_budget

    assert opts() == (1, 0.15)
    assert opts(enable_taylorseer=False) == (0, 0.15)
    assert opts(taylorseer_order=0) == (0, 0.15)
    assert opts(taylorseer_order=2) == (2, 0.15)
    assert opts(enable_taylorseer=True, taylorseer_order=2) == (2, 0.15)
    assert opts(enable_taylorseer=False, quality="fast") == (0, 0.2)
    sample(tiny_flux, steps=6)  # runs without a calibrator
    assert "_T0O0" in cachedit.strify(tiny_flux)


@pytest.mark.parametrize("kwargs, message", [
    (dict(quality="best"), "quality='best' is invalid; allowed: 'quality' | 'balanced' | 'fast'"),
    (dict(quality=2), "quality=2 is invalid"),
    (dict(quality="fast", error_budget=0.1), "error_budget=0.1 is invalid; allowed: None when quality is given"),
    (dict(strategy="fixed", quality="fast"), "quality='fast' is invalid; allowed: only with strategy='adaptive'"),
    (dict(strategy="dynamic", error_budget=0.1), "error_budget=0.1 is invalid; allowed: only with strategy='adaptive'"),
    (dict(error_budget=0.0), "error_budget=0.0 is invalid; allowed: a number in [1e-06, 1.0]"),
    (dict(error_budget=float("nan")), "error_budget=nan is invalid"),
    (dict(error_budget=True), "error_budget=True is invalid"),
])
def test_bad_quality_and_budget_name_the_parameter(tiny_flux, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("|", r"\|")):
        cachedit.enable_cache(tiny_flux, **kwargs)


def test_errors_are_measured_and_fed_back_with_the_decision_sync(tiny_flux):
    """Every computed step after the first measures the error a reuse would have made there; it is
    read with the next decision's probe (one host copy per decision) and moves the threshold."""
    measured = []

    def on_error(key, **p):
        measured.append(p)

    bus.error_measured.connect(on_error, weak=False)
    reads = {"n": 0}
    original = torch.Tensor.tolist

    def counting(self):
        reads["n"] += 1
        return original(self)

    cachedit.enable_cache(tiny_flux)
    try:
        torch.Tensor.tolist = counting
        sample(tiny_flux, steps=10)
    finally:
        torch.Tensor.tolist = original
        bus.error_measured.disconnect(on_error)  # only this test's receiver: the stats aggregator stays
    s = cachedit.summary(tiny_flux, logging=False)[0]
    computed = [i for i in range(10) if i not in s.cached_steps]
    assert reads["n"] == 9  # one per decision with a previous probe (steps 1..9), errors included
    assert [m["step"] for m in measured] == [c for c in computed[1:] if c != 9]  # the last is read at run end
    assert all(m["error"] > 0 and m["budget"] == 0.15 and m["gap"] >= 1 for m in measured)
    assert [int(k) for k in s.reuse_errors] == [m["step"] for m in measured] and s.error_budget == 0.15
    # the threshold compared with after the first measurement is budget / (error / diff), not 0.24
    first = measured[0]
    later = [int(k) for k in s.thresholds if int(k) > first["step"]]
    assert later and s.thresholds[str(later[0])] != ADAPTIVE_DEFAULTS["residual_diff_threshold"]
    assert s.thresholds["1"] == ADAPTIVE_DEFAULTS["residual_diff_threshold"]


@pytest.mark.parametrize("taylorseer", [True, False])
def test_one_point_forecast_errors_are_provisional(tiny_flux, taylorseer):
    """With TaylorSeer, the errors at the run's second and third computed steps (forecasts from one
    point: the last residual; the first value never enters a slope) calibrate only until a real one
    is measured and never mix with real ones; without TaylorSeer they are what reuses cost, and count."""
    measured = []

    def on_error(key, **p):
        measured.append(p)

    bus.error_measured.connect(on_error, weak=False)
    try:
        cachedit.enable_cache(tiny_flux, enable_taylorseer=taylorseer)
        sample(tiny_flux, steps=16)
    finally:
        bus.error_measured.disconnect(on_error)
    fb = cachedit.get_manager().entry(tiny_flux).engine.feedback
    one_point = 2 if taylorseer else 0
    first, rest = measured[:one_point], measured[one_point:]
    assert measured[0]["step"] == 1 and measured[0]["gap"] == 1 and len(rest) >= 1

    def table(events):
        out = {}
        for m in events:
            key, sample_ = (m["gap"], bucket_of(m["step"] / 16)), math.log(m["error"] / m["diff"])
            out[key] = sample_ if key not in out else out[key] + fb.smoothing * (sample_ - out[key])
        return out

    if taylorseer:
        assert fb.provisional == pytest.approx(table(first)) and fb.log_ratios == pytest.approx(table(rest))
    else:
        assert fb.provisional == {} and fb.log_ratios == pytest.approx(table(measured))


def test_calibration_carries_over_to_the_next_run(tiny_flux):
    cachedit.enable_cache(tiny_flux)
    sample(tiny_flux, steps=10)
    first = cachedit.summary(tiny_flux, logging=False)[0].thresholds
    sample(tiny_flux, steps=10)
    second = cachedit.summary(tiny_flux, logging=False)[0].thresholds
    assert first["1"] == ADAPTIVE_DEFAULTS["residual_diff_threshold"]
    assert second["1"] != first["1"]  # the second run starts calibrated


def test_final_step_always_computes_with_feedback():
    model = make_tiny_flux()
    # random weights change little per step: the calibrated threshold lets every step after warmup reuse
    cachedit.enable_cache(model, error_budget=1.0)
    sample(model, steps=10)
    # warmup 2, at most 4 in a row (step 6 computes), the final step 9 computes
    assert cachedit.summary(model, logging=False)[0].cached_steps == [2, 3, 4, 5, 7, 8]
    cachedit.refresh_context(model, num_inference_steps=10)  # known total: the same
    sample(model, steps=10)
    assert 9 not in cachedit.summary(model, logging=False)[0].cached_steps
    cachedit.disable_cache(model)


def test_final_step_computes_on_a_shifted_schedule_through_a_pipeline():
    """Enabled on a pipeline, the run's step count is the pipeline's (`num_timesteps`): the last step
    is known by count and computes. Guessed from the pace of the step before, it was missed on a
    shifted schedule, whose last step is its longest (shift 3, 12 steps: 0.21 of sigma after 0.16)."""
    from cachedit.bundled import digits as D

    model = D.load_model("flux")
    cachedit.enable_cache(model, error_budget=1.0)  # a budget that lets every other step reuse
    try:
        for seed in range(3):  # with the pace guess, seed 1 reused step 11
            D.generate(model, [3], num_steps=12, cfg_mode="none", sigma_shift=3.0, seed=seed)
            cached = cachedit.summary(model.transformer, logging=False)[0].cached_steps
            assert len(cached) >= 6 and 11 not in cached, (seed, cached)
    finally:
        cachedit.disable_cache(model)


def test_fixed_threshold_unchanged_by_feedback_code(tiny_flux):
    """An explicit threshold measures no error and behaves as before (cache-dit parity lives in
    test_cache_dit_parity.py): the last step may reuse, thresholds stay put."""
    cachedit.enable_cache(tiny_flux, cache_config=cachedit.DBCacheConfig(**ADAPTIVE_DEFAULTS))
    sample(tiny_flux, steps=10)
    s = cachedit.summary(tiny_flux, logging=False)[0]
    assert s.reuse_errors == {} and s.error_budget is None
    assert set(s.thresholds.values()) == {ADAPTIVE_DEFAULTS["residual_diff_threshold"]}


def test_feedback_reuses_where_a_fixed_threshold_reuses_nothing():
    """A model whose probe (the first block's output) changes more than 0.24 per step although reusing
    is harmless: the fixed threshold never reuses; error feedback measures the real error and does
    (bundled-size random Flux)."""
    from cachedit.bundled import digits as D

    torch.manual_seed(0)
    model = D.build_model(D.load_config(D.config_path("flux")))
    model.transformer.eval().requires_grad_(False)
    labels = list(range(4))
    ref = D.generate(model, labels, num_steps=16, seed=0)
    first_block = dict(ADAPTIVE_DEFAULTS, Fn_compute_blocks=1)
    calibrator = cachedit.TaylorSeerCalibratorConfig(taylorseer_order=1)
    cachedit.enable_cache(model.transformer, cache_config=cachedit.DBCacheConfig(**first_block),
                          calibrator_config=calibrator)
    D.generate(model, labels, num_steps=16, seed=0)
    assert cachedit.summary(model.transformer, logging=False)[0].cached_steps == []
    cachedit.enable_cache(model.transformer, cache_config=cachedit.DBCacheConfig(**first_block),
                          calibrator_config=calibrator, quality="balanced")
    out = D.generate(model, labels, num_steps=16, seed=0)
    reused = cachedit.summary(model.transformer, logging=False)[0].cached_steps
    assert len(reused) >= 8 and D.psnr(out, ref) > 45.0
    cachedit.disable_cache(model.transformer)


def test_measured_error_in_logs_and_report(tiny_flux, caplog):
    """Why a step was reused, in words: the debug line per measured error (with the probe change and
    the threshold it leads to), the run line and summary()'s log with median / max against the budget."""
    from cachedit.events.report import error_percentiles

    assert error_percentiles([], 0.15) == {} and error_percentiles([0.1, 0.3, 0.2], None) == {
        "error_p50": 0.2, "error_max": 0.3, "errors_measured": 3}
    assert error_percentiles([0.1, 0.3, 0.2, None], 0.15) == {"error_p50": 0.2, "error_max": 0.3, "errors_measured": 3,
                                                             "error_budget": 0.15, "errors_over_budget": 2}
    cachedit.enable_cache(tiny_flux, debug=True)
    with caplog.at_level("DEBUG", logger="cachedit"):
        sample(tiny_flux, steps=10)
        sample(tiny_flux, steps=10)  # its start finishes the first run (its run line, its last error)
        cachedit.summary(tiny_flux)
    s = cachedit.summary(tiny_flux, logging=False)[0]
    lines = [r.getMessage() for r in caplog.records]
    errors = [m for m in lines if "cachedit.error" in m]
    assert len(errors) > len(s.reuse_errors) > 0
    assert all("budget=0.15" in m and "diff=" in m and "next_threshold=" in m for m in errors), errors[0]
    run = next(m for m in lines if "event='cachedit.run' " in m)
    assert "error_p50=" in run and "error_max=" in run and "error_budget=0.15" in run, run
    feedback = next(m for m in lines if "CacheDit error feedback" in m)
    assert "budget=0.15" in feedback and "median=" in feedback and f"of {len(s.reuse_errors)} computed steps" in feedback
    # the threshold a reuse over the measured gap has after the last measurement: budget x span scale /
    # ratio (progress follows the timestep: 10 uniform steps from 1, step / 10)
    fb = cachedit.get_manager().entry(tiny_flux).engine.feedback
    last = errors[-1]
    step, gap = (int(last.split(f" {k}=")[1].split()[0]) for k in ("step", "gap"))
    expected = fb.threshold_at(gap, step / 10, fb.span)
    assert fb.span == pytest.approx(0.1) and fb.span_scale(fb.span) == pytest.approx(math.sqrt(10 / 28))
    assert float(last.split("next_threshold=")[1].split()[0]) == pytest.approx(expected, rel=1e-3)


def test_budget_scales_down_above_the_reference_guidance():
    """Guidance multiplies the branches' error difference: above CFG 3 the budget (and the threshold
    used before any measurement) scales with 3 / guidance; at or below 3, or unknown, it holds."""
    fb = ErrorFeedback(budget=0.2, initial_threshold=0.24)
    for g, scale in ((None, 1.0), (1.0, 1.0), (3.0, 1.0), (6.0, 0.5), (12.0, 0.25), (float("nan"), 1.0)):
        fb.guidance = g
        assert fb.guidance_scale() == pytest.approx(scale) and fb.run_budget() == pytest.approx(0.2 * scale)
        assert fb.threshold_at(1, 0.5) == pytest.approx(0.24 * scale)  # nothing measured yet
    fb.observe(gap=1, progress=0.5, error=0.05, diff=0.1)  # ratio 0.5
    fb.guidance = 6.0
    assert fb.threshold_at(1, 0.5) == pytest.approx(0.2 * 0.5 / 0.5)


def test_budget_scales_down_on_a_higher_order_sampler():
    """A multistep / higher-order sampler (ComfyUI name or diffusers scheduler class) gets 0.8 of the
    budget, before and after a measurement; Euler-type ones and an unknown sampler keep all of it."""
    fb = ErrorFeedback(budget=0.2, initial_threshold=0.24)
    for name, scale in ((None, 1.0), ("euler", 1.0), ("ddim", 1.0), ("FlowMatchEulerDiscreteScheduler", 1.0),
                        ("dpmpp_2m", 0.8), ("heun", 0.8), ("UniPCMultistepScheduler", 0.8), ("my_custom_sampler", 0.8),
                        ("uni_pc", 0.6), ("deis", 0.6), ("ipndm", 0.6)):
        fb.sampler = name
        assert fb.run_budget() == pytest.approx(0.2 * scale) and fb.threshold_at(1, 0.5) == pytest.approx(0.24 * scale)
        assert fb.reuse_end() is None  # no CFG known
    fb.guidance = 6.0  # the scales multiply
    assert fb.run_budget() == pytest.approx(0.2 * 0.5 * 0.6)


@pytest.mark.parametrize("sampler, guidance, end", [("uni_pc", 6.0, 0.15), ("deis", 3.5, 0.15), ("uni_pc", 3.0, None),
                                                    ("dpmpp_2m", 6.0, None), ("euler", 6.0, None), (None, 6.0, None)])
def test_high_order_samplers_under_guidance_stop_reusing_early(sampler, guidance, end):
    """A multistep sampler of order 3+ above CFG 3 reuses only in the first 15% of the noise level
    (sampler_kind.reuse_end): the adaptive strategy computes past it however small the change."""
    from cachedit.manager.state import BranchState
    from cachedit.manager.strategies import AdaptiveStrategy

    fb = ErrorFeedback(budget=0.2, initial_threshold=0.24, sampler=sampler, guidance=guidance)
    assert fb.reuse_end() == end
    options = cachedit.config.CacheOptions(cache_config=cachedit.DBCacheConfig(**ADAPTIVE_DEFAULTS)).validate()
    strategy = AdaptiveStrategy(options, feedback=fb)
    for progress, reused in ((0.1, True), (0.5, end is None)):
        branch = BranchState(index=0)
        branch.last_computed_step = 9
        decision = strategy.decide(branch, 10, progress, lambda: 1e-4, noise_progress=progress)
        assert decision.reuse == reused, (progress, decision)


def test_comfy_sampler_names():
    """ComfyUI's KSAMPLER is named as its sampler list says (`sample_unipc` is uni_pc, dpm_fast's
    local function dpm_fast); another Sampler object by its class."""

    def sample_dpmpp_2m():
        pass

    def sample_unipc():
        pass

    def dpm_fast_function():
        pass

    class KSAMPLER:
        def __init__(self, function):
            self.sampler_function = function

    class MySampler:
        pass

    assert [sampler_kind.comfy_sampler_name(s) for s in (KSAMPLER(sample_dpmpp_2m), KSAMPLER(sample_unipc),
                                                         KSAMPLER(dpm_fast_function), MySampler(), None)] == [
        "dpmpp_2m", "uni_pc", "dpm_fast", "MySampler", None]


class _Pipe:
    """What error feedback reads of a diffusers pipeline: `transformer`, and inside `__call__`
    `guidance_scale` with `do_classifier_free_guidance` (SD3, Wan...)."""

    def __init__(self, transformer, cfg: bool = True, scheduler=None):
        self.transformer, self._cfg, self._guidance_scale = transformer, cfg, None
        if scheduler is not None:
            self.scheduler = scheduler

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self):
        return self._cfg and self._guidance_scale > 1  # raises before the first call, as diffusers' does

    def __call__(self, guidance_scale: float, steps: int = 10):
        self._guidance_scale = guidance_scale
        return sample(self.transformer, steps=steps, cfg="batched")


@pytest.mark.parametrize("cfg, guidance, budget", [(True, 6.0, 0.075), (True, 2.0, 0.15), (False, 6.0, 0.15)])
def test_a_pipelines_cfg_scale_sets_the_runs_budget(tiny_flux, cfg, guidance, budget):
    """enable_cache(pipe): each run reads the pipeline's CFG scale (only when it says it does CFG:
    FLUX.1-dev's guidance_scale is embedded guidance); the measured errors are compared with the
    run's budget, in the stats too. Enabled on the transformer alone, the budget holds as given."""
    pipe = _Pipe(tiny_flux, cfg)
    cachedit.enable_cache(pipe)
    engine = cachedit.get_manager().entry(tiny_flux).engine
    pipe(guidance)
    s = cachedit.summary(pipe, logging=False)[0]
    assert engine.feedback.guidance == (guidance if cfg and guidance > 1 else None)
    assert s.reuse_errors and s.error_budget == pytest.approx(budget)
    cachedit.disable_cache(pipe)
    cachedit.enable_cache(tiny_flux)
    pipe(guidance)
    assert cachedit.summary(tiny_flux, logging=False)[0].error_budget == pytest.approx(0.15)


@pytest.mark.parametrize("scheduler, budget", [("UniPCMultistepScheduler", 0.12), ("FlowMatchEulerDiscreteScheduler", 0.15),
                                               (None, 0.15)])
def test_a_pipelines_scheduler_sets_the_runs_budget(tiny_flux, scheduler, budget):
    """enable_cache(pipe): each run reads the pipeline's scheduler class; a multistep one (UniPC: Wan's
    default in diffusers) gets 0.8 of the budget, an Euler one or none all of it."""
    kind = type(scheduler, (), {})() if scheduler is not None else None
    pipe = _Pipe(tiny_flux, cfg=False, scheduler=kind)
    cachedit.enable_cache(pipe)
    engine = cachedit.get_manager().entry(tiny_flux).engine
    pipe(1.0)
    assert engine.feedback.sampler == scheduler
    assert cachedit.summary(pipe, logging=False)[0].error_budget == pytest.approx(budget)
    cachedit.disable_cache(pipe)


@pytest.mark.parametrize("follow", [True, False])
def test_cfg_branches_follow_the_first_branchs_decision(follow):
    """With error feedback, separate CFG calls of a step share the first one's decision (a step where
    only one branch reuses has no error to cancel against under guidance); cache-dit's fixed configs
    keep deciding each branch on its own (`follow_lead` off: on the bundled model the branches then
    part ways at some steps). The probe is the first block's output here: the blocks' input (Fn 0,
    the default) is the same latent in both branches of this layout, so they could not part ways."""
    from cachedit.bundled import digits as D

    model = D.load_model("flux")
    cachedit.enable_cache(model, quality="quality", cache_config=cachedit.DBCacheConfig(**dict(ADAPTIVE_DEFAULTS, Fn_compute_blocks=1)))
    try:
        engine = cachedit.get_manager().entry(model.transformer).engine
        assert engine.decider.follow_lead
        engine.decider.follow_lead = follow
        same = []
        for k in range(3):
            D.generate(model, [k], num_steps=28, cfg_mode="separate", seed=k)
            s = cachedit.summary(model, logging=False)[0]
            assert len(s.cached_steps) >= 10
            same.append(s.cached_steps == s.cfg_cached_steps)
        assert all(same) is follow  # off: the branches part ways in at least one generation
        cachedit.enable_cache(model, residual_diff_threshold=0.2)
        assert not cachedit.get_manager().entry(model.transformer).engine.decider.follow_lead
    finally:
        cachedit.disable_cache(model)


def test_feedback_spans_follow_the_noise_level_when_the_steps_are_known():
    """A reused output moves the image by its step's sigma span, so error feedback's spans (and
    buckets) follow the noise level, 1 - t / t0, also when the run's step count is known (here
    `num_inference_steps`; in ComfyUI the sampler's sigmas), where the window and the run's steps
    count steps: a shifted schedule's short early steps get more budget, its long late ones less."""
    from cachedit.bundled import digits as D

    model = D.load_model("flux")
    steps, shift = 20, 3.0
    sigmas = D.sigmas_schedule(steps, shift).tolist()
    cachedit.enable_cache(model.transformer, quality="balanced",
                          cache_config=cachedit.DBCacheConfig(**dict(ADAPTIVE_DEFAULTS, num_inference_steps=steps)))
    engine = cachedit.get_manager().entry(model.transformer).engine
    spans, totals = [], []

    def after_step(i, sigma, latents):
        spans.append(engine.feedback.span)
        totals.append(engine.tracker.run.total_steps if engine.tracker.run is not None else steps)

    D.generate(model, [1, 7], num_steps=steps, cfg_mode="none", seed=0, sigma_shift=shift, callback=after_step)
    cachedit.disable_cache(model.transformer)
    assert set(totals) == {steps}  # the run knew its step count
    expected = [sigmas[i - 1] - sigmas[i] for i in range(2, steps)]  # step 1 is the first one with a probe
    assert spans[:2] == [None, None] and spans[2:] == pytest.approx(expected, rel=1e-4)
    assert max(expected) / min(expected) > 5  # not the step count's uniform 1 / 19


def test_the_branches_of_one_step_count_once_as_the_worst():
    """Separate CFG calls observe their errors one after the other; one step's pairs count once, as
    the largest ratio (a batched call's pair is already its worst image's). Pairs without a step,
    or of another step, are smoothed in as before."""
    fb = ErrorFeedback(budget=0.1, initial_threshold=0.24)
    fb.observe(gap=2, progress=0.5, error=0.05, diff=0.1, step=(0, 4))  # ratio 0.5
    fb.observe(gap=2, progress=0.5, error=0.2, diff=0.1, step=(0, 4))  # the other branch: 2.0 replaces it
    assert fb.ratio(2, 0.5) == pytest.approx(2.0) and fb.observations == 1
    fb.observe(gap=2, progress=0.5, error=0.01, diff=0.1, step=(0, 4))  # smaller: the worst is already in
    assert fb.ratio(2, 0.5) == pytest.approx(2.0)
    fb.observe(gap=2, progress=0.55, error=0.05, diff=0.1, step=(0, 6))  # the next step: smoothed with 2.0
    assert fb.ratio(2, 0.5) == pytest.approx(1.0) and fb.observations == 2
    fb.observe(gap=2, progress=0.55, error=0.4, diff=0.1, step=(0, 6))  # its worse branch: 2.0 smoothed with 4.0
    assert fb.ratio(2, 0.5) == pytest.approx(math.sqrt(8.0)) and fb.observations == 2
    fb.observe(gap=2, progress=0.55, error=0.05, diff=0.1, step=(1, 6))  # another run's step 6
    assert fb.ratio(2, 0.5) == pytest.approx(math.exp(0.5 * math.log(math.sqrt(8.0)) + 0.5 * math.log(0.5)))
    fb.observe(gap=2, progress=0.55, error=0.4, diff=0.1)  # no step: smoothed
    fb.observe(gap=2, progress=0.55, error=0.4, diff=0.1)
    assert fb.observations == 5


def test_uneven_branches_scale_the_budget():
    """A run whose CFG branches run inputs of different form gets UNEVEN_BRANCHES_SCALE of the
    budget (with the guidance's scale on top), and of the threshold used before a measurement."""
    from cachedit.manager.feedback import UNEVEN_BRANCHES_SCALE

    fb = ErrorFeedback(budget=0.2, initial_threshold=0.24)
    fb.uneven_branches = True
    assert fb.run_budget() == pytest.approx(0.2 * UNEVEN_BRANCHES_SCALE)
    assert fb.threshold_at(1, 0.5) == pytest.approx(0.24 * UNEVEN_BRANCHES_SCALE)
    fb.guidance = 6.0
    assert fb.run_budget() == pytest.approx(0.2 * UNEVEN_BRANCHES_SCALE * 0.5)
    fb.observe(gap=1, progress=0.5, error=0.05, diff=0.1)  # ratio 0.5
    assert fb.threshold_at(1, 0.5) == pytest.approx(0.2 * UNEVEN_BRANCHES_SCALE * 0.5 / 0.5)


def _kontext_separate_run(model, steps: int, ref_on_uncond: bool, seed: int = 0) -> None:
    """Euler, CFG 3 as two calls per step: the positive with the reference tokens appended, the
    negative with them (alike) or without (uneven: 64 image tokens against 128)."""
    from cachedit.bundled import archs as A
    from cachedit.bundled import digits as D
    from cachedit.bundled import kontext as K

    images, labels = D.digits_dataset()
    ref = A.pack_images(images[:1] * 2 - 1)
    x = A.initial_latents("flux", 1, seed)
    sigmas = D.sigmas_schedule(steps, 1.0)
    cond, uncond = model.condition(labels[:1]), model.condition(torch.tensor([D.NULL_LABEL]))
    t = model.transformer
    with torch.no_grad():
        for i in range(steps):
            s = float(sigmas[i])
            kw = K.transformer_kwargs(x, s, cond, ref)
            v_c = t(**kw)[0][:, :K.IMAGE_TOKENS]
            if ref_on_uncond:  # one latent + reference for both calls, as FluxKontextPipeline's true CFG passes it
                kw_u = dict(K.transformer_kwargs(x, s, uncond, ref), hidden_states=kw["hidden_states"])
                v_u = t(**kw_u)[0][:, :K.IMAGE_TOKENS]
            else:
                v_u = t(**A.transformer_kwargs("flux", x, s, uncond))[0]
            x = x + (float(sigmas[i + 1]) - s) * (v_u + 3.0 * (v_c - v_u))


def test_separate_branches_calibrate_against_the_leads_change_and_uneven_ones_cut_the_budget():
    """Separate CFG calls follow the first one's decision, so every branch's measured error is
    paired with the change that decision read (the lead's), and one step's pairs count once, as
    the worst. When the branches' hidden streams differ in form (a Kontext reference on the
    positive only: 128 tokens against 64), the run's budget is cut to UNEVEN_BRANCHES_SCALE of it;
    the next run with the reference on both branches has the budget back."""
    from cachedit.bundled import kontext as K
    from cachedit.manager.feedback import UNEVEN_BRANCHES_SCALE

    model = K.load_model()
    cachedit.enable_cache(model.transformer)
    engine = cachedit.get_manager().entry(model.transformer).engine
    observed, decided = [], {}
    original = engine.feedback.observe

    def observe(gap, progress, error, diff, provisional=False, step=None):
        observed.append((step, diff))
        return original(gap, progress, error, diff, provisional=provisional, step=step)

    def on_computed(key, **p):
        decided.setdefault(p["step"], p["diff"])  # the first branch to decide: the lead

    finished = []

    def on_finished(key, **p):
        finished.append(p["uneven_branches"])

    engine.feedback.observe = observe
    bus.step_computed.connect(on_computed, weak=False)
    bus.run_finished.connect(on_finished, weak=False)
    try:
        _kontext_separate_run(model, 28, ref_on_uncond=False)
        s = cachedit.summary(model.transformer, logging=False)[0]
        assert s.error_budget == pytest.approx(0.15 * UNEVEN_BRANCHES_SCALE)  # enabled alone: steps unknown
        assert s.cached_steps == s.cfg_cached_steps and len(s.cached_steps) >= 8
        steps = [st for st, _ in observed if st is not None]
        assert len(steps) >= 8 and all(steps.count(st) == 2 for st in set(steps))  # both branches, each step
        assert all(diff == pytest.approx(decided[st[1]]) for st, diff in observed)  # the lead's change
        _kontext_separate_run(model, 28, ref_on_uncond=True, seed=1)
        assert cachedit.summary(model.transformer, logging=False)[0].error_budget == pytest.approx(0.15)
        cachedit.refresh_context(model.transformer)  # ends the second run: its run_finished
        assert finished == [f"budget x{UNEVEN_BRANCHES_SCALE:g}", None]  # what the debug log's run line says
    finally:
        bus.run_finished.disconnect(on_finished)
        bus.step_computed.disconnect(on_computed)
        cachedit.disable_cache(model.transformer)


@pytest.mark.parametrize("cfg", ["none", "batched", "separate"])
def test_a_heun_loop_without_a_named_sampler_gets_the_higher_order_budget(cfg):
    """A transformer called from a loop of its own names no sampler. Heun's corrector evaluation and
    the next step's first one share a timestep on two different latents: from that step on, error
    feedback takes the higher-order share of the budget (sampler_kind.SECOND_EVALUATION), as a
    pipeline with FlowMatchHeunDiscreteScheduler gets it. Euler loops, with the CFG branches as
    separate calls on one latent or batched, keep the whole budget. The detection starts over
    with each run."""
    model = make_tiny_flux()
    cachedit.enable_cache(model)
    engine = cachedit.get_manager().entry(model).engine
    base = engine.options.error_budget
    sample(model, steps=12, cfg=cfg)
    assert engine.feedback.sampler is None and engine.run_budget() == pytest.approx(base)
    sample(model, steps=12, cfg=cfg, heun=True)
    assert engine.feedback.sampler == sampler_kind.SECOND_EVALUATION
    assert engine.run_budget() == pytest.approx(base * sampler_kind.HIGHER_ORDER_BUDGET_SCALE)
    assert engine._sampler_note() == f"{sampler_kind.SECOND_EVALUATION}: budget x0.8"  # the run log line's sampler=
    sample(model, steps=12, cfg=cfg)  # the next run is Euler again
    assert engine.feedback.sampler is None and engine.run_budget() == pytest.approx(base)
    cachedit.disable_cache(model)
