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
