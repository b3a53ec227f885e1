"""The bundled Wan and Qwen-Image digits models (cachedit/bundled) in ComfyUI's own model classes
(comfy.ldm.wan WanModel, comfy.ldm.qwen_image QwenImageTransformer2DModel) sample the same
images as the diffusers models: 28 euler steps, CFG 3, batch 8."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("arch, comfy_class", [("wan", "WanModel"), ("qwen", "QwenImageTransformer2DModel"),
                                               ("hidream", "HiDreamImageTransformer2DModel")])
def test_comfyui_model_matches_diffusers(comfy_harness, arch, comfy_class):
    import torch

    from cachedit.bundled import comfyui as bundled_comfy
    from cachedit.bundled import digits as D

    patcher, bundled = bundled_comfy.load_patcher(arch)
    assert type(patcher.model.diffusion_model).__name__ == comfy_class
    assert bundled.arch == arch
    labels = torch.arange(8) % 10
    comfy_images = bundled_comfy.generate(patcher, bundled, labels, steps=28, cfg=3.0, seed=0)
    diffusers_images = D.generate(bundled, labels, num_steps=28, guidance_scale=3.0, seed=0)
    assert comfy_images.shape == diffusers_images.shape == (8, 1, 16, 16)
    assert D.psnr(comfy_images, diffusers_images) > 50.0  # the same network, the same sampler


def test_wan_key_map_covers_every_weight(comfy_harness):
    from safetensors.torch import load_file

    from cachedit.bundled import comfyui as bundled_comfy
    from cachedit.bundled import digits as D

    patcher, _ = bundled_comfy.load_patcher("wan")
    comfy_keys = set(patcher.model.diffusion_model.state_dict())
    key_map = bundled_comfy.wan_key_map(comfy_keys)
    diffusers_keys = {k[len("transformer."):] for k in load_file(D.weights_path("wan")) if k.startswith("transformer.")}
    assert set(key_map) == diffusers_keys and set(key_map.values()) == comfy_keys
    assert key_map["blocks.0.attn1.to_q.weight"] == "blocks.0.self_attn.q.weight"
    assert key_map["blocks.0.norm2.weight"] == "blocks.0.norm3.weight"  # diffusers swapped Wan's norm2/norm3


def test_default_holds_on_the_heldout_hidream_in_comfyui(comfy_harness):
    """The held-out HiDream model in ComfyUI's own HiDream class (diffusers' parameter names, the T5 text
    and per-block Llama features as ComfyUI's conditioning carries them): CacheDit Accelerate's default
    with ComfyUI's heun (named, so error feedback takes the higher-order budget) reuses and keeps the
    image (43.2 dB pooled over seeds 0-2; seed 0 alone here)."""
    import torch

    import cachedit
    from cachedit.adapters.comfyui.handle import handle_of
    from cachedit.bundled import comfyui as bundled_comfy
    from cachedit.bundled import digits as D

    patcher, bundled = bundled_comfy.load_patcher("hidream")
    labels = torch.arange(8) % 10
    reference = bundled_comfy.generate(patcher, bundled, labels, sampler="heun", seed=0)
    model = cachedit.enable_cache(patcher)
    images = bundled_comfy.generate(model, bundled, labels, sampler="heun", seed=0)
    stats = cachedit.summary(model, logging=False)[0]
    engine = handle_of(model).engine
    assert engine.feedback.sampler == "heun" and engine.feedback.sampler_scale() == pytest.approx(0.8)
    cachedit.disable_cache(model)
    assert len(stats.cached_steps) >= 8
    assert D.psnr(images, reference) >= 40.0
    assert D.digit_accuracy(images, labels) == D.digit_accuracy(reference, labels) == 1.0
