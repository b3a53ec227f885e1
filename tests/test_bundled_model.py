"""Tests for the bundled tiny DiTs trained on sklearn digits (cachedit.bundled): the Flux model
(the default), the Wan and Qwen-Image layouts and the held-out SD3 layout, their inputs helper,
sampling and metrics."""

import math
import os

import pytest
import torch

from cachedit.bundled import archs as A
from cachedit.bundled import digits as D

NEW_ARCHS = ("wan", "qwen")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # One intra-op thread: these are tiny batches, and on a shared 2-core machine OpenMP
    # oversubscription made 2 threads up to 10x slower than 1.  Restored afterwards.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def models():
    return {arch: D.load_model(arch) for arch in D.ARCHS}


@pytest.fixture(scope="module")
def model(models):
    return models["flux"]


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


# digit accuracy of generate(model, arange(N) % 10, 28 Euler steps, CFG 3 batched, seed 0), as measured
MEASURED_ACCURACY = {"flux": (40, 1.0), "wan": (10, 1.0), "qwen": (10, 1.0)}
SD3_ACCURACY = 1.0  # the held-out model, 10 images, same call
ZIMAGE_ACCURACY = 1.0  # the second held-out model, same call
LTX_ACCURACY = 1.0  # the third held-out model, same call
HUNYUAN_ACCURACY = 1.0  # the fourth held-out model, same call
HIDREAM_ACCURACY = 1.0  # the fifth held-out model, same call


@pytest.mark.parametrize("arch", D.ARCHS)
def test_generated_digit_accuracy(models, arch):
    n, measured = MEASURED_ACCURACY[arch]
    labels = torch.arange(n) % 10
    imgs = D.generate(models[arch], labels, num_steps=28, guidance_scale=3.0, seed=0)
    assert D.digit_accuracy(imgs, labels) == measured


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


# --------------------------------------------------------------------------------------
# The other layouts and the shared inputs helper
# --------------------------------------------------------------------------------------
def test_archs_and_weights_are_listed():
    assert D.ARCHS == ("flux", "wan", "qwen")
    for arch in D.ARCHS:
        assert os.path.isfile(D.weights_path(arch)) and os.path.isfile(D.config_path(arch))
        assert os.path.getsize(D.weights_path(arch)) < 13_000_000  # fp16, a few MB
    assert D.weights_path() == D.WEIGHTS_PATH and D.config_path() == D.CONFIG_PATH
    assert D.HELDOUT_ARCHS == ("sd3", "zimage", "ltx", "hunyuan", "hidream") and not set(D.HELDOUT_ARCHS) & set(D.ARCHS)
    for arch in D.HELDOUT_ARCHS:
        assert os.path.getsize(D.weights_path(arch)) < 13_000_000 and os.path.isfile(D.config_path(arch))
    with pytest.raises(ValueError, match="unknown bundled arch"):
        D.load_model("mochi")
    with pytest.raises(TypeError):
        D.load_model(torch.float16)  # the first argument is the arch now


@pytest.mark.parametrize("arch, cls, blocks, depth", [("wan", "WanTransformer3DModel", "blocks", 8),
                                                      ("qwen", "QwenImageTransformer2DModel", "transformer_blocks", 6)])
def test_new_archs_load_as_diffusers_models(models, arch, cls, blocks, depth):
    import diffusers

    m = models[arch]
    tr = m.transformer
    assert type(tr) is getattr(diffusers, cls) and m.arch == arch and m.sigma_shift == 1.0
    assert len(getattr(tr, blocks)) == depth
    assert A.get_arch(arch).first_block(tr) is getattr(tr, blocks)[0]
    assert not tr.training and all(not p.requires_grad for p in tr.parameters())
    assert next(tr.parameters()).dtype == torch.float32
    ehs, pooled = m.condition(torch.tensor([0, 9, D.NULL_LABEL]))
    assert ehs.shape == (3, 4, 128) and pooled is None


def test_heldout_sd3_loads_and_is_called_as_the_sd3_pipeline_calls_it():
    """The held-out model: SD3Transformer2DModel (6 joint blocks, the last context-pre-only), fed the
    [B, C, H, W] latents and timestep = sigma * 1000 as StableDiffusion3Pipeline feeds them."""
    import diffusers

    m = D.load_model("sd3")
    tr = m.transformer
    assert type(tr) is diffusers.SD3Transformer2DModel and m.arch == "sd3" and m.sigma_shift == 1.0
    assert len(tr.transformer_blocks) == 6 and tr.transformer_blocks[-1].context_pre_only
    ehs, pooled = m.condition(torch.tensor([0, 9, D.NULL_LABEL]))
    assert ehs.shape == (3, 4, 128) and pooled.shape == (3, 128)
    noise = torch.randn((2, 1, 16, 16), generator=torch.Generator().manual_seed(3))
    lat = A.initial_latents("sd3", 2, seed=3)
    assert torch.equal(lat, noise) and torch.equal(D.latents_to_images(lat, "sd3"), ((noise + 1) * 0.5).clamp(0, 1))
    kw = A.transformer_kwargs("sd3", lat, 0.25, (ehs[:2], pooled[:2]))
    assert sorted(kw) == ["encoder_hidden_states", "hidden_states", "pooled_projections", "return_dict", "timestep"]
    assert torch.equal(kw["timestep"], torch.tensor([250.0, 250.0]))
    labels = torch.arange(10)
    assert D.digit_accuracy(D.generate(m, labels, num_steps=28, guidance_scale=3.0, seed=0), labels) == SD3_ACCURACY


def test_heldout_zimage_loads_and_is_called_as_the_zimage_pipeline_calls_it():
    """The second held-out model: ZImageTransformer2DModel (a noise and a context refiner, then 6
    single-stream layers over caption + image tokens), called as ZImagePipeline calls it: a list of
    [C, 1, H, W] latents, t = 1 - sigma, a list of caption features; its outputs are minus the velocity."""
    import diffusers

    m = D.load_model("zimage")
    tr = m.transformer
    assert type(tr) is diffusers.ZImageTransformer2DModel and m.arch == "zimage" and m.sigma_shift == 1.0
    assert len(tr.layers) == 6 and len(tr.noise_refiner) == len(tr.context_refiner) == 1
    ehs, pooled = m.condition(torch.tensor([0, 9, D.NULL_LABEL]))
    assert ehs.shape == (3, 4, 128) and pooled is None
    lat = A.initial_latents("zimage", 2, seed=3)
    assert lat.shape == (2, 1, 16, 16)
    kw = A.transformer_kwargs("zimage", lat, 0.25, (ehs[:2], None))
    assert sorted(kw) == ["cap_feats", "return_dict", "t", "x"]
    assert [x.shape for x in kw["x"]] == [(1, 1, 16, 16)] * 2 and torch.equal(kw["x"][1][:, 0], lat[1])
    assert torch.equal(kw["t"], torch.tensor([0.75, 0.75])) and torch.equal(kw["cap_feats"][1], ehs[1])
    out = [torch.full((1, 1, 16, 16), 2.0), torch.full((1, 1, 16, 16), -1.0)]
    v = A.velocity("zimage", out)
    assert v.shape == (2, 1, 16, 16) and v[0].eq(-2.0).all() and v[1].eq(1.0).all()
    assert A.velocity("sd3", lat) is lat
    labels = torch.arange(10)
    assert D.digit_accuracy(D.generate(m, labels, num_steps=28, guidance_scale=3.0, seed=0), labels) == ZIMAGE_ACCURACY


def test_heldout_ltx_loads_and_is_called_as_the_ltx_pipeline_calls_it():
    """The third held-out model: LTXVideoTransformer3DModel (6 blocks: self-attention, cross-attention
    to the text, feed-forward; adaLN-single), fed what LTXPipeline feeds it: latents [B, C, F, H, W]
    packed to [B, F*H*W, C] (patch 1), timestep = sigma * 1000, an all-ones text mask, the latent
    grid and the pipeline's RoPE interpolation scale."""
    import diffusers
    from diffusers import LTXPipeline

    m = D.load_model("ltx")
    tr = m.transformer
    assert type(tr) is diffusers.LTXVideoTransformer3DModel and m.arch == "ltx" and m.sigma_shift == 1.0
    assert len(tr.transformer_blocks) == 6
    ehs, pooled = m.condition(torch.tensor([0, 9, D.NULL_LABEL]))
    assert ehs.shape == (3, 4, 128) and pooled is None
    lat = A.initial_latents("ltx", 2, seed=3)
    # the image's 2x2 patches as the 4 channels of a one-frame 8x8 latent, packed as LTXPipeline packs it
    latent_5d = lat.reshape(2, 8, 8, 4).permute(0, 3, 1, 2).unsqueeze(2)
    assert lat.shape == (2, 64, 4) and torch.equal(LTXPipeline._pack_latents(latent_5d, 1, 1), lat)
    kw = A.transformer_kwargs("ltx", lat, 0.25, (ehs[:2], None))
    assert sorted(kw) == ["encoder_attention_mask", "encoder_hidden_states", "height", "hidden_states", "num_frames",
                          "return_dict", "rope_interpolation_scale", "timestep", "width"]
    assert torch.equal(kw["timestep"], torch.tensor([250.0, 250.0])) and kw["encoder_attention_mask"].eq(1).all()
    assert (kw["num_frames"], kw["height"], kw["width"]) == (1, 8, 8) and kw["rope_interpolation_scale"] == (8 / 25, 32.0, 32.0)
    labels = torch.arange(10)
    assert D.digit_accuracy(D.generate(m, labels, num_steps=28, guidance_scale=3.0, seed=0), labels) == LTX_ACCURACY


def test_heldout_hunyuan_loads_and_is_called_as_the_hunyuan_video_pipeline_calls_it():
    """The fourth held-out model: HunyuanVideoTransformer3DModel (a token refiner, 2 double-stream and
    6 single-stream blocks), fed what HunyuanVideoPipeline feeds it: latents [B, C, F, H, W], timestep =
    sigma * 1000, the text with its mask and the pooled projection; no embedded guidance (true CFG)."""
    import diffusers

    m = D.load_model("hunyuan")
    tr = m.transformer
    assert type(tr) is diffusers.HunyuanVideoTransformer3DModel and m.arch == "hunyuan" and m.sigma_shift == 1.0
    assert len(tr.transformer_blocks) == 2 and len(tr.single_transformer_blocks) == 6 and not tr.config.guidance_embeds
    ehs, pooled = m.condition(torch.tensor([0, 9, D.NULL_LABEL]))
    assert ehs.shape == (3, 4, 128) and pooled.shape == (3, 128)
    lat = A.initial_latents("hunyuan", 2, seed=3)
    noise = torch.randn((2, 1, 16, 16), generator=torch.Generator().manual_seed(3))
    assert lat.shape == (2, 1, 1, 16, 16) and torch.equal(lat[:, :, 0], noise)
    kw = A.transformer_kwargs("hunyuan", lat, 0.25, (ehs[:2], pooled[:2]))
    assert sorted(kw) == ["encoder_attention_mask", "encoder_hidden_states", "guidance", "hidden_states",
                          "pooled_projections", "return_dict", "timestep"]
    assert torch.equal(kw["timestep"], torch.tensor([250.0, 250.0])) and kw["encoder_attention_mask"].eq(1).all()
    assert kw["guidance"] is None
    labels = torch.arange(10)
    assert D.digit_accuracy(D.generate(m, labels, num_steps=28, guidance_scale=3.0, seed=0), labels) == HUNYUAN_ACCURACY


def test_heldout_hidream_loads_and_is_called_as_the_hidream_pipeline_calls_it():
    """The fifth held-out model: HiDreamImageTransformer2DModel (2 double-stream and 6 single-stream
    blocks with mixture-of-experts feed-forwards, a different Llama feature appended to each block's
    input), fed what HiDreamImagePipeline feeds it: latents [B, C, H, W], timesteps = sigma * 1000,
    the T5 tokens, the Llama features as [layers, B, T, D], the pooled embedding; the output negated.
    In train mode diffusers returns the tokens' layout, which the velocity puts back into the image's."""
    import diffusers

    m = D.load_model("hidream")
    tr = m.transformer
    assert type(tr) is diffusers.HiDreamImageTransformer2DModel and m.arch == "hidream" and m.sigma_shift == 1.0
    assert len(tr.double_stream_blocks) == 2 and len(tr.single_stream_blocks) == 6
    assert tr.config.num_routed_experts == 4 and tr.config.num_activated_experts == 2
    ehs, pooled = m.condition(torch.tensor([0, 9, D.NULL_LABEL]))
    assert ehs.shape == (3, 4, A.HIDREAM_T5_DIM + 8 * A.HIDREAM_LLAMA_DIM) and pooled.shape == (3, 128)
    lat = A.initial_latents("hidream", 2, seed=3)
    assert torch.equal(lat, torch.randn((2, 1, 16, 16), generator=torch.Generator().manual_seed(3)))
    kw = A.transformer_kwargs("hidream", lat, 0.25, (ehs[:2], pooled[:2]))
    assert sorted(kw) == ["encoder_hidden_states_llama3", "encoder_hidden_states_t5", "hidden_states", "pooled_embeds",
                          "return_dict", "timesteps"]
    assert torch.equal(kw["timesteps"], torch.tensor([250.0, 250.0]))
    assert torch.equal(kw["encoder_hidden_states_t5"], ehs[:2, :, :A.HIDREAM_T5_DIM])
    llama = kw["encoder_hidden_states_llama3"]
    assert llama.shape == (8, 2, 4, A.HIDREAM_LLAMA_DIM)
    assert torch.equal(llama[5, 1, 2], ehs[1, 2, A.HIDREAM_T5_DIM + 5 * A.HIDREAM_LLAMA_DIM:][:A.HIDREAM_LLAMA_DIM])
    with torch.no_grad():
        out = tr(**kw)[0]
        v = A.velocity("hidream", out)
        assert out.shape == (2, 1, 16, 16) and torch.equal(v, -out)
        tr.train()
        try:
            v_train = A.velocity("hidream", tr(**kw)[0])  # [B, C, tokens, p*p] while training
        finally:
            tr.eval()
    assert torch.allclose(v_train, v, atol=1e-5)
    labels = torch.arange(10)
    assert D.digit_accuracy(D.generate(m, labels, num_steps=28, guidance_scale=3.0, seed=0), labels) == HIDREAM_ACCURACY


def test_initial_latents_are_the_pipelines_layouts():
    from diffusers import FluxPipeline, QwenImagePipeline

    noise = torch.randn((3, 1, 16, 16), generator=torch.Generator().manual_seed(5))
    flux = A.initial_latents("flux", 3, seed=5)
    assert torch.equal(flux, FluxPipeline._pack_latents(noise, 3, 1, 16, 16))
    assert torch.equal(A.initial_latents("qwen", 3, seed=5), QwenImagePipeline._pack_latents(noise, 3, 1, 16, 16))
    wan = A.initial_latents("wan", 3, seed=5)
    assert wan.shape == (3, 1, 1, 16, 16) and torch.equal(wan[:, :, 0], noise)  # WanPipeline: [B, C, frames, H, W]
    for arch in D.ARCHS:
        lat = A.initial_latents(arch, 3, seed=5)
        assert torch.equal(D.latents_to_images(lat, arch), ((noise + 1) * 0.5).clamp(0, 1))


def test_transformer_kwargs_are_what_the_pipelines_pass():
    from diffusers import FluxPipeline

    cond = (torch.zeros(2, 4, 160), torch.zeros(2, 160))
    kw = A.transformer_kwargs("flux", A.initial_latents("flux", 2, 0), 0.25, cond)
    assert sorted(kw) == sorted(["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids",
                                 "txt_ids", "return_dict"])
    assert torch.equal(kw["timestep"], torch.tensor([0.25, 0.25])) and kw["return_dict"] is False
    assert torch.equal(kw["img_ids"], FluxPipeline._prepare_latent_image_ids(2, 8, 8, "cpu", torch.float32))
    assert torch.equal(kw["txt_ids"], torch.zeros(4, 3))
    cond = (torch.zeros(2, 4, 128), None)
    kw = A.transformer_kwargs("wan", A.initial_latents("wan", 2, 0), 0.25, cond)
    assert sorted(kw) == ["encoder_hidden_states", "hidden_states", "return_dict", "timestep"]
    assert torch.equal(kw["timestep"], torch.tensor([250.0, 250.0]))  # WanPipeline passes the scheduler's timesteps
    kw = A.transformer_kwargs("qwen", A.initial_latents("qwen", 2, 0), 0.25, cond)
    assert kw["img_shapes"] == [[(1, 8, 8)], [(1, 8, 8)]] and kw["encoder_hidden_states_mask"] is None
    assert torch.equal(kw["timestep"], torch.tensor([0.25, 0.25]))  # QwenImagePipeline passes timestep / 1000
    s = torch.tensor([0.1, 0.9])  # a per-sample tensor (training) is passed through
    assert A.transformer_kwargs("qwen", A.initial_latents("qwen", 2, 0), s, cond)["timestep"] is s


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_new_archs_generate_deterministically(models, arch):
    a = D.generate(models[arch], [0, 1, 2], num_steps=4, seed=7)
    b = D.generate(models[arch], [0, 1, 2], num_steps=4, seed=7)
    c = D.generate(models[arch], [0, 1, 2], num_steps=4, seed=8)
    assert a.shape == (3, 1, 16, 16) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_new_archs_cfg_modes_and_samplers(models, arch):
    m = models[arch]
    shapes = []
    h = m.transformer.register_forward_pre_hook(lambda mod, args, kw: shapes.append(tuple(kw["hidden_states"].shape)),
                                                with_kwargs=True)
    try:
        batched = D.generate(m, [3, 4], num_steps=3, cfg_mode="batched")
        assert len(shapes) == 3 and shapes[0][0] == 4
        shapes.clear()
        separate = D.generate(m, [3, 4], num_steps=3, cfg_mode="separate")
        assert len(shapes) == 6 and shapes[0][0] == 2
        shapes.clear()
        D.generate(m, [3, 4], num_steps=3, cfg_mode="none", sampler="heun")
        assert len(shapes) == 5
    finally:
        h.remove()
    assert (batched - separate).abs().max().item() < 1e-3


@pytest.mark.parametrize("arch", D.ARCHS)
def test_benchmark_inputs_reproduce_generate(models, arch):
    from benchmarks.common import bundled_images, bundled_inputs, euler

    m = models[arch]
    inp = bundled_inputs(m, [1, 5, 9], steps=4)
    assert inp.arch == arch and (inp.pooled is None) == (arch != "flux")
    assert torch.equal(bundled_images(euler(m.transformer, inp), arch), D.generate(m, [1, 5, 9], num_steps=4))


def test_kontext_style_model_does_its_edit():
    """The committed Kontext-style weights (scripts/train_kontext.py) mirror the reference digit:
    every sample mirrored back is classified as the reference's digit, and the diffusers path
    appends the reference tokens after the image tokens with RoPE ids (1, row, col)."""
    from cachedit.bundled import kontext as K
    from cachedit.bundled.metrics import digit_accuracy

    model = K.load_model()
    images, labels = D.digits_dataset()
    pick = torch.arange(8) * 7
    out = K.generate(model, images[pick], labels[pick], seed=0)
    assert digit_accuracy(K.edit_target(out), labels[pick]) == 1.0
    x = torch.zeros(2, 64, 4)
    kwargs = K.transformer_kwargs(x, 0.5, model.condition(labels[:2]), torch.ones(1, 64, 4))
    assert kwargs["hidden_states"].shape == (2, 128, 4) and torch.equal(kwargs["hidden_states"][:, 64:], torch.ones(2, 64, 4))
    assert kwargs["img_ids"][:64, 0].eq(0).all() and kwargs["img_ids"][64:, 0].eq(1).all()
    assert torch.equal(kwargs["img_ids"][64:, 1:], kwargs["img_ids"][:64, 1:])
