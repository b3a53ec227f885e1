"""End to end on the trained bundled model (cachedit/bundled: a diffusers FluxTransformer2DModel
on 16x16 digits) converted to ComfyUI's own Flux: 28 euler steps, CFG 3, batch 8, with and
without CacheDit Accelerate's defaults."""

from __future__ import annotations

import os

import pytest

BUNDLED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "cachedit",
                       "bundled")


@pytest.fixture(scope="module")
def digits_in_comfy(comfy_harness):
    """(ModelPatcher of ComfyUI's Flux with the bundled weights, digits module, bundled diffusers model)."""
    import torch

    if not os.path.isfile(os.path.join(BUNDLED, "digits_flux.safetensors")):
        pytest.skip("cachedit/bundled/digits_flux.safetensors is not there yet (scripts/train_bundled.py makes it)")
    import comfy.model_detection
    import comfy.model_patcher
    import comfy.supported_models
    from safetensors.torch import load_file
    from cachedit.bundled import digits as D

    cfg = D.load_config()["transformer"]
    sd = load_file(D.WEIGHTS_PATH)
    transformer_sd = {k[len("transformer."):]: v.float() for k, v in sd.items() if k.startswith("transformer.")}
    comfy_sd = comfy.model_detection.convert_diffusers_mmdit(transformer_sd, "")  # ComfyUI's diffusers->Flux map
    # diffusers packs 2x2 patches of a 1-channel image into 4 channels; ComfyUI's Flux patchifies itself
    unet_config = dict(image_model="flux", in_channels=cfg["in_channels"] // 4, out_channels=cfg["out_channels"] // 4,
                       patch_size=2, vec_in_dim=cfg["pooled_projection_dim"], context_in_dim=cfg["joint_attention_dim"],
                       hidden_size=cfg["num_attention_heads"] * cfg["attention_head_dim"], mlp_ratio=4.0,
                       num_heads=cfg["num_attention_heads"], depth=cfg["num_layers"],
                       depth_single_blocks=cfg["num_single_layers"], axes_dim=list(cfg["axes_dims_rope"]), theta=10000,
                       qkv_bias=True, guidance_embed=bool(cfg.get("guidance_embeds", False)))
    config = comfy.supported_models.Flux(unet_config)
    config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    model = config.get_model({}, "", device=cpu)
    missing, unexpected = model.diffusion_model.load_state_dict(comfy_sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu), D, D.load_model()


def _generate(patcher, D, bundled, labels, steps=28, cfg=3.0, seed=0):
    """Sample like SamplerCustom with the bundled schedule; images [B, 1, 16, 16] in [0, 1]."""
    import torch
    import comfy.sample
    import comfy.samplers

    with torch.no_grad():
        cond = bundled.condition(labels)
        uncond = bundled.condition(torch.full_like(labels, D.NULL_LABEL))
    positive = [[cond[0], {"pooled_output": cond[1]}]]
    negative = [[uncond[0], {"pooled_output": uncond[1]}]]
    noise = torch.randn((labels.shape[0], 1, 16, 16), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        out = comfy.sample.sample_custom(patcher, noise, cfg, comfy.samplers.sampler_object("euler"),
                                         D.sigmas_schedule(steps), positive, negative, torch.zeros_like(noise),
                                         disable_pbar=True, seed=seed)
    latent = patcher.model.latent_format.process_in(out)  # undo ComfyUI's latent scaling
    return ((latent + 1.0) * 0.5).clamp(0.0, 1.0)


def test_comfyui_flux_matches_diffusers(digits_in_comfy):
    import torch

    patcher, D, bundled = digits_in_comfy
    labels = torch.arange(8) % 10
    comfy_images = _generate(patcher, D, bundled, labels)
    diffusers_images = D.generate(bundled, labels, num_steps=28, guidance_scale=3.0, seed=0)
    assert D.psnr(comfy_images, diffusers_images) > 60.0  # the same network, the same sampler


def test_accelerate_defaults_quality(digits_in_comfy):
    import time

    import torch
    import cachedit

    patcher, D, bundled = digits_in_comfy
    labels = torch.arange(8) % 10
    t0 = time.perf_counter()
    reference = _generate(patcher, D, bundled, labels)
    t1 = time.perf_counter()
    accelerated = cachedit.enable_cache(patcher)  # exactly what CacheDit Accelerate does
    images = _generate(accelerated, D, bundled, labels)
    t2 = time.perf_counter()
    stats = cachedit.summary(accelerated, logging=False)[0]
    psnr = D.psnr(images, reference)
    print(f"\nbundled digits in ComfyUI, 28 euler steps, CFG 3, batch 8: PSNR {psnr:.1f} dB, reused steps "
          f"{stats.cached_steps} ({len(stats.cached_steps)}/28), accuracy {D.digit_accuracy(images, labels):.3f} "
          f"(uncached {D.digit_accuracy(reference, labels):.3f}), time {t2 - t1:.2f}s vs {t1 - t0:.2f}s uncached")
    assert len(stats.cached_steps) >= 8
    assert psnr > 30.0
    assert D.digit_accuracy(images, labels) >= D.digit_accuracy(reference, labels) - 0.125
