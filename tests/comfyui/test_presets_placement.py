"""Presets (family rules per run) and cache placement (cache_device) inside real ComfyUI, on CPU.

Family detection runs on ComfyUI's own model classes (Flux, WanModel, the SDXL UNet); Wan 2.2's
two experts are two samplers over one schedule (KSamplerAdvanced's start/end steps); ComfyUI's
memory planner is watched through `load_models_gpu`; "low on VRAM" is a monkeypatched
`comfy.model_management` (there is no GPU here).
"""

from __future__ import annotations

import json
import logging
import os

import pytest

from .test_nodes_comfyui import REPO, _custom_nodes_dir, _run, pack  # noqa: F401 (pack is a fixture)


def _sample(h, model, arch="flux", steps=6, start=None, last=None, seed=0, cfg=2.0, sampler="euler"):
    import torch
    import nodes

    pos, neg = h.make_conditioning(arch)
    with torch.inference_mode():
        (out,) = nodes.common_ksampler(model, seed, steps, cfg, sampler, "simple", pos, neg, h.empty_latent(arch),
                                       start_step=start, last_step=last,
                                       force_full_denoise=last is None or last >= steps)
    return out["samples"]


def _engine(model):
    from cachedit.adapters import comfyui

    return comfyui.engine_of(model)


def test_preset_and_cache_device_inputs_with_chinese_names(pack):  # noqa: F811
    acc = pack.NODE_CLASS_MAPPINGS["CacheDitAccelerate"].GET_SCHEMA()
    preset = next(i for i in acc.inputs if i.id == "preset")
    assert list(preset.options) == ["quality", "balanced", "fast"] and preset.default == "balanced"
    adv = pack.NODE_CLASS_MAPPINGS["CacheDitAdvancedConfig"].GET_SCHEMA()
    device = next(i for i in adv.inputs if i.id == "cache_device")
    assert list(device.options) == ["auto", "model", "cpu"] and device.default == "auto"
    with open(os.path.join(REPO, "locales", "zh", "nodeDefs.json"), encoding="utf-8") as f:
        zh = json.load(f)
    assert zh["CacheDitAccelerate"]["inputs"]["preset"]["name"] == "预设"
    assert zh["CacheDitAdvancedConfig"]["inputs"]["cache_device"]["name"] == "缓存位置"


@pytest.mark.parametrize("arch,family", [("flux", "flux"), ("wan21_t2v", "wan"), ("sdxl", "unet")])
def test_family_detected_from_comfyui_model_class(comfy_harness, arch, family):
    import cachedit

    engine = _engine(cachedit.enable_cache(comfy_harness.build_model(arch)))
    assert engine.family == family and engine.base_options.preset == "balanced"


def test_accelerate_fast_few_step_run_and_log_line(pack, comfy_harness, caplog):  # noqa: F811
    h = comfy_harness
    model = _run(pack.NODE_CLASS_MAPPINGS["CacheDitAccelerate"], model=h.build_model("flux"), preset="fast")[0]
    with caplog.at_level(logging.INFO, logger="cachedit"):
        _sample(h, model, steps=8)
    engine = _engine(model)
    assert engine.run_settings.rule == "few-step" and engine.options.error_budget == 0.2
    lines = [r.getMessage() for r in caplog.records if "cachedit.run" in r.getMessage()]
    assert len(lines) == 1 and "family='flux'" in lines[0], lines
    assert "setting='fast, few-step: budget 0.2, warmup 3, max in a row 1, max reused 3'" in lines[0], lines
    import cachedit

    record = cachedit.get_manager().stats.last_record(engine.key)
    assert not [s for s in record.steps if s.reused and s.step < 3]


def test_accelerate_fifty_step_run_reuses_up_to_five_in_a_row(pack, comfy_harness, caplog):  # noqa: F811
    """ComfyUI's sigmas say a run has 50 steps: the long-run rule with 5 reused steps in a row (the
    log line says so), and no streak in the run's record is longer; 28 steps keep 4."""
    import cachedit

    h = comfy_harness
    model = _run(pack.NODE_CLASS_MAPPINGS["CacheDitAccelerate"], model=h.build_model("flux"), preset="balanced")[0]
    for steps, in_a_row in ((50, 5), (28, 4)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="cachedit"):
            _sample(h, model, steps=steps)
        engine = _engine(model)
        assert engine.run_settings.rule == "long run"
        assert engine.options.cache_config.max_continuous_cached_steps == in_a_row
        line = next(r.getMessage() for r in caplog.records if "cachedit.run" in r.getMessage())
        label = "max in a row 5, " if in_a_row == 5 else "warmup 2, first streak 3, TaylorSeer 2"
        assert label in line, line
        record = cachedit.get_manager().stats.last_record(engine.key)
        streak = longest = 0
        for s in sorted(record.steps, key=lambda s: s.step):
            streak = streak + 1 if s.reused else 0
            longest = max(longest, streak)
        assert longest <= in_a_row  # random weights: few reuses; the rule and its cap are what is checked


@pytest.mark.parametrize("cfg, budget", [(6.0, 0.075), (1.0, 0.15)])
def test_ksampler_cfg_sets_the_runs_error_budget(pack, comfy_harness, caplog, cfg, budget):  # noqa: F811
    """The guider's CFG scale reaches error feedback each run: above 3 the budget scales by 3 / cfg
    (the errors in the stats, the run's log line and the Detailed Stats text are compared with it);
    the next run at another cfg gets its own."""
    import cachedit

    h = comfy_harness
    model = cachedit.enable_cache(h.build_model("sd3"))
    with caplog.at_level(logging.INFO, logger="cachedit"):
        _sample(h, model, arch="sd3", steps=10, cfg=cfg)
    engine = _engine(model)
    assert engine.feedback.guidance == cfg and engine.feedback.run_budget() == pytest.approx(budget)
    stats = cachedit.summary(model, logging=False)[0]
    assert stats.reuse_errors and stats.error_budget == pytest.approx(budget)
    line = next(r.getMessage() for r in caplog.records if "cachedit.run" in r.getMessage())
    assert f"error_budget={budget}" in line and (f"guidance={cfg}" in line) == (cfg > 3), line
    text = _run(pack.NODE_CLASS_MAPPINGS["CacheDitDetailedStats"], model=model)[2]
    assert ("error budget 0.15, 0.075 at CFG 6 " in text) == (cfg > 3) and f", budget {budget:g}; " in text, text
    _sample(h, model, arch="sd3", steps=10, cfg=3.0)
    assert engine.feedback.guidance == 3.0 and engine.feedback.run_budget() == pytest.approx(0.15)


@pytest.mark.parametrize("sampler, scale", [("dpmpp_2m", 0.8), ("uni_pc", 0.6), ("heun", 0.8), ("euler", 1.0)])
def test_the_sampler_sets_the_runs_error_budget(pack, comfy_harness, caplog, sampler, scale):  # noqa: F811
    """KSampler's sampler reaches error feedback each run: a multistep / higher-order one gets 0.8 of
    the budget, one of order 3 (uni_pc) 0.6 (sampler_kind.py), said in the run's log line, the stats
    and the Detailed Stats text; the next run with euler has the whole budget again."""
    import cachedit

    h = comfy_harness
    model = cachedit.enable_cache(h.build_model("sd3"))
    with caplog.at_level(logging.INFO, logger="cachedit"):
        _sample(h, model, arch="sd3", steps=10, sampler=sampler)
    engine = _engine(model)
    budget = 0.15 * scale
    assert engine.feedback.sampler == sampler and engine.feedback.run_budget() == pytest.approx(budget)
    stats = cachedit.summary(model, logging=False)[0]
    assert stats.reuse_errors and stats.error_budget == pytest.approx(budget)
    line = next(r.getMessage() for r in caplog.records if "cachedit.run" in r.getMessage())
    assert (f"{sampler}: budget x{scale:g}'" in line) == (scale < 1), line
    text = _run(pack.NODE_CLASS_MAPPINGS["CacheDitDetailedStats"], model=model)[2]
    said = f"error budget 0.15, {budget:.3g} with the {sampler} sampler (multistep / higher-order) "
    assert (said in text) == (scale < 1) and f", budget {budget:g}; " in text, text
    _sample(h, model, arch="sd3", steps=10)
    assert engine.feedback.sampler == "euler" and engine.feedback.run_budget() == pytest.approx(0.15)


def test_wan22_experts_each_own_cache_and_rule(comfy_harness):
    import cachedit

    h = comfy_harness
    high = cachedit.enable_cache(h.build_model("wan21_t2v", seed=0), quality="balanced", name="high")
    low = cachedit.enable_cache(h.build_model("wan21_t2v", seed=1), quality="balanced", name="low")
    _sample(h, high, "wan21_t2v", steps=20, start=0, last=10)
    _sample(h, low, "wan21_t2v", steps=20, start=10, last=20)
    eh, el = _engine(high), _engine(low)
    assert eh is not el
    assert eh.run_settings.rule == "high-noise expert" and eh.options.cache_config.max_warmup_steps == 4
    assert eh.options.cache_config.max_cached_steps == 8
    assert el.run_settings.rule == "low-noise expert" and el.options.cache_config.max_warmup_steps == 2
    _sample(h, high, "wan21_t2v", steps=20)  # a whole run (Wan 2.1, Wan 2.2 5B): the plain settings, 20 steps: long
    assert eh.run_settings.rule == "long run" and eh.options.cache_config.max_cached_steps == -1
    # 20-23 steps: order 2 at the preset's own budget (SHORT_LONG_RUN_STEPS); 24+: the long-run budget
    assert (eh.options.taylorseer_order, eh.options.error_budget) == (2, 0.15)
    assert cachedit.summary(high, logging=False)[0].cached_steps  # order 2 reused steps
    _sample(h, high, "wan21_t2v", steps=24)
    assert eh.run_settings.rule == "long run" and (eh.options.taylorseer_order, eh.options.error_budget) == (2, 0.2)
    _sample(h, high, "wan21_t2v", steps=14)  # shorter: order 1 again, at the preset's own budget
    assert eh.run_settings.rule == "standard" and (eh.options.taylorseer_order, eh.options.error_budget) == (1, 0.15)


def test_sdxl_unet_is_step_level_with_easycache_window(comfy_harness):
    import cachedit

    model = cachedit.enable_cache(comfy_harness.build_model("sdxl"), quality="quality")
    _sample(comfy_harness, model, "sdxl", steps=12)
    engine = _engine(model)
    assert engine.step_level and engine.run_settings.rule == "step level"
    assert (engine.options.start_percent, engine.options.end_percent) == (0.15, 0.95)
    assert engine.options.error_budget == 0.08


# -- placement ----------------------------------------------------------------------------------------

class _FakePatcher:
    """What low_on_vram reads from a ModelPatcher, for a model on a (pretend) GPU."""

    def __init__(self, size=8 << 30, loaded=0):
        import torch

        self.load_device, self.offload_device = torch.device("cuda:0"), torch.device("cpu")
        self._size, self._loaded = size, loaded

        class _Base:
            def memory_required(self, input_shape, cond_shapes={}):
                return 1 << 30

        self.model = _Base()

    def model_size(self):
        return self._size

    def loaded_size(self):
        return self._loaded

    def is_clone(self, other):
        return other is self


def test_auto_picks_offload_device_when_comfyui_is_low(monkeypatch, comfy_harness):
    import comfy.model_management as mm

    from cachedit.adapters.comfyui.memory import low_on_vram

    p = _FakePatcher()
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NORMAL_VRAM)
    monkeypatch.setattr(mm, "current_loaded_models", [])
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: 40 << 30)
    assert not low_on_vram(p, 2 << 30, [1, 16, 64, 64])
    free = (9 << 30) + int(mm.minimum_inference_memory()) + (1 << 29)  # 8 GiB weights + 1 GiB + reserve + 0.5 GiB
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: free)
    assert low_on_vram(p, 2 << 30, [1, 16, 64, 64])  # a 2 GiB cache does not fit
    assert not low_on_vram(p, 1 << 28, [1, 16, 64, 64])  # a 256 MiB one does
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: 40 << 30)
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.LOW_VRAM)
    assert low_on_vram(p, 2 << 30, [1, 16, 64, 64])


def test_prepare_sampling_sets_auto_device_and_reserves_cache_memory(monkeypatch, comfy_harness):
    """ComfyUI's planner sees memory_required + the cache while it plans; auto goes to the offload
    device when low (a pretend GPU), the model's device otherwise; memory_required is put back."""
    import torch
    import cachedit
    from cachedit.adapters.comfyui import memory
    from cachedit.adapters.comfyui.handle import handle_of

    h = comfy_harness
    model = cachedit.enable_cache(h.build_model("flux"))
    handle = handle_of(model)
    wrapper = memory.prepare_sampling_wrapper(handle)
    base = model.model
    plain = base.memory_required([2, 16, 8, 8])
    seen = {}

    def executor(m, noise_shape, *a, **k):
        seen["required"] = m.model.memory_required([2, *noise_shape[1:]])
        return "planned"

    monkeypatch.setattr(model, "load_device", torch.device("cuda:0"), raising=False)
    monkeypatch.setattr(memory, "low_on_vram", lambda patcher, nbytes, shape: True)
    assert wrapper(executor, model, [1, 16, 8, 8], {}, model_options={}) == "planned"
    assert handle_of(model).engine.placement.auto_device == torch.device("cpu")
    total, probe = memory.estimate_bytes(handle, [1, 16, 8, 8], torch.float32)
    assert total > probe > 0 and seen["required"] == plain + probe  # residuals go to RAM: only the probe stays
    handle.engine.base_options.default_taylorseer = False  # as if the user had chosen order 1: no long-run order 2
    assert memory.estimate_bytes(handle, [1, 16, 8, 8], torch.float32)[0] < total
    handle.engine.base_options.default_taylorseer = True
    monkeypatch.setattr(memory, "low_on_vram", lambda patcher, nbytes, shape: False)
    wrapper(executor, model, [1, 16, 8, 8], {}, model_options={})
    assert handle.engine.placement.auto_device is None and seen["required"] == plain + total
    assert "memory_required" not in base.__dict__ and base.memory_required([2, 16, 8, 8]) == plain


def test_sampling_tells_load_models_gpu_and_stats_report_bytes(pack, monkeypatch, comfy_harness):  # noqa: F811
    import comfy.model_management as mm
    import cachedit

    h = comfy_harness
    asked = []
    original = mm.load_models_gpu

    def spy(models, memory_required=0, *a, **k):
        asked.append(memory_required)
        return original(models, memory_required, *a, **k)

    monkeypatch.setattr(mm, "load_models_gpu", spy)
    raw = h.build_model("flux")
    _sample(h, raw)
    model = cachedit.enable_cache(raw, cache_device="model")
    _sample(h, model)
    _sample(h, model)  # the second run's estimate is the first run's measured bytes
    assert asked[1] > asked[0] and asked[2] > asked[0]
    stats = cachedit.summary(model, logging=False)[0]
    held = stats.cache_bytes_by_device["cpu"]  # the residuals plus the two probe buffers
    assert list(stats.cache_bytes_by_device) == ["cpu"] and held >= stats.cache_bytes > 0
    assert abs((asked[2] - asked[0]) - held) <= 0.05 * held
    text = _run(pack.NODE_CLASS_MAPPINGS["CacheDitDetailedStats"], model=model)
    assert "Cache memory:" in text[2] and "on cpu (cache_device=model)" in text[2]


def test_cpu_cache_device_bit_identical_in_comfyui(monkeypatch, comfy_harness):
    import torch
    import cachedit
    from cachedit.manager.placement import CachePlacement

    h = comfy_harness
    reuse = dict(Fn_compute_blocks=1, residual_diff_threshold=0.9, max_warmup_steps=2, enable_taylorseer=True,
                 taylorseer_order=1)  # reuses on the tiny random model
    reference = _sample(h, cachedit.enable_cache(h.build_model("flux"), cache_device="model", **reuse), steps=12)
    monkeypatch.setattr(CachePlacement, "offloaded", lambda self, device: self.mode == "cpu")  # a fake device map
    model = cachedit.enable_cache(h.build_model("flux"), cache_device="cpu", **reuse)
    out = _sample(h, model, steps=12)
    assert torch.equal(reference, out) and _engine(model).placement.copies > 0
    stats = cachedit.summary(model, logging=False)[0]
    assert stats.cached_steps or stats.cfg_cached_steps
