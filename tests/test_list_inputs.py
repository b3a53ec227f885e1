"""Models that take their latents as a list of per-image tensors (diffusers' Z-Image).

`ZImagePipeline` calls `ZImageTransformer2DModel(x_list, t, cap_feats_list)` with one [C, 1, H, W]
latent per image (positionally), timesteps that rise (t = 1 - sigma), and gets a list back. The
run tracker, the sampler-noise check and the model-input probe need the latents as one tensor:
before they were read as such, a keyword call was never cached at all and a positional one took
the timestep tensor for the latents.
"""

from __future__ import annotations

import pytest
import torch

import cachedit
from cachedit import DBCacheConfig
from cachedit.manager.torch_hooks import _main_tensor

diffusers = pytest.importorskip("diffusers")

STEPS = 10


def _tiny_zimage() -> torch.nn.Module:
    torch.manual_seed(0)
    model = diffusers.ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=1, dim=32, n_layers=3, n_refiner_layers=1, n_heads=2,
        n_kv_heads=2, cap_feat_dim=16, axes_dims=[4, 6, 6], axes_lens=[64, 8, 8])
    return model.eval().requires_grad_(False)


def _sample(model: torch.nn.Module, positional: bool) -> torch.Tensor:
    """ZImagePipeline's loop, reduced: batched CFG (positive first), t = 1 - sigma, output negated."""
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 1, 8, 8, generator=gen)
    caps = [torch.randn(3, 16, generator=gen) for _ in range(4)]
    sigmas = torch.linspace(1.0, 0.0, STEPS + 1)
    with torch.no_grad():
        for i in range(STEPS):
            x_list = list(latents.repeat(2, 1, 1, 1).unsqueeze(2).unbind(0))
            t = (1.0 - sigmas[i]).expand(4)
            if positional:
                out = model(x_list, t, caps, return_dict=False)[0]
            else:
                out = model(x=x_list, t=t, cap_feats=caps, return_dict=False)[0]
            pos, neg = torch.stack(out).squeeze(2).chunk(2)
            v = -(pos + 2.0 * (pos - neg))
            latents = latents + (sigmas[i + 1] - sigmas[i]) * v
    return latents


@pytest.mark.parametrize("positional", [False, True], ids=["keyword", "positional"])
def test_list_latents_are_cached_one_run_per_generation(positional: bool) -> None:
    model = _tiny_zimage()
    reference = _sample(model, positional)
    cachedit.enable_cache(model, cache_config=DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0,
                                                            residual_diff_threshold=1e6, max_warmup_steps=3))
    try:
        first = _sample(model, positional)
        second = _sample(model, positional)
        stats = cachedit.summary(model, logging=False)[0]
        assert stats.runs == 2  # rising timesteps: one run per generation (a falling one starts the next)
        assert stats.cached_steps == list(range(3, STEPS))  # every step after the warmup, in the last run
        assert torch.equal(first, second)  # nothing carried over from the first generation
        assert not torch.equal(first, reference)
    finally:
        cachedit.disable_cache(model)
    assert torch.equal(_sample(model, positional), reference)


def test_the_model_input_is_the_stacked_latents() -> None:
    latents = [torch.full((1, 1, 2, 2), float(i)) for i in range(3)]
    stacked = _main_tensor(latents)
    assert stacked.shape == (3, 1, 1, 2, 2) and torch.equal(stacked[2], latents[2])
    assert _main_tensor(latents[0]) is latents[0]
    assert _main_tensor([torch.zeros(2), torch.zeros(3)]) is None  # ragged: no batch to read
    assert _main_tensor([[torch.zeros(2)]]) is None  # Z-Image's omni mode (nested lists)
    assert _main_tensor(None) is None and _main_tensor([]) is None


def test_the_default_reads_the_latents_not_the_timestep(monkeypatch: pytest.MonkeyPatch) -> None:
    """The calls' signature and model input are the latents (the default's probe reads the model
    input's change: on the timestep tensor it would read how far t moved, the same on every model)."""
    from cachedit.manager.manager import CacheManager

    model = _tiny_zimage()
    cachedit.enable_cache(model)
    engine = CacheManager.instance().entry(model).engine
    seen = []
    begin_call = engine.begin_call

    def spy(timestep, branch_key, signature, **kwargs):
        seen.append((signature[0], tuple(kwargs["model_input"].shape), timestep))
        return begin_call(timestep, branch_key, signature, **kwargs)

    monkeypatch.setattr(engine, "begin_call", spy)
    try:
        _sample(model, positional=True)
    finally:
        cachedit.disable_cache(model)
    assert [s[:2] for s in seen] == [((4, 1, 1, 8, 8), (4, 1, 1, 8, 8))] * STEPS
    assert [round(s[2], 4) for s in seen] == [round(i / STEPS, 4) for i in range(STEPS)]  # t = 1 - sigma


def test_rising_timesteps_in_0_1_are_one_minus_sigma() -> None:
    """Error feedback's step spans follow the noise level. diffusers' Z-Image and Lumina2 pipelines
    feed t = 1 - sigma (rising): the noise progress of a shifted schedule is then the same as for
    a model fed sigma, not the step count's."""
    from cachedit.manager.state import RunTracker

    sigmas = [1.0, 0.95, 0.85, 0.6, 0.2, 0.05]  # shifted: short steps first
    falling, rising = RunTracker(), RunTracker()
    for s in sigmas:
        run_f, *_ = falling.advance(s * 1000.0, None)
        run_r, *_ = rising.advance(1.0 - s, None)
        assert run_r.noise_progress(1.0 - s) == pytest.approx(run_f.noise_progress(s * 1000.0)) == pytest.approx(1.0 - s)
    assert run_r is rising.run and run_r.step == len(sigmas) - 1
    img2img = RunTracker()  # starts part-way (denoise 0.6): progress from its own first noise level
    for s in (0.6, 0.45, 0.3):
        run, *_ = img2img.advance(1.0 - s, None)
    assert run.noise_progress(0.7) == pytest.approx(0.5)
    other = RunTracker()  # rising beyond 1 (unknown scale): the step count's progress
    for t in (10.0, 20.0, 40.0):
        run, *_ = other.advance(t, None)
    assert run.noise_progress(40.0) == pytest.approx(run.progress(40.0))
