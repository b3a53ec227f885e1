"""Cache placement (cache_device) and presets (per-family run rules), on the CPU.

The copy path of placement only runs when the cache lives off the model's device; with no GPU
here, a fake device map (the placement told the model is elsewhere) drives it on CPU tensors.
"""

from __future__ import annotations

import logging
from typing import Optional

import pytest
import torch

import cachedit
from cachedit.config import ADAPTIVE_DEFAULTS, QUALITY_PRESETS, resolve_options
from cachedit.config.options import GlobalConfig
from cachedit.config.options import FIRST_STREAK_MAX, LONG_RUN_STEPS
from cachedit.config.presets import (LONG_RUN_BUDGETS, LONGER_RUN_MAX_IN_A_ROW, LONGER_RUN_STEPS, SHORT_LONG_RUN_STEPS,
                                     RunInfo, apply_settings, detect_family, family_of, plan_run)
from cachedit.manager import placement as placement_mod
from cachedit.manager.placement import CachePlacement, bytes_by_device
from tests.tiny_dits import DIM, TwoListDiT


def _sample(model, steps: int = 12, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, DIM, generator=g)
    e = torch.randn(batch, 4, DIM, generator=g)
    outs = []
    with torch.no_grad():
        for i in range(steps):
            t = torch.full((batch,), 1000.0 * (1 - i / steps))
            v = model(x, e, t)
            x = x - v / steps
            outs.append(x.clone())
    return outs


def _opts(**kw):
    return resolve_options(None, None, strategy=None, skip_interval=None, warmup_steps=kw.pop("warmup_steps", None),
                           noise_scale=None, debug=None, global_config=GlobalConfig(), legacy=kw.pop("legacy", {}), **kw)


# -- cache_device -----------------------------------------------------------------------------------

def test_cache_device_invalid_value_names_parameter_and_allowed():
    with pytest.raises(ValueError, match=r"cache_device='gpu'.*'auto' \| 'model' \| 'cpu'"):
        cachedit.enable_cache(TwoListDiT(), cache_device="gpu")
    with pytest.raises(ValueError, match="cache_device"):
        cachedit.CacheOptions(cache_device=3)


def test_device_for_follows_mode_and_auto_device():
    p = CachePlacement("model")
    assert p.device_for(torch.device("cpu")) == torch.device("cpu") and not p.offloaded(torch.device("cpu"))
    assert CachePlacement("cpu").device_for(torch.device("cuda:1")) == torch.device("cpu")
    assert CachePlacement("cpu").offloaded(torch.device("cuda:1"))
    auto = CachePlacement("auto")
    assert auto.device_for(torch.device("cuda:0")) == torch.device("cuda:0")  # the model's device by default
    auto.auto_device = torch.device("cpu")  # an adapter saw low VRAM
    assert auto.device_for(torch.device("cuda:0")) == torch.device("cpu") and auto.offloaded(torch.device("cuda:0"))
    assert placement_mod.same_device(torch.device("cpu"), torch.device("cpu"))


@pytest.mark.parametrize("taylorseer", [True, False])
def test_cpu_cache_is_bit_identical_to_model_placement(monkeypatch, taylorseer):
    """Fake device map: the placement believes the model is elsewhere, so every residual is staged
    to the model's device after each decision and put back after the call, as on a GPU."""
    kwargs = {} if taylorseer else {"enable_taylorseer": False, "quality": "balanced", "Fn_compute_blocks": 1,
                                    "residual_diff_threshold": 0.24, "max_warmup_steps": 3}
    reference = TwoListDiT()
    cachedit.enable_cache(reference, cache_device="model", **kwargs)
    expected = _sample(reference)
    stats_ref = cachedit.summary(reference, logging=False)[0]

    monkeypatch.setattr(CachePlacement, "offloaded", lambda self, device: self.mode == "cpu")
    model = TwoListDiT()
    cachedit.enable_cache(model, cache_device="cpu", **kwargs)
    engine = cachedit.get_manager().entry(model).engine
    got = _sample(model)
    for a, b in zip(expected, got):
        assert torch.equal(a, b)
    stats = cachedit.summary(model, logging=False)[0]
    assert stats.cached_steps == stats_ref.cached_steps and stats.cached_steps
    assert engine.placement.copies > 0
    assert set(stats.cache_bytes_by_device) == {"cpu"} and sum(stats.cache_bytes_by_device.values()) > 0
    per_model = [m for m in cachedit.get_global_stats()["models"].values() if m["name"] == "TwoListDiT"]
    assert all("cache_bytes_by_device" in m for m in per_model)


def test_unstage_after_reuse_puts_host_tensors_back(monkeypatch):
    monkeypatch.setattr(CachePlacement, "offloaded", lambda self, device: True)
    model = TwoListDiT()
    cachedit.enable_cache(model, cache_device="cpu")
    engine = cachedit.get_manager().entry(model).engine
    hosts = {}

    def spy_stage(self, branch, device, copy=True, _orig=CachePlacement.stage):
        _orig(self, branch, device, copy)
        hosts.update({slot: t for slot, t in (branch.staged or [])})

    monkeypatch.setattr(CachePlacement, "stage", spy_stage)
    _sample(model, steps=10)
    assert hosts and engine.placement.copies >= len(hosts)


def test_bytes_by_device_counts_aliases_once():
    a = torch.zeros(4, 4)
    assert bytes_by_device([a, a, None, torch.zeros(2)]) == {"cpu": 64 + 8}


# -- presets ------------------------------------------------------------------------------------------

def test_preset_maps_to_budget_and_rules_only_with_defaults():
    for name, budget in QUALITY_PRESETS.items():
        o = _opts(quality=name)
        assert o.error_budget == budget and o.preset == name
    assert _opts().preset == "balanced"
    assert _opts(quality="fast", warmup_steps=5).preset is None  # the user set the warmup: rules stay out
    assert _opts(error_budget=0.1).preset is None
    with pytest.raises(ValueError, match=r"preset='turbo'.*'quality' \| 'balanced' \| 'fast'"):
        plan_run("turbo", "flux", RunInfo())


def _dm(name: str):
    return type(name, (torch.nn.Module,), {})()


def test_family_detection_by_class():
    assert detect_family(_dm("Flux")) == "flux" and detect_family(_dm("FluxTransformer2DModel")) == "flux"
    assert detect_family(_dm("WanModel")) == "wan" and detect_family(_dm("WanTransformer3DModel")) == "wan"
    assert detect_family(_dm("UNetModel")) == "unet" and detect_family(_dm("UNet2DConditionModel")) == "unet"
    assert detect_family(_dm("SomethingNew")) == "dit" and family_of(_dm("SomethingNew"), step_level=True) == "unet"
    sub = type("MyFlux", (type(_dm("Flux")),), {})()
    assert detect_family(sub) == "flux"


@pytest.mark.parametrize("preset,steps,warmup,max_cached", [
    ("balanced", 4, 2, 1), ("balanced", 8, 4, 2), ("quality", 8, 5, 1), ("fast", 8, 3, 3), ("fast", 4, 2, 1)])
def test_few_step_runs_get_a_warmup_share(preset, steps, warmup, max_cached):
    s = plan_run(preset, "flux", RunInfo(total_steps=steps))
    assert s.rule == "few-step" and s.budget == QUALITY_PRESETS[preset]
    assert s.config == {"max_warmup_steps": warmup, "max_continuous_cached_steps": 1, "max_cached_steps": max_cached}


def test_wan_experts_unets_and_standard():
    assert plan_run("balanced", "wan", RunInfo(20, 0.0, 0.5)).rule == "high-noise expert"
    assert plan_run("balanced", "wan", RunInfo(20, 0.0, 0.5)).config == {"max_warmup_steps": 4, "max_cached_steps": 8}
    assert plan_run("balanced", "wan", RunInfo(20, 0.5, 1.0)).config == {"max_warmup_steps": 2}
    assert plan_run("balanced", "wan", RunInfo(20, 0.0, 1.0)).rule == "standard"  # Wan 2.1 / 2.2 5B: one model
    assert plan_run("balanced", "wan", RunInfo(30), expert="low").rule == "low-noise expert"
    assert plan_run("balanced", "flux", RunInfo(20, 0.5, 1.0)).rule == "standard"  # only Wan has experts
    unet = plan_run("quality", "unet", RunInfo(30), step_level=True)
    assert unet.rule == "step level" and unet.window == (0.15, 0.95) and unet.budget == 0.08
    assert "few-step" in plan_run("fast", "flux", RunInfo(4)).label()


def test_long_runs_predict_with_order_two_at_their_budget():
    """A run of LONG_RUN_STEPS or more steps (the whole denoising's, for a split run) gets TaylorSeer
    order 2 and the long-run budget (below SHORT_LONG_RUN_STEPS the preset's own where that is lower),
    only when it runs the default's own TaylorSeer; shorter runs,
    runs of unknown length and Wan's experts keep the standard budget and the order they have."""
    long = plan_run("balanced", "flux", RunInfo(SHORT_LONG_RUN_STEPS), default_taylorseer=True)
    assert (long.rule, long.budget, long.taylorseer_order) == ("long run", LONG_RUN_BUDGETS["balanced"], 2)
    assert long.label() == "balanced, long run: budget 0.2, warmup 2, first streak 3, TaylorSeer 2"
    # below SHORT_LONG_RUN_STEPS (ComfyUI's default 20 steps): order 2 at the lower of the two budgets
    for steps in (LONG_RUN_STEPS, SHORT_LONG_RUN_STEPS - 1):
        plans = {p: plan_run(p, "flux", RunInfo(steps), default_taylorseer=True) for p in QUALITY_PRESETS}
        assert {p: (s.budget, s.taylorseer_order) for p, s in plans.items()} == \
            {"quality": (0.08, 2), "balanced": (0.15, 2), "fast": (0.2, 2)}
    # the whole denoising's steps count: 12 steps over its second half stand for 24
    assert plan_run("balanced", "dit", RunInfo(12, 0.5, 1.0), default_taylorseer=True).budget == 0.2
    assert plan_run("balanced", "dit", RunInfo(11, 0.5, 1.0), default_taylorseer=True).budget == 0.15
    for run, default_taylorseer in ((RunInfo(LONG_RUN_STEPS - 1), True), (RunInfo(), True), (RunInfo(50), False)):
        short = plan_run("balanced", "flux", run, default_taylorseer=default_taylorseer)
        assert short.rule == "standard" and short.taylorseer_order is None and short.budget == QUALITY_PRESETS["balanced"]
    assert plan_run("quality", "qwen-image", RunInfo(10, 0.5, 1.0), default_taylorseer=True).rule == "long run"  # 20 in all
    assert plan_run("balanced", "wan", RunInfo(25, 0.0, 0.5), default_taylorseer=True).rule == "high-noise expert"
    assert {p: plan_run(p, "dit", RunInfo(50), default_taylorseer=True).budget for p in QUALITY_PRESETS} == LONG_RUN_BUDGETS
    # from LONGER_RUN_STEPS of its own steps on, up to LONGER_RUN_MAX_IN_A_ROW reused steps in a row
    longer = plan_run("balanced", "flux", RunInfo(LONGER_RUN_STEPS), default_taylorseer=True)
    assert longer.label() == "balanced, long run: budget 0.2, warmup 2, max in a row 5, TaylorSeer 2"
    # its own steps count: 25 steps over the second half of the denoising (img2img at denoise 0.5)
    # stand for 50 but keep the default's 4 in a row
    assert "max_continuous_cached_steps" not in plan_run("fast", "dit", RunInfo(25, 0.5, 1.0),
                                                         default_taylorseer=True).config
    assert plan_run("fast", "dit", RunInfo(50, 0.5, 1.0), default_taylorseer=True).config[
        "max_continuous_cached_steps"] == LONGER_RUN_MAX_IN_A_ROW
    assert "max_continuous_cached_steps" not in plan_run("balanced", "flux", RunInfo(LONGER_RUN_STEPS - 1),
                                                         default_taylorseer=True).config
    capped = apply_settings(_opts(), longer)
    assert capped.cache_config.max_continuous_cached_steps == 5 and _opts().cache_config.max_continuous_cached_steps == 4

    base = _opts(quality="fast")
    assert base.default_taylorseer and base.taylorseer_order == 1 and base.max_taylorseer_order == 2
    run = apply_settings(base, plan_run("fast", "flux", RunInfo(28), default_taylorseer=base.default_taylorseer))
    assert (run.taylorseer_order, run.error_budget, base.taylorseer_order) == (2, 0.22, 1)  # the base is not changed
    chosen = _opts(legacy={"taylorseer_order": 1})  # an order the user chose stays
    assert chosen.preset == "balanced" and not chosen.default_taylorseer and chosen.max_taylorseer_order == 1
    assert not _opts(legacy={"enable_taylorseer": False}).default_taylorseer


@pytest.mark.parametrize("steps, order, budget, in_a_row", [(24, 2, LONG_RUN_BUDGETS["balanced"], 4),
                                                             (16, 1, QUALITY_PRESETS["balanced"], 4),
                                                             (50, 2, LONG_RUN_BUDGETS["balanced"], 5)])
def test_run_rule_runs_exactly_its_explicit_config(steps, order, budget, in_a_row):
    """What a run rule picks is what runs: the default's images of a long run are bit-identical to
    the explicit config of that rule (TaylorSeer order 2 at the long-run budget; 5 in a row from
    50 steps), and of a shorter run to order 1 at the preset's budget (the block cache takes the
    run's order, not the order the model was enabled with). The first-streak cap, which no cache-dit
    config says, is set on the explicit run's options."""
    from cachedit.bundled import digits as D

    model = D.load_model("flux")
    explicit = dict(cache_config=cachedit.DBCacheConfig(**dict(ADAPTIVE_DEFAULTS, max_continuous_cached_steps=in_a_row)),
                    calibrator_config=cachedit.TaylorSeerCalibratorConfig(taylorseer_order=order), error_budget=budget)
    images = []
    for kwargs in ({}, explicit):
        cachedit.enable_cache(model, **kwargs)
        engine = cachedit.get_manager().entry(model.transformer).engine
        if kwargs:
            assert engine.base_options.preset is None and engine.base_options.first_streak_max is None
            engine.base_options.first_streak_max = FIRST_STREAK_MAX if in_a_row == 4 else None
        images.append(D.generate(model, [3, 7], num_steps=steps, cfg_mode="none", seed=1))
        stats = cachedit.summary(model.transformer, logging=False)[0]
        assert stats.cached_steps  # steps were reused: the order mattered
        cachedit.disable_cache(model)
    assert torch.equal(images[0], images[1])


def test_first_streak_rule_only_where_the_default_reuses_four_in_a_row():
    """Standard and long runs of up to 49 steps reuse at most FIRST_STREAK_MAX steps in their first
    streak; 50-step runs (5 in a row), few-step runs, Wan's experts and UNets keep their own caps;
    an explicit config has no rule at all."""
    assert FIRST_STREAK_MAX == 3
    for run, kw in ((RunInfo(28), dict(default_taylorseer=True)), (RunInfo(16), {}), (RunInfo(), {}),
                    (RunInfo(LONGER_RUN_STEPS - 1), dict(default_taylorseer=True))):
        assert plan_run("balanced", "flux", run, **kw).first_streak_max == 3
    for settings in (plan_run("balanced", "flux", RunInfo(LONGER_RUN_STEPS), default_taylorseer=True),
                     plan_run("fast", "flux", RunInfo(8)), plan_run("balanced", "wan", RunInfo(30), expert="low"),
                     plan_run("balanced", "wan", RunInfo(30), expert="high"),
                     plan_run("quality", "unet", RunInfo(30), step_level=True)):
        assert settings.first_streak_max is None, settings.rule
    base = _opts()
    assert base.first_streak_max is None
    assert apply_settings(base, plan_run("balanced", "flux", RunInfo(28))).first_streak_max == 3
    assert base.first_streak_max is None  # the enabled options are not changed by a run
    with pytest.raises(ValueError, match=r"first_streak_max=-1.*integer in \[0, 1000\]"):
        cachedit.CacheOptions(first_streak_max=-1)


def _reused(first: Optional[int], steps: int = 28, in_a_row: int = 4, changed=()):
    """Reused steps of an adaptive run at the default's config with error feedback (nothing measured
    yet) and `first` as the first-streak cap, whose probe never changes except at the `changed` steps
    (a change above every threshold: those steps compute)."""
    from cachedit.manager.feedback import ErrorFeedback
    from cachedit.manager.state import BranchState
    from cachedit.manager.strategies import make_strategy

    options = _opts()
    options.cache_config.max_continuous_cached_steps = in_a_row
    options.first_streak_max = first
    strategy = make_strategy(options, ErrorFeedback(budget=0.15, initial_threshold=0.24))
    branch = BranchState(0)
    reused = []
    for step in range(steps):
        branch.begin_step(step)
        diff = 0.9 if step in changed else 1e-4
        decision = strategy.decide(branch, step, step / steps, lambda: diff, final=step == steps - 1)
        if decision.reuse:
            branch.record_cached(step)
            reused.append(step)
        else:
            branch.last_computed_step = step
    return reused


def test_first_streak_cap_shortens_only_the_runs_first_streak():
    """With the cap, the run's first streak stops at 3 and every later one runs to the config's 4;
    without it, every streak runs to 4. The first streak is the first reuses, wherever they start."""
    # warmup 2: steps 0, 1 compute; then 4 reused / 1 computed ...
    assert _reused(None)[:8] == [2, 3, 4, 5, 7, 8, 9, 10]
    assert _reused(3)[:11] == [2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14]
    # a step that computes before any reuse does not end the first streak: it has not begun
    assert _reused(3, changed=(2, 3))[:8] == [4, 5, 6, 8, 9, 10, 11, 13]
    assert _reused(3, in_a_row=2)[:6] == [2, 3, 5, 6, 8, 9]  # a lower config cap still applies


def test_pipeline_steps_pick_the_few_step_rule():
    """A diffusers-style pipeline says its step count (`num_timesteps`) when its run starts, so the
    few-step rule applies without num_inference_steps; a transformer enabled alone does not say it,
    and an explicit config turns the preset rules off."""
    from cachedit.bundled import digits as D

    model = D.load_model("flux")
    seen = []
    for target, steps in ((model, 8), (model, 28), (model.transformer, 8), (model.transformer, 28)):
        cachedit.enable_cache(target)
        D.generate(model, [1], num_steps=steps, cfg_mode="none", seed=0)
        engine = cachedit.get_manager().entry(model.transformer).engine
        seen.append((engine.run_settings.rule, engine.options.cache_config.max_warmup_steps,
                     engine.options.taylorseer_order, engine.feedback.budget))
        cachedit.disable_cache(target)
    warmup, budget = ADAPTIVE_DEFAULTS["max_warmup_steps"], QUALITY_PRESETS["balanced"]
    assert seen == [("few-step", 4, 1, budget), ("long run", warmup, 2, LONG_RUN_BUDGETS["balanced"]),
                    ("standard", warmup, 1, budget), ("standard", warmup, 1, budget)]
    cachedit.enable_cache(model, quality="balanced", cache_config=cachedit.DBCacheConfig(max_warmup_steps=1))
    D.generate(model, [1], num_steps=8, cfg_mode="none", seed=0)
    engine = cachedit.get_manager().entry(model.transformer).engine
    assert engine.run_settings is None and engine.options.cache_config.max_warmup_steps == 1
    cachedit.disable_cache(model)


def test_few_step_run_in_library_and_log_line(caplog):
    model = TwoListDiT()
    cachedit.enable_cache(model, quality="balanced", name="schnell")
    engine = cachedit.get_manager().entry(model).engine
    engine.options.log_runs = True
    cachedit.get_manager().logs.set_model(engine.key, debug=False, log_runs=True)
    engine.expect_run(RunInfo(total_steps=8))
    with caplog.at_level(logging.INFO, logger="cachedit"):
        _sample(model, steps=8)
        engine.finish_run()
    assert engine.options.cache_config.max_warmup_steps == 4 and engine.base_options.cache_config.max_warmup_steps == ADAPTIVE_DEFAULTS["max_warmup_steps"]
    lines = [r.getMessage() for r in caplog.records if "cachedit.run" in r.getMessage()]
    assert lines and "family='flux'" not in lines[0]  # TwoListDiT is no known class
    assert "family='dit'" in lines[0] and "few-step: budget 0.15, warmup 4, max in a row 1, max reused 2" in lines[0]
    record = cachedit.get_manager().stats.last_record(engine.key)
    assert not any(s.reused for s in record.steps if s.step < 4)


def test_wan_pipeline_experts_tagged():
    class Pipe:
        pass

    WanT = type("WanTransformer3DModel", (TwoListDiT,), {})
    pipe = Pipe()
    pipe.transformer, pipe.transformer_2 = WanT(), WanT(seed=1)
    cachedit.enable_cache(pipe)
    high = cachedit.get_manager().entry(pipe.transformer).engine
    low = cachedit.get_manager().entry(pipe.transformer_2).engine
    assert (high.family, high.expert, low.expert) == ("wan", "high", "low")
