"""Core engine behaviour on a tiny random FLUX transformer: exact outcomes, no timing."""

from __future__ import annotations

import gc
import threading

import pytest
import torch

import cachedit
from cachedit import DBCacheConfig, TaylorSeerCalibratorConfig
from conftest import BlockCounter, make_tiny_flux, sample

NEVER = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=1e-9, max_warmup_steps=0)


def test_never_reuse_is_bit_identical_and_disable_restores(tiny_flux):
    ref = sample(tiny_flux, cfg="batched")
    cachedit.enable_cache(tiny_flux, **NEVER)
    assert torch.equal(sample(tiny_flux, cfg="batched"), ref)
    stats = cachedit.summary(tiny_flux, logging=False)[0]
    assert stats.cached_steps == [] and stats.cache_misses == 8 and len(stats.residual_diffs) == 7
    cachedit.disable_cache(tiny_flux)
    assert "forward" not in tiny_flux.__dict__
    assert all("forward" not in b.__dict__ for b in tiny_flux.single_transformer_blocks)
    assert torch.equal(sample(tiny_flux, cfg="batched"), ref)


def test_fixed_schedule_computes_exactly_the_expected_blocks(tiny_flux):
    counter = BlockCounter(tiny_flux)
    cachedit.enable_cache(tiny_flux, strategy="fixed", skip_interval=2, warmup_steps=2)
    sample(tiny_flux, steps=8)
    stats = cachedit.summary(tiny_flux, logging=False)[0]
    # warmup 0,1; then every 2nd step reuses: 3, 5, 7
    assert stats.cached_steps == [3, 5, 7]
    # 6 blocks, Fn=1: reused steps run only block 0
    assert counter.counts[0] == 8
    assert all(counter.counts[i] == 5 for i in range(1, 6))
    assert stats.blocks_computed == 5 * 6 + 3 * 1 and stats.blocks_skipped == 3 * 5
    counter.close()


@pytest.mark.parametrize("strategy", ["fixed", "adaptive"])
def test_fn0_reused_steps_run_no_block_at_all(tiny_flux, strategy):
    ref = sample(tiny_flux, steps=8)
    counter = BlockCounter(tiny_flux)
    cfg = DBCacheConfig(Fn_compute_blocks=0, Bn_compute_blocks=0, residual_diff_threshold=0.99, max_warmup_steps=2,
                        max_continuous_cached_steps=1)
    cachedit.enable_cache(tiny_flux, cfg, strategy=strategy, skip_interval=2, warmup_steps=2)
    out = sample(tiny_flux, steps=8)
    stats = cachedit.summary(tiny_flux, logging=False)[0]
    assert stats.cached_steps == ([3, 5, 7] if strategy == "fixed" else [2, 4, 6])
    assert all(counter.counts[i] == 5 for i in range(6))  # 8 steps - 3 reused, block 0 included
    assert stats.blocks_computed == 5 * 6 and stats.blocks_skipped == 3 * 6
    assert not torch.equal(out, ref) and torch.allclose(out, ref, atol=0.5)  # reused, and still close
    counter.close()


def test_fixed_with_bn_blocks_runs_the_tail(tiny_flux):
    counter = BlockCounter(tiny_flux)
    cachedit.enable_cache(tiny_flux, DBCacheConfig(Fn_compute_blocks=2, Bn_compute_blocks=1), strategy="fixed",
                          skip_interval=3, warmup_steps=1)
    sample(tiny_flux, steps=7)
    assert cachedit.summary(tiny_flux, logging=False)[0].cached_steps == [3, 6]
    assert [counter.counts[i] for i in range(6)] == [7, 7, 5, 5, 5, 7]


def test_dynamic_reuses_more_late_than_early(tiny_flux):
    cachedit.enable_cache(tiny_flux, strategy="dynamic", skip_interval=3, warmup_steps=1)
    sample(tiny_flux, steps=20)
    cached = cachedit.summary(tiny_flux, logging=False)[0].cached_steps
    early = sum(1 for s in cached if s < 10)
    late = sum(1 for s in cached if s >= 10)
    assert late > early >= 1
    # never more than skip_interval reused steps in a row
    runs, streak = [], 0
    for s in range(20):
        streak = streak + 1 if s in cached else 0
        runs.append(streak)
    assert max(runs) <= 3


def test_adaptive_reuses_below_threshold_and_honours_caps(tiny_flux):
    cachedit.enable_cache(tiny_flux, residual_diff_threshold=0.95, Fn_compute_blocks=1, max_warmup_steps=2,
                          max_continuous_cached_steps=2)
    sample(tiny_flux, steps=10)
    s = cachedit.summary(tiny_flux, logging=False)[0]
    assert s.cached_steps == [2, 3, 5, 6, 8, 9]
    assert all(v < 0.95 for k, v in s.residual_diffs.items() if int(k) in s.cached_steps)
    cachedit.refresh_context(tiny_flux, max_cached_steps=1)
    sample(tiny_flux, steps=10)
    assert cachedit.summary(tiny_flux, logging=False)[0].cached_steps == [2]


def test_steps_mask_static_policy(tiny_flux):
    mask = [1, 1, 0, 0, 1, 0, 1, 1]
    cachedit.enable_cache(tiny_flux, DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, steps_computation_mask=mask,
                                                   steps_computation_policy="static"))
    sample(tiny_flux, steps=8)
    assert cachedit.summary(tiny_flux, logging=False)[0].cached_steps == [2, 3, 5]


def test_taylorseer_changes_reused_output_but_not_decisions(tiny_flux):
    cachedit.enable_cache(tiny_flux, strategy="fixed", skip_interval=2, warmup_steps=3)
    plain = sample(tiny_flux, steps=10)
    plain_steps = cachedit.summary(tiny_flux, logging=False)[0].cached_steps
    cachedit.enable_cache(tiny_flux, calibrator_config=TaylorSeerCalibratorConfig(taylorseer_order=1), strategy="fixed",
                          skip_interval=2, warmup_steps=3)
    seer = sample(tiny_flux, steps=10)
    assert cachedit.summary(tiny_flux, logging=False)[0].cached_steps == plain_steps
    assert not torch.equal(plain, seer)


def test_noise_scale_perturbs_only_reused_steps(tiny_flux):
    cachedit.enable_cache(tiny_flux, **NEVER, noise_scale=0.05)
    ref_model = make_tiny_flux()
    assert torch.equal(sample(tiny_flux), sample(ref_model))  # nothing reused: no noise
    cachedit.enable_cache(tiny_flux, strategy="fixed", skip_interval=2, warmup_steps=2)
    a = sample(tiny_flux)
    cachedit.enable_cache(tiny_flux, strategy="fixed", skip_interval=2, warmup_steps=2, noise_scale=0.05)
    b = sample(tiny_flux)
    assert not torch.equal(a, b)


def test_separate_cfg_calls_keep_their_own_branches(tiny_flux):
    cachedit.enable_cache(tiny_flux, strategy="fixed", skip_interval=2, warmup_steps=2)
    sample(tiny_flux, steps=8, cfg="separate")
    s = cachedit.summary(tiny_flux, logging=False)[0]
    assert s.cached_steps == [3, 5, 7] and s.cfg_cached_steps == [3, 5, 7]
    assert s.accumulated_executed_steps == 8 and s.accumulated_transformer_executed_steps == 16
    run = cachedit.get_manager().entry(tiny_flux).engine.tracker.run
    assert len(run.branches) == 2
    cond, uncond = run.branches[0], run.branches[1]
    assert cond.probe is None  # fixed decides from the step alone: no probe is kept
    assert not torch.equal(cond.residuals[0]["hidden"], uncond.residuals[0]["hidden"])


def test_separate_cfg_matches_batched_cfg_when_nothing_is_reused(tiny_flux):
    ref = sample(tiny_flux, cfg="separate")
    cachedit.enable_cache(tiny_flux, **NEVER)
    assert torch.equal(sample(tiny_flux, cfg="separate"), ref)


def test_heun_second_evaluation_is_not_a_new_step(tiny_flux):
    cachedit.enable_cache(tiny_flux, strategy="fixed", skip_interval=2, warmup_steps=2)
    sample(tiny_flux, steps=6, heun=True)
    run = cachedit.get_manager().entry(tiny_flux).engine.tracker.run
    # timesteps 1, 5/6, ..., 1/6: 6 steps; Heun's correction call at the next sigma is branch 0,
    # the next step's first call at that same sigma is branch 1
    assert run.step == 5
    assert set(run.branches) == {0, 1}


def test_new_run_is_detected_and_starts_clean(tiny_flux):
    cachedit.enable_cache(tiny_flux, strategy="fixed", skip_interval=2, warmup_steps=2)
    a = sample(tiny_flux, steps=8)
    b = sample(tiny_flux, steps=8)
    assert torch.equal(a, b)  # second run reused nothing from the first
    s = cachedit.summary(tiny_flux, logging=False)[0]
    assert s.runs == 2 and s.cached_steps == [3, 5, 7] and s.accumulated_cached_steps == 6


def test_shape_change_resets_buffers(tiny_flux):
    cachedit.enable_cache(tiny_flux, strategy="fixed", skip_interval=2, warmup_steps=2)
    sample(tiny_flux, steps=8, tokens=16)
    b = sample(tiny_flux, steps=8, tokens=36)  # new resolution, same schedule
    cachedit.disable_cache(tiny_flux)
    cachedit.enable_cache(tiny_flux, strategy="fixed", skip_interval=2, warmup_steps=2)
    fresh = sample(tiny_flux, steps=8, tokens=36)
    assert torch.equal(b, fresh)


def test_shape_change_mid_run_forces_compute(tiny_flux):
    """Same timestep schedule continued with another batch size: no residual of the old shape is reused."""
    cachedit.enable_cache(tiny_flux, strategy="fixed", skip_interval=1, warmup_steps=1)
    from conftest import flux_inputs

    x, enc, pooled, img_ids, txt_ids = flux_inputs(2)
    with torch.no_grad():
        for i, t in enumerate([1.0, 0.9, 0.8]):
            bs = 2 if i < 2 else 1
            tiny_flux(hidden_states=x[:bs], encoder_hidden_states=enc[:bs], pooled_projections=pooled[:bs],
                      timestep=torch.full((bs,), t), img_ids=img_ids, txt_ids=txt_ids, return_dict=False)
    assert cachedit.summary(tiny_flux, logging=False)[0].cached_steps == [1]


def test_exception_mid_run_next_run_starts_clean(tiny_flux):
    cachedit.enable_cache(tiny_flux, strategy="fixed", skip_interval=2, warmup_steps=1)
    ref = sample(tiny_flux, steps=8)
    block = tiny_flux.single_transformer_blocks[2]
    original = block.forward
    calls = {"n": 0}

    def boom(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("interrupted")
        return original(*args, **kwargs)

    block.forward = boom
    with pytest.raises(RuntimeError):
        sample(tiny_flux, steps=8)
    block.forward = original
    assert torch.equal(sample(tiny_flux, steps=8), ref)


def test_two_models_have_separate_state_and_stats():
    a, b = make_tiny_flux(seed=1), make_tiny_flux(seed=2)
    cachedit.enable_cache(a, strategy="fixed", skip_interval=2, warmup_steps=2, name="high_noise")
    cachedit.enable_cache(b, strategy="fixed", skip_interval=3, warmup_steps=1, name="low_noise")
    sample(a, steps=8)
    sample(b, steps=8)
    sa, sb = cachedit.summary(a, logging=False)[0], cachedit.summary(b, logging=False)[0]
    assert sa.cached_steps == [3, 5, 7] and sb.cached_steps == [3, 6]
    g = cachedit.get_global_stats()
    assert g["models_tracked"] == 2
    assert g["total_cache_hits"] == 5 and g["total_cache_misses"] == 11
    assert {m["name"] for m in g["models"].values()} == {"high_noise", "low_noise"}


def test_pipeline_with_two_experts_accelerates_both():
    class TwoExpertPipeline:
        def __init__(self):
            self.transformer = make_tiny_flux(seed=3)
            self.transformer_2 = make_tiny_flux(seed=4)

    pipe = TwoExpertPipeline()
    assert cachedit.enable_cache(pipe, strategy="fixed") is pipe
    sample(pipe.transformer, steps=6)
    sample(pipe.transformer_2, steps=4)
    stats = cachedit.summary(pipe, logging=False)
    assert [s.accumulated_executed_steps for s in stats] == [6, 4]
    cachedit.disable_cache(pipe)
    assert cachedit.get_global_stats()["models_tracked"] == 0


def test_deleted_model_is_forgotten():
    model = make_tiny_flux()
    cachedit.enable_cache(model)
    sample(model, steps=3)
    assert cachedit.get_global_stats()["models_tracked"] == 1
    del model
    gc.collect()
    assert cachedit.get_global_stats()["models_tracked"] == 0
    assert cachedit.get_manager().stats.keys() == []


def test_threads_reading_stats_and_toggling_other_models_while_sampling(tiny_flux):
    cachedit.enable_cache(tiny_flux, strategy="fixed", skip_interval=2, warmup_steps=2)
    ref_model = make_tiny_flux()
    ref = sample(ref_model, steps=8)
    cachedit.enable_cache(ref_model, strategy="fixed", skip_interval=2, warmup_steps=2)
    expected = sample(ref_model, steps=8)
    errors, stop = [], threading.Event()
    others = [make_tiny_flux(seed=10 + i) for i in range(4)]

    def worker(i):
        try:
            while not stop.is_set():
                cachedit.get_global_stats()
                cachedit.summary(tiny_flux, logging=False)
                other = others[i % 4]
                cachedit.enable_cache(other, strategy="dynamic")
                cachedit.disable_cache(other)
                cachedit.strify(tiny_flux)
        except Exception as exc:  # pragma: no cover - the assertion reports it
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        outs = [sample(tiny_flux, steps=8) for _ in range(3)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert all(torch.equal(o, expected) for o in outs)
    assert not torch.equal(expected, ref)
    assert cachedit.summary(tiny_flux, logging=False)[0].runs == 3


def test_block_less_module_falls_back_to_step_level():
    class TinyUNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, sample, timestep, return_dict=False):
            return (self.conv(sample) * (1 + timestep.view(-1, 1, 1, 1)),)

    torch.manual_seed(0)
    unet = TinyUNet()
    cachedit.enable_cache(unet, strategy="fixed", skip_interval=2, warmup_steps=1)
    x = torch.randn(2, 4, 8, 8)
    outs = []
    with torch.no_grad():
        for t in [1.0, 0.75, 0.5, 0.25]:
            outs.append(unet(x, torch.full((2,), t))[0])
    s = cachedit.summary(unet, logging=False)[0]
    assert s.level == "step" and s.cached_steps == [2]
    # reused step 2 = its input + (output - input) of step 1
    assert torch.allclose(outs[2], x + (outs[1] - x))
    cachedit.disable_cache(unet)


def test_concat_channel_step_level_uses_output_channels():
    class ConcatModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 4, 1)

        def forward(self, x, timestep):
            return self.conv(x)

    model = ConcatModel()
    cachedit.enable_cache(model, strategy="fixed", skip_interval=2, warmup_steps=1)
    x = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        outs = [model(x, torch.tensor([t])) for t in (1.0, 0.5, 0.2)]
    assert outs[2].shape == (1, 4, 4, 4)
    assert torch.allclose(outs[2], x[:, :4] + (outs[1] - x[:, :4]))


def test_named_block_list_missing_is_a_clear_error(tiny_flux):
    with pytest.raises(cachedit.NoBlocksFoundError, match="blocks='nope'"):
        cachedit.enable_cache(tiny_flux, blocks="nope")


def test_user_named_block_list(tiny_flux):
    cachedit.enable_cache(tiny_flux, blocks=["single_transformer_blocks"], strategy="fixed", warmup_steps=1)
    entry = cachedit.get_manager().entry(tiny_flux)
    assert entry.block_lists == ["single_transformer_blocks"] and entry.engine.num_blocks == 4


@pytest.mark.parametrize("kwargs, name", [
    (dict(strategy="turbo"), "strategy"),
    (dict(skip_interval=0), "skip_interval"),
    (dict(skip_interval=11), "skip_interval"),
    (dict(warmup_steps=-1), "max_warmup_steps"),
    (dict(noise_scale=2.0), "noise_scale"),
    (dict(debug="yes"), "debug"),
    (dict(residual_diff_threshold=-0.1), "residual_diff_threshold"),
    (dict(Fn_compute_blocks=-1), "Fn_compute_blocks"),
    (dict(max_cached_steps=-2), "max_cached_steps"),
    (dict(steps_computation_mask=[1, 2]), "steps_computation_mask"),
    (dict(steps_computation_policy="sometimes"), "steps_computation_policy"),
    (dict(start_percent=0.9, end_percent=0.1), "start_percent"),
    (dict(cache_config="F1B0"), "cache_config"),
    (dict(taylorseer_order=9, enable_taylorseer=True), "taylorseer_order"),
    (dict(residual_dif_threshold=0.1), "residual_dif_threshold"),
])
def test_bad_parameters_raise_value_error_naming_them(tiny_flux, kwargs, name):
    with pytest.raises(ValueError) as info:
        cachedit.enable_cache(tiny_flux, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{name}=") and "allowed" in message


def test_bad_global_config_and_objects():
    with pytest.raises(ValueError, match="^default_strategy='x'.*allowed"):
        cachedit.set_global_config(default_strategy="x")
    with pytest.raises(ValueError, match="^default_skip_interval=0.*allowed"):
        cachedit.set_global_config(default_skip_interval=0)
    with pytest.raises(ValueError, match="^obj=.not a model. is invalid for enable_cache"):
        cachedit.enable_cache("not a model")
    with pytest.raises(ValueError, match="^obj=.*not accelerated"):
        cachedit.refresh_context(make_tiny_flux(), num_inference_steps=4)
    with pytest.raises(ValueError, match="^mask_policy='x'"):
        cachedit.steps_mask(total_steps=28, mask_policy="x")
    with pytest.raises(ValueError, match="^total_steps=5"):
        cachedit.steps_mask(total_steps=5)


def test_global_config_supplies_defaults(tiny_flux):
    cachedit.set_global_config(default_strategy="fixed", default_skip_interval=3, default_warmup_steps=1)
    cachedit.enable_cache(tiny_flux)
    opts = cachedit.get_manager().entry(tiny_flux).engine.options
    assert (opts.strategy, opts.skip_interval, opts.cache_config.max_warmup_steps) == ("fixed", 3, 1)
    sample(tiny_flux, steps=7)
    assert cachedit.summary(tiny_flux, logging=False)[0].cached_steps == [3, 6]
    cachedit.enable_cache(tiny_flux, strategy="adaptive", skip_interval=2)  # explicit beats global
    opts = cachedit.get_manager().entry(tiny_flux).engine.options
    assert (opts.strategy, opts.skip_interval) == ("adaptive", 2)


def test_default_options_are_the_tuned_adaptive_ones(tiny_flux):
    cachedit.enable_cache(tiny_flux)
    opts = cachedit.get_manager().entry(tiny_flux).engine.options
    from cachedit.config import ADAPTIVE_DEFAULTS

    assert opts.strategy == "adaptive"
    for k, v in ADAPTIVE_DEFAULTS.items():
        assert getattr(opts.cache_config, k) == v
    # cache-dit drop-in: legacy kwargs start from cache-dit's own defaults
    cachedit.enable_cache(tiny_flux, residual_diff_threshold=0.1)
    cfg = cachedit.get_manager().entry(tiny_flux).engine.options.cache_config
    assert (cfg.Fn_compute_blocks, cfg.max_warmup_steps, cfg.residual_diff_threshold) == (8, 8, 0.1)
    assert cachedit.get_manager().entry(tiny_flux).engine.options.calibrator_config is None


def test_legacy_taylorseer_kwargs(tiny_flux):
    cachedit.enable_cache(tiny_flux, Fn_compute_blocks=1, enable_taylorseer=True, taylorseer_order=2)
    opts = cachedit.get_manager().entry(tiny_flux).engine.options
    assert opts.taylorseer_order == 2
    assert cachedit.strify(tiny_flux) == "DBCache_F1B0_W8I1M0MC0_R0.08_T1O2"


def test_summary_strify_and_reset_stats(tiny_flux, caplog):
    cachedit.enable_cache(tiny_flux, DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.95,
                                                   max_warmup_steps=2))
    sample(tiny_flux, steps=6)
    with caplog.at_level("INFO", logger="cachedit"):
        stats = cachedit.summary(tiny_flux, details=True)
    assert "Cache Steps and Residual Diffs Statistics: FluxTransformer2DModel" in caplog.text
    assert "| Cache Steps | Diffs P00" in caplog.text
    s = stats[0]
    assert s.cached_steps == [2, 3, 4, 5] and s.hit_rate == pytest.approx(4 / 6)
    assert s.estimated_compute_saved == pytest.approx(4 * 5 / 36)
    assert cachedit.strify(tiny_flux) == "DBCache_F1B0_W2I1M0MC0_R0.95_T0O0_S4"
    assert cachedit.strify(stats) == cachedit.strify(tiny_flux)
    assert cachedit.strify({"Fn_compute_blocks": 1, "residual_diff_threshold": 0.2}) == "DBCache_F1B0_W8I1M0MC0_R0.2_T0O0"
    cachedit.reset_cache_stats(tiny_flux)
    s = cachedit.summary(tiny_flux, logging=False)[0]
    assert (s.cache_hits, s.cache_misses, s.accumulated_cached_steps) == (0, 0, 0)
    sample(tiny_flux, steps=6)
    cachedit.reset_cache_stats()
    assert cachedit.get_global_stats()["total_cache_hits"] == 0
    assert cachedit.summary(object(), logging=False)[0].cached_steps == []


def test_refresh_context_num_inference_steps_splits_runs(tiny_flux):
    cachedit.enable_cache(tiny_flux, strategy="fixed", skip_interval=2, warmup_steps=1)
    cachedit.refresh_context(tiny_flux, num_inference_steps=4)
    from conftest import flux_inputs

    x, enc, pooled, img_ids, txt_ids = flux_inputs(1)
    with torch.no_grad():
        for i in range(8):  # one falling schedule: only num_inference_steps says where a run ends
            tiny_flux(hidden_states=x, encoder_hidden_states=enc, pooled_projections=pooled,
                      timestep=torch.tensor([1.0 - 0.1 * i]), img_ids=img_ids, txt_ids=txt_ids, return_dict=False)
    s = cachedit.summary(tiny_flux, logging=False)[0]
    assert s.runs == 2 and s.cached_steps == [2] and s.accumulated_cached_steps == 2


def test_debug_log_lines(tiny_flux, caplog):
    cachedit.enable_cache(tiny_flux, strategy="fixed", warmup_steps=1, debug=True)
    with caplog.at_level("DEBUG", logger="cachedit"):
        sample(tiny_flux, steps=3)
    lines = [r.getMessage() for r in caplog.records if "cachedit.step" in r.getMessage()]
    assert len(lines) == 3
    assert "decision='compute'" in lines[0] and "decision='reuse'" in lines[2] and "blocks='1/6'" in lines[2]
    cachedit.enable_cache(tiny_flux, strategy="fixed", warmup_steps=1, debug=False)
    caplog.clear()
    with caplog.at_level("DEBUG", logger="cachedit"):
        sample(tiny_flux, steps=3)
    assert not [r for r in caplog.records if "cachedit.step" in r.getMessage()]


def test_no_listeners_means_no_emission(monkeypatch, tiny_flux):
    from cachedit.events import bus

    cachedit.enable_cache(tiny_flux, strategy="fixed", warmup_steps=1)
    sent = []
    for sig in (bus.step_computed, bus.cache_hit):
        monkeypatch.setattr(sig, "receivers", {})
        monkeypatch.setattr(sig, "send", lambda *a, **k: sent.append(a))
    sample(tiny_flux, steps=4)
    assert sent == []


def test_cache_memory_is_bounded(tiny_flux):
    cachedit.enable_cache(tiny_flux, strategy="fixed", skip_interval=2, warmup_steps=2,
                          calibrator_config=TaylorSeerCalibratorConfig(taylorseer_order=1))
    sample(tiny_flux, steps=8, batch=2, tokens=16)
    engine = cachedit.get_manager().entry(tiny_flux).engine
    hidden = 2 * 16 * 32 * 4  # batch x tokens x inner dim x fp32 bytes
    encoder = 2 * 3 * 32 * 4
    # fixed needs no probe: per block list (2 here) a residual of each stream + its first-order
    # Taylor difference (the Taylor value term is the residual)
    assert engine.buffer_bytes() == 2 * (hidden + encoder) + 2 * (hidden + encoder)
    cachedit.enable_cache(tiny_flux, residual_diff_threshold=0.9, Fn_compute_blocks=1, max_warmup_steps=2)
    sample(tiny_flux, steps=8, batch=2, tokens=16)
    engine = cachedit.get_manager().entry(tiny_flux).engine
    # adaptive: the probe, plus one engine-wide spare and scratch of its size (no per-step allocations)
    assert engine.buffer_bytes() == 3 * hidden + 2 * (hidden + encoder)


def test_taylorseer_extrapolates_polynomials_exactly():
    from cachedit.manager.taylorseer import TaylorSeries

    first = TaylorSeries(order=1)
    first.update(torch.full((2,), 1000.0), 0)  # a series' first value never enters a difference
    for step in (2, 4):  # value = 3 * step, computed every other step
        first.update(torch.full((2,), 3.0 * step), step)
    assert torch.equal(first.predict(5), torch.full((2,), 15.0))
    assert torch.equal(first.add_prediction(torch.ones(2), 6), torch.full((2,), 19.0))
    # never further than the span the difference was measured over (2 steps): the last value
    assert torch.equal(first.predict(7), torch.full((2,), 12.0))
    assert torch.equal(first.add_prediction(torch.ones(2), 7), torch.full((2,), 13.0))
    adjacent = TaylorSeries(order=1)
    adjacent.update(torch.tensor([-50.0]), 0)
    for step in (1, 2):  # a slope measured over one step extrapolates one step only
        adjacent.update(torch.tensor([float(step)]), step)
    assert adjacent.predict(3).item() == 3.0 and adjacent.predict(4).item() == 2.0
    in_place = TaylorSeries(order=1)  # the engine's in-place path keeps the same span rule
    for step in (0, 1, 4):
        in_place.update_residual(torch.tensor([2.0 * step + 1.0]), torch.ones(1), step)
    assert in_place.span == 3 and in_place.predict(7).item() == 14.0 and in_place.predict(8).item() == 8.0


def test_taylorseer_takes_no_slope_from_the_first_computed_step():
    """Steps 0 -> 1 leave the pure-noise input: their slope forecast step 2 of the bundled FLUX layout
    20% off (plain reuse: 2%) and turned whole images into other digits. A reuse right after two
    computed steps is the plain reuse of the second; one after three extrapolates from steps 1 -> 2."""
    from cachedit.bundled import digits

    model = digits.load_model()

    def images(reused_step: int, order: int) -> torch.Tensor:
        mask = [0 if i == reused_step else 1 for i in range(8)]
        config = DBCacheConfig(Fn_compute_blocks=0, Bn_compute_blocks=0, residual_diff_threshold=0.24,
                               max_warmup_steps=1, steps_computation_mask=mask, steps_computation_policy="static")
        calibrator = TaylorSeerCalibratorConfig(taylorseer_order=order) if order else None
        cachedit.enable_cache(model.transformer, cache_config=config, calibrator_config=calibrator)
        try:
            out = digits.generate(model, [1, 7], num_steps=8, guidance_scale=3.0, seed=6, cfg_mode="batched")
            assert cachedit.summary(model.transformer, logging=False)[0].cached_steps == [reused_step]
        finally:
            cachedit.disable_cache(model.transformer)
        return out

    plain = images(2, 0)
    assert torch.equal(images(2, 1), plain) and torch.equal(images(2, 2), plain)
    assert not torch.equal(images(3, 1), images(3, 0))  # from the third value on, TaylorSeer extrapolates


def test_taylorseer_in_place_update_reuses_its_two_buffers_and_matches_the_plain_update():
    from cachedit.manager.taylorseer import TaylorSeries

    g = torch.Generator().manual_seed(0)
    fused, plain = TaylorSeries(order=1), TaylorSeries(order=1)
    buffers = None
    for step in (0, 1, 3, 7, 8):
        out, base = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
        fused.update_residual(out, base, step)
        plain.update(out - base, step)
        if step == 3:
            buffers = {t.data_ptr() for t in fused.terms}
        elif buffers is not None:
            assert {t.data_ptr() for t in fused.terms} == buffers  # no new hidden-sized tensor per step
        assert torch.allclose(fused.predict(step + 1), plain.predict(step + 1), atol=1e-6)
        x = torch.randn(4, 8, generator=g)
        assert torch.allclose(fused.add_prediction(x, step + 1), x + plain.predict(step + 1), atol=1e-6)
    second = TaylorSeries(order=2)
    for step in (0, 1, 2, 3):  # value = step**2 from step 1: second differences recover it one step ahead
        second.update(torch.tensor([float(step * step) if step else 7.0]), step)
    # TaylorSeer's expansion with backward differences: 9 + 5*1 + 2*1**2/2! = 15
    assert second.predict(4).item() == pytest.approx(15.0)
    short_then_long = TaylorSeries(order=2)  # value = step**2 seen at 1, 2, 6: the 2nd difference rests on a 1-step gap
    for step in (0, 1, 2, 6):
        short_then_long.update(torch.tensor([float(step * step) if step else 7.0]), step)
    assert short_then_long.spans == [4, 1]
    # k=1: both terms (36 + 8*1 + ((8-3)/4)*1/2); k=2: first difference only (36 + 8*2)
    assert short_then_long.predict(7).item() == pytest.approx(36 + 8 + 1.25 / 2)
    assert short_then_long.predict(8).item() == pytest.approx(36 + 16)
    shape_change = TaylorSeries(order=1)
    shape_change.update(torch.zeros(2), 0)
    shape_change.update(torch.ones(3), 1)
    assert len(shape_change.terms) == 1  # no difference across a shape change
