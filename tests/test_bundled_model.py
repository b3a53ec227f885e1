"""Tests for the bundled tiny FLUX DiT trained on sklearn digits (cachedit.bundled.digits)."""

import math

import pytest
import torch

from cachedit.bundled import digits as D


@pytest.fixture(scope="module")
def model():
    # One intra-op thread: these are tiny batches, and on a shared 2-core machine OpenMP
    # oversubscription made 2 threads up to 10x slower than 1.  Restored afterwards.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield D.load_model()
    finally:
        torch.set_num_threads(previous)


def test_loads_as_diffusers_flux(model):
    from diffusers import FluxTransformer2DModel

    tr = model.transformer
    assert isinstance(tr, FluxTransformer2DModel)
    assert len(tr.transformer_blocks) == 2
    assert len(tr.single_transformer_blocks) == 10  # 12 blocks: room for cache-dit's F8B0
    assert tr.config.in_channels == 4 and tr.config.out_channels == 4
    assert tr.inner_dim == 160
    assert not tr.training and not model.label_embedder.training
    assert all(not p.requires_grad for p in tr.parameters())
    assert next(tr.parameters()).dtype == torch.float32
    ehs, pooled = model.condition(torch.tensor([0, 9, D.NULL_LABEL]))
    assert ehs.shape == (3, 4, tr.config.joint_attention_dim)
    assert pooled.shape == (3, tr.config.pooled_projection_dim)


def test_sigmas_schedule():
    s = D.sigmas_schedule(28)
    assert s.shape == (29,)
    assert s[0].item() == 1.0 and s[-1].item() == 0.0
    assert bool((s[1:] < s[:-1]).all())
    lin = D.sigmas_schedule(4, shift=1.0)
    assert torch.allclose(lin, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_pack_roundtrip_matches_flux_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 1, 16, 16)
    packed = D.pack_images(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 1, 16, 16))
    assert torch.equal(D.unpack_latents(packed), x)
    assert torch.equal(D.prepare_img_ids(), FluxPipeline._prepare_latent_image_ids(2, 8, 8, "cpu", torch.float32))


def test_generate_deterministic(model):
    labels = [0, 1, 2, 3]
    a = D.generate(model, labels, num_steps=6, seed=123)
    b = D.generate(model, labels, num_steps=6, seed=123)
    c = D.generate(model, labels, num_steps=6, seed=124)
    assert a.shape == (4, 1, 16, 16) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generate_calls_transformer_like_a_pipeline(model):
    calls = []

    def pre_hook(module, args, kwargs):
        assert not args
        calls.append({k: (v.shape if torch.is_tensor(v) else v) for k, v in kwargs.items()})
        assert not torch.is_grad_enabled()

    h = model.transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        D.generate(model, [3, 4], num_steps=3, cfg_mode="batched")
        assert len(calls) == 3
        assert calls[0]["hidden_states"] == (4, 64, 4) and calls[0]["timestep"] == (4,)
        assert calls[0]["return_dict"] is False
        calls.clear()
        D.generate(model, [3, 4], num_steps=3, cfg_mode="separate")
        assert len(calls) == 6 and calls[0]["hidden_states"] == (2, 64, 4)
        calls.clear()
        D.generate(model, [3, 4], num_steps=3, cfg_mode="none")
        assert len(calls) == 3
        calls.clear()
        D.generate(model, [3, 4], num_steps=3, cfg_mode="none", sampler="heun")
        assert len(calls) == 5  # 2 per step, last step Euler
    finally:
        h.remove()


def test_batched_and_separate_cfg_agree(model):
    labels = [5, 7]
    a = D.generate(model, labels, num_steps=8, cfg_mode="batched")
    b = D.generate(model, labels, num_steps=8, cfg_mode="separate")
    assert (a - b).abs().max().item() < 1e-3


def test_real_digits_are_classified():
    x, y = D.digits_dataset()
    assert x.shape == (1797, 1, 16, 16)
    assert D.digit_accuracy(x[::5], y[::5]) >= 0.98


def test_generated_digit_accuracy(model):
    # measured 1.000 on these 40 images (and 1.000 with 200 images); keep a margin
    labels = torch.arange(40) % 10
    imgs = D.generate(model, labels, num_steps=28, guidance_scale=3.0, seed=0)
    assert D.digit_accuracy(imgs, labels) >= 0.85


def test_psnr_known_values():
    a = torch.rand(2, 1, 16, 16)
    assert D.psnr(a, a.clone()) == math.inf
    z = torch.zeros(1, 1, 16, 16)
    assert D.psnr(z, z + 0.1) == pytest.approx(20.0, abs=1e-4)  # 10*log10(1/0.01)
    assert D.psnr(z, z + 0.5, data_range=2.0) == pytest.approx(10 * math.log10(4.0 / 0.25), abs=1e-4)


def test_ssim_known_values():
    a = torch.rand(3, 1, 16, 16)
    assert D.ssim(a, a.clone()) == 1.0
    # constant images: SSIM = (2*mu_a*mu_b + C1) / (mu_a^2 + mu_b^2 + C1) (variances are zero)
    c1 = 0.01**2
    z = torch.zeros(1, 1, 16, 16)
    assert D.ssim(z, z + 0.5) == pytest.approx(c1 / (0.25 + c1), abs=1e-6)
    assert D.ssim(z + 0.2, z + 0.6) == pytest.approx((2 * 0.12 + c1) / (0.04 + 0.36 + c1), abs=1e-6)
    assert D.ssim(a, 1.0 - a) < 0.5


def test_save_grid(tmp_path, model):
    from PIL import Image

    imgs = torch.rand(5, 1, 16, 16)
    path = tmp_path / "grid.png"
    D.save_grid([("random", imgs), ("zeros", torch.zeros(3, 1, 16, 16))], str(path))
    im = Image.open(path)
    assert im.format == "PNG"
    assert im.size[1] >= 2 * 16 * 4 and im.size[0] >= 5 * 16 * 4
