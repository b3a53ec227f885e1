"""Architectures beyond the harness table, and what CacheDit says about a model.

Cosmos 1 (`GeneralDIT`: blocks in an nn.ModuleDict, tokens in T H W B D order, the per-block
position embedding added *in place* between blocks) and Cosmos Predict2 (`MiniTrainDIT`: blocks
take `x_B_T_H_W_D`) are cached at block level: a reused step's segment output is exactly its input
plus the residual of the last computed step. LTX-2 (`LTXAVModel`, not in the pinned ComfyUI)
stays at step level with its reason; every step-level model says why at INFO. Warnings: another
cache already on the model (EasyCache, LazyCache, a TeaCache-style `forward_orig` patch) and a
warmup that covers the whole run. Tiny models built in code, no weights.
"""

from __future__ import annotations

import logging

import pytest

COSMOS = {
    "cosmos1": ("CosmosT2V", dict(
        image_model="cosmos", in_channels=16, out_channels=16, max_img_h=64, max_img_w=64, max_frames=8,
        patch_spatial=2, patch_temporal=1, model_channels=64, num_blocks=4, num_heads=2, crossattn_emb_channels=32,
        block_config="FA-CA-MLP", concat_padding_mask=True, pos_emb_cls="rope3d", pos_emb_learnable=False,
        pos_emb_interpolation="crop", block_x_format="THWBD", affline_emb_norm=True, use_adaln_lora=True,
        adaln_lora_dim=16, extra_per_block_abs_pos_emb=True, extra_per_block_abs_pos_emb_type="learnable")),
    "cosmos_predict2": ("CosmosT2IPredict2", dict(
        image_model="cosmos_predict2", in_channels=16, out_channels=16, max_img_h=64, max_img_w=64, max_frames=8,
        patch_spatial=2, patch_temporal=1, model_channels=64, num_blocks=4, num_heads=2, crossattn_emb_channels=32,
        concat_padding_mask=True, pos_emb_cls="rope3d", pos_emb_learnable=True, pos_emb_interpolation="crop",
        use_adaln_lora=True, adaln_lora_dim=16)),
}
FIXED = dict(strategy="fixed", skip_interval=2, warmup_steps=1, Fn_compute_blocks=1, Bn_compute_blocks=0)


def build_cosmos(harness, arch: str, seed: int = 0):
    """A tiny seeded Cosmos ModelPatcher, built the way ComfyUI loads one (supported_models config)."""
    import torch
    import comfy.model_patcher
    import comfy.supported_models

    config_cls, unet_config = COSMOS[arch]
    config = getattr(comfy.supported_models, config_cls)(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "", device=torch.device("cpu"))
    harness._init_weights_(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def cosmos_inputs(batch: int = 1):
    """(latent, positive, negative) for the tiny Cosmos models (T5 width 32, 2 latent frames of 8x8)."""
    import torch

    g = torch.Generator().manual_seed(7)
    cond = [[torch.randn(batch, 8, 32, generator=g), {}]]
    uncond = [[torch.randn(batch, 8, 32, generator=g), {}]]
    return {"samples": torch.zeros(batch, 16, 2, 8, 8)}, cond, uncond


@pytest.mark.parametrize("arch", sorted(COSMOS))
def test_cosmos_block_level_reuse_is_input_plus_residual(comfy_harness, arch):
    import torch

    import cachedit
    from cachedit.adapters import comfyui

    m = build_cosmos(comfy_harness, arch)
    layout = comfyui.layout_of(m.model.diffusion_model)
    assert layout.mode == "object" and layout.lists == (("blocks", None),), layout
    latent, pos, neg = cosmos_inputs()
    ref = comfy_harness.sample(m, steps=6, cfg=2.0, latent=latent, positive=pos, negative=neg)

    blocks = list(m.model.diffusion_model.blocks.values() if arch == "cosmos1" else m.model.diffusion_model.blocks)
    seg_in, seg_out = [], []  # per call: block 1's input (the segment's), the last block's output
    hooks = [blocks[1].register_forward_pre_hook(lambda mod, args: seg_in.append(args[0].clone())),
             blocks[-1].register_forward_hook(lambda mod, args, out: seg_out.append(out.clone()))]
    try:
        cached = cachedit.enable_cache(m, **FIXED)
        out = comfy_harness.sample(cached, steps=6, cfg=2.0, latent=latent, positive=pos, negative=neg)
    finally:
        for h in hooks:
            h.remove()
    stats = cachedit.summary(cached, logging=False)[0]
    assert stats.level == "block" and stats.cached_steps == [2, 4], stats
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    for step in stats.cached_steps:  # one call per step (CFG batched)
        expected = seg_in[step] + (seg_out[step - 1] - seg_in[step - 1])
        torch.testing.assert_close(seg_out[step], expected, rtol=1e-5, atol=1e-5)
    never = cachedit.enable_cache(m, residual_diff_threshold=0.0, Fn_compute_blocks=1)
    assert torch.equal(comfy_harness.sample(never, steps=6, cfg=2.0, latent=latent, positive=pos, negative=neg), ref)


def _ltxav_class():
    from comfy.ldm.lightricks.model import LTXVModel

    # LTX-2's class as a newer ComfyUI defines it (comfy/ldm/lightricks/av_model.py), by name and base only
    return type("LTXAVModel", (LTXVModel,), {"__module__": "comfy.ldm.lightricks.av_model"})


def test_ltx2_av_model_stays_at_step_level_and_says_why(comfy_harness, caplog):
    import torch

    import cachedit
    from cachedit.adapters import comfyui

    m = comfy_harness.build_model("ltxv")
    latent = comfy_harness.empty_latent("ltxv")
    pos, neg = comfy_harness.make_conditioning("ltxv")
    ref = comfy_harness.sample(m, steps=4, cfg=2.0, latent=latent, positive=pos, negative=neg)
    m.model.diffusion_model.__class__ = _ltxav_class()  # same forward: only the class identity changes
    layout = comfyui.layout_of(m.model.diffusion_model)
    assert layout.mode == "step" and "img=(video, audio)" in layout.reason
    with caplog.at_level(logging.INFO, logger="cachedit"):
        never = cachedit.enable_cache(m, residual_diff_threshold=0.0)
    lines = [r for r in caplog.records if "step level" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and "LTX-2" in lines[0].getMessage()
    assert torch.equal(comfy_harness.sample(never, steps=4, cfg=2.0, latent=latent, positive=pos, negative=neg), ref)
    cached = cachedit.enable_cache(m, strategy="fixed", skip_interval=2, warmup_steps=1)
    out = comfy_harness.sample(cached, steps=6, cfg=2.0, latent=latent, positive=pos, negative=neg)
    assert torch.isfinite(out).all() and cachedit.summary(cached, logging=False)[0].cached_steps


def test_step_level_models_say_why_at_info(comfy_harness, caplog):
    import torch

    import cachedit
    from cachedit.adapters import comfyui

    with caplog.at_level(logging.INFO, logger="cachedit"):
        cachedit.enable_cache(comfy_harness.build_model("sdxl"))
    lines = [r for r in caplog.records if "step level" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and "UNet" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    class NoLists(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, 2)

    class OddBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.Linear(2, 2)

        def forward(self, tokens_in, t):
            return tokens_in

    class OddDiT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([OddBlock(), OddBlock()])

    reasons = {type(dm).__name__: comfyui.layout_of(dm) for dm in (NoLists(), OddDiT())}
    assert all(layout.mode == "step" and layout.reason for layout in reasons.values()), reasons
    assert "'tokens_in'" in reasons["OddDiT"].reason


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "another cache" in r.getMessage()]


def test_warns_once_when_another_cache_is_on_the_model(comfy_harness, caplog):
    import comfy_extras.nodes_easycache as easycache

    import cachedit
    from cachedit.adapters.comfyui import notices

    notices._warned.clear()
    m = comfy_harness.build_model("flux")
    with caplog.at_level(logging.WARNING, logger="cachedit"):
        cachedit.enable_cache(m)
        assert not _warnings(caplog)
        (easy,) = easycache.EasyCacheNode.execute(m, 0.2, 0.15, 0.95, False).args
        cachedit.enable_cache(easy)
        cachedit.enable_cache(easy)  # said once
        (lazy,) = easycache.LazyCacheNode.execute(m, 0.2, 0.15, 0.95, False).args
        cachedit.enable_cache(lazy)
    found = _warnings(caplog)
    assert len(found) == 2 and "'easycache'" in found[0] and "'lazycache'" in found[1], found

    def teacache_forward_orig(self, *args, **kwargs):  # what TeaCache-style packs put on the class
        raise AssertionError("never called")

    teacache_forward_orig.__module__ = "custom_nodes.ComfyUI-TeaCache.nodes"
    dm_cls = type(m.model.diffusion_model)
    original = dm_cls.forward_orig
    dm_cls.forward_orig = teacache_forward_orig
    try:
        assert any("forward_orig replaced" in f for f in notices.other_caches(m))
    finally:
        dm_cls.forward_orig = original
    patched = m.clone()
    patched.add_object_patch("diffusion_model.forward_orig", teacache_forward_orig.__get__(m.model.diffusion_model))
    assert any("object patch diffusion_model.forward_orig" in f for f in notices.other_caches(patched))
    assert notices.other_caches(cachedit.enable_cache(m)) == []  # our own hooks are never "another cache"


def test_warns_once_when_warmup_covers_the_run(comfy_harness, caplog):
    import cachedit

    m = comfy_harness.build_model("flux")
    latent = comfy_harness.empty_latent("flux")
    pos, neg = comfy_harness.make_conditioning("flux")
    cached = cachedit.enable_cache(m)  # the default's warmup: 2 steps
    with caplog.at_level(logging.WARNING, logger="cachedit"):
        for _ in range(2):  # a 3-step distilled run: the step after warmup is the last one
            comfy_harness.sample(cached, steps=3, cfg=2.0, latent=latent, positive=pos, negative=neg)
    found = [r.getMessage() for r in caplog.records if "covered the run" in r.getMessage()]
    assert len(found) == 1 and "warmup (2 steps)" in found[0] and "(3 steps" in found[0], found
    caplog.clear()
    short = cachedit.enable_cache(m, warmup_steps=1)
    with caplog.at_level(logging.WARNING, logger="cachedit"):
        comfy_harness.sample(short, steps=3, cfg=2.0, latent=latent, positive=pos, negative=neg)
    assert not [r for r in caplog.records if "covered the run" in r.getMessage()]
