"""start_percent / end_percent in ComfyUI mean what ComfyUI's own nodes mean: sigma percentages
through the model's `model_sampling.percent_to_sigma` (EasyCache, LazyCache, ControlNet, hooks),
not fractions of one sampler's steps. Checked on a Wan 2.2-style split run: two experts, two
KSamplerAdvanced nodes (steps 0-10 and 10-20 of 20), each expert with its own CacheDit."""

from __future__ import annotations

import pytest

START, END = 0.28, 0.83  # not on a multiple of 1/20: no schedule sigma sits on the window's edge


def _expert(h, seed: int, **window):
    """A tiny Wan model behind ModelSamplingSD3(shift=8) (as in ComfyUI's Wan 2.2 template), with
    CacheDit set to reuse every step it may (fixed, skip_interval 1, one warmup step, no streak cap)."""
    import cachedit
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    model = ModelSamplingSD3().patch(h.build_model("wan21_t2v", seed=seed), shift=8.0)[0]
    return cachedit.enable_cache(model, strategy="fixed", skip_interval=1, warmup_steps=1,
                                 max_continuous_cached_steps=-1, **window)


def _reused_steps(model) -> list:
    import cachedit
    from cachedit.adapters import comfyui as adapter

    record = cachedit.get_manager().stats.last_record(adapter.engine_of(model).key)
    assert len({s.step for s in record.steps}) == 10  # each expert ran 10 steps
    return sorted({s.step for s in record.steps if s.reused})


def _split_run(h, high, low) -> None:
    import nodes
    import torch

    positive, negative = h.make_conditioning("wan21_t2v")
    sampler = nodes.KSamplerAdvanced()
    with torch.inference_mode():
        (mid,) = sampler.sample(high, "enable", 0, 20, 2.0, "euler", "simple", positive, negative,
                                h.empty_latent("wan21_t2v"), 0, 10, "enable")
        sampler.sample(low, "disable", 0, 20, 2.0, "euler", "simple", positive, negative, mid, 10, 10000, "disable")


def test_split_two_expert_run_reuses_inside_the_sigma_window(comfy_harness):
    """Step i of 20 sits at sigma percent i/20 ("simple" scheduler). The window 0.28..0.83 holds
    steps 6..16: the high-noise expert (steps 0-9) may reuse 6-9, the low-noise expert (steps
    10-19, its own steps 0-9) its steps 1-6 (step 0 is its warmup). Step fractions of each
    sampler's own 10 steps would have given both experts steps 3-7."""
    high = _expert(comfy_harness, 0, start_percent=START, end_percent=END)
    low = _expert(comfy_harness, 1, start_percent=START, end_percent=END)
    _split_run(comfy_harness, high, low)
    assert _reused_steps(high) == [6, 7, 8, 9]
    assert _reused_steps(low) == [1, 2, 3, 4, 5, 6]


def test_full_window_reuses_every_step_after_warmup(comfy_harness):
    high, low = _expert(comfy_harness, 0), _expert(comfy_harness, 1)
    _split_run(comfy_harness, high, low)
    assert _reused_steps(high) == _reused_steps(low) == list(range(1, 10))


@pytest.mark.parametrize("arch", ["wan21_t2v", "flux", "sdxl"])
def test_progress_window_is_comfyuis_sigma_window(comfy_harness, arch):
    """For flow (shifted), Flux and discrete-eps model_sampling: `start <= progress <= end`
    exactly when `percent_to_sigma(end) < sigma <= percent_to_sigma(start)` (EasyCache's rule),
    edges included (a sigma equal to a window edge's sigma)."""
    import comfy.samplers
    from cachedit.adapters.comfyui.progress import sigma_percent

    ms = comfy_harness.build_model(arch).get_model_object("model_sampling")
    sigmas = [float(s) for s in comfy.samplers.calculate_sigmas(ms, "simple", 20)[:-1]]
    sigmas += [float(ms.percent_to_sigma(p)) for p in (0.25, 0.5, 0.8)]  # window edges themselves
    windows = [(0.0, 1.0), (0.15, 0.95), (0.25, 0.5), (0.5, 0.8), (0.28, 0.83), (0.0, 0.0), (1.0, 1.0)]
    for sigma in sigmas:
        progress = sigma_percent(ms, sigma)
        assert 0.0 <= progress <= 1.0
        for start, end in windows:
            comfy_rule = float(ms.percent_to_sigma(end)) < sigma <= float(ms.percent_to_sigma(start))
            assert (start <= progress <= end) == comfy_rule, (arch, sigma, start, end, progress)


def test_error_feedback_spans_are_sigma_spans_on_flow_models(comfy_harness):
    """Error feedback's step spans follow the noise level (a reused output moves the image by its
    step's sigma span), so on a flow model they are 1 - sigma / sigma_max differences, also in the
    low-noise expert of a split run, where the window keeps the percent. An EPS model (SDXL) has
    no noise progress of this kind: its feedback keeps the percent."""
    import comfy.samplers

    import cachedit
    from cachedit.adapters import comfyui as adapter
    from cachedit.adapters.comfyui.progress import SigmaProgress
    from cachedit.events import bus
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    h = comfy_harness
    flow = ModelSamplingSD3().patch(h.build_model("wan21_t2v"), shift=8.0)[0].get_model_object("model_sampling")
    eps = h.build_model("sdxl").get_model_object("model_sampling")
    progress = SigmaProgress()
    for sigma in (0.97, 0.5, 0.12):
        assert progress.noise_progress(flow, sigma) == pytest.approx(1.0 - sigma)
        assert progress(flow, sigma) != pytest.approx(1.0 - sigma, abs=1e-3)  # shift 8: the percent differs
        assert progress.noise_progress(eps, sigma * 10) is None

    high = cachedit.enable_cache(ModelSamplingSD3().patch(h.build_model("wan21_t2v", seed=0), shift=8.0)[0])
    low = cachedit.enable_cache(ModelSamplingSD3().patch(h.build_model("wan21_t2v", seed=1), shift=8.0)[0])
    engines = {adapter.engine_of(m).key: adapter.engine_of(m) for m in (high, low)}
    spans = {key: [] for key in engines}

    def on_decision(sender, **kw):
        if sender in engines and engines[sender].feedback is not None:
            spans[sender].append((kw["step"], engines[sender].feedback.span))

    bus.step_computed.connect(on_decision, weak=False)
    bus.cache_hit.connect(on_decision, weak=False)
    try:
        _split_run(h, high, low)
    finally:
        bus.step_computed.disconnect(on_decision)
        bus.cache_hit.disconnect(on_decision)
    schedule = comfy.samplers.calculate_sigmas(flow, "simple", 20).tolist()  # what both samplers ran
    low_spans = [(s, span) for s, span in spans[adapter.engine_of(low).key] if span is not None]
    assert len(low_spans) >= 5
    for step, span in low_spans:  # the expert's own step `step` is the run's step 10 + step
        i = 10 + step
        assert span == pytest.approx(schedule[i - 1] - schedule[i], rel=1e-3)


def test_img2img_spans_are_fractions_of_the_runs_own_noise_range(comfy_harness):
    """A FLUX run that starts below sigma_max (KSampler's denoise < 1: img2img, a hires-fix pass)
    measures error feedback's spans in its own noise range, as the diffusers path does: the span of
    step i is (sigma[i-1] - sigma[i]) / sigma[0]. Measured from sigma_max its steps looked short and
    each reuse got up to 2x the budget (bundled FLUX layout at denoise 0.5-0.6: 40.0-40.3 dB)."""
    import nodes
    import torch

    import cachedit
    from cachedit.adapters import comfyui as adapter
    from cachedit.events import bus

    h = comfy_harness
    model = cachedit.enable_cache(h.build_model("flux"))
    engine = adapter.engine_of(model)
    spans, sigmas = [], []

    def on_decision(sender, **kw):
        if sender == engine.key:
            spans.append((kw["step"], engine.feedback.span))

    original = engine.begin_call

    def recording(timestep, *args, **kwargs):
        sigmas.append(float(timestep))
        return original(timestep, *args, **kwargs)

    engine.begin_call = recording
    bus.step_computed.connect(on_decision, weak=False)
    bus.cache_hit.connect(on_decision, weak=False)
    positive, negative = h.make_conditioning("flux")
    try:
        with torch.inference_mode():
            nodes.KSampler().sample(model, 0, 12, 2.0, "euler", "simple", positive, negative, h.empty_latent("flux"),
                                    denoise=0.5)
    finally:
        bus.step_computed.disconnect(on_decision)
        bus.cache_hit.disconnect(on_decision)
        del engine.begin_call
    first = sigmas[0]
    assert first < 0.9  # the run starts part way down
    known = [(step, span) for step, span in spans if span is not None]
    assert len(known) >= 8
    for step, span in known:
        assert span == pytest.approx((sigmas[step - 1] - sigmas[step]) / first, rel=1e-3)
