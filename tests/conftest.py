"""Shared fixtures: a tiny random FLUX-architecture transformer and a flow-matching Euler loop.

Random weights are fine for mechanics (which blocks run, what is reused, bit-identity); quality
tests use the bundled trained model instead (cachedit.bundled)."""

from __future__ import annotations

import gc
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cachedit  # noqa: E402

torch.set_num_threads(1)  # tiny models: threads only add contention


def make_tiny_flux(seed: int = 0, num_layers: int = 2, num_single_layers: int = 4):
    """A small diffusers FluxTransformer2DModel (6 blocks by default), eval mode."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=(4, 6, 6),
    ).eval()


def flux_inputs(batch: int, tokens: int = 16, seed: int = 0):
    """Latents, text tokens, pooled vector and ids for `make_tiny_flux`."""
    g = torch.Generator().manual_seed(seed)
    side = int(tokens ** 0.5)
    x = torch.randn(batch, tokens, 4, generator=g)
    enc = torch.randn(batch, 3, 32, generator=g)
    pooled = torch.randn(batch, 32, generator=g)
    img_ids = torch.zeros(tokens, 3)
    img_ids[:, 1] = torch.arange(tokens) // side
    img_ids[:, 2] = torch.arange(tokens) % side
    return x, enc, pooled, img_ids, torch.zeros(3, 3)


def sample(model, steps: int = 8, batch: int = 2, tokens: int = 16, cfg: str = "none", seed: int = 0, heun=False):
    """Euler (or Heun) flow-matching loop calling `model` like a diffusers pipeline.

    cfg: "none" (one call per step), "batched" (cond+uncond in one call), "separate" (two calls)."""
    x, enc, pooled, img_ids, txt_ids = flux_inputs(batch, tokens, seed)
    uncond = torch.zeros_like(enc)
    sigmas = torch.linspace(1.0, 0.0, steps + 1)

    def velocity(x, s):
        def call(h, e, p):
            return model(hidden_states=h, encoder_hidden_states=e, pooled_projections=p, timestep=s.expand(h.shape[0]),
                         img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
        if cfg == "none":
            return call(x, enc, pooled)
        if cfg == "batched":
            v = call(torch.cat([x, x]), torch.cat([enc, uncond]), torch.cat([pooled, pooled]))
            vc, vu = v.chunk(2)
        else:
            vc, vu = call(x, enc, pooled), call(x, uncond, pooled)
        return vu + 2.0 * (vc - vu)

    with torch.no_grad():
        for i in range(steps):
            s, s_next = sigmas[i], sigmas[i + 1]
            v = velocity(x, s)
            if heun and s_next > 0:
                x_pred = x + (s_next - s) * v
                v = 0.5 * (v + velocity(x_pred, s_next))
            x = x + (s_next - s) * v
    return x


class BlockCounter:
    """Counts real executions of each block (its attention module runs only when computed)."""

    def __init__(self, model):
        self.counts = {}
        self.handles = []
        blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
        for i, block in enumerate(blocks):
            self.counts[i] = 0
            self.handles.append(block.attn.register_forward_pre_hook(self._hook(i)))

    def _hook(self, i):
        def hook(module, args):
            self.counts[i] += 1
        return hook

    def total(self):
        return sum(self.counts.values())

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.fixture
def tiny_flux():
    model = make_tiny_flux()
    yield model
    cachedit.disable_cache(model)


@pytest.fixture(autouse=True)
def _clean_global_state():
    yield
    cachedit.set_global_config(default_skip_interval=2, default_strategy="adaptive", default_noise_scale=0.0,
                               global_debug=False)
    cachedit.get_manager().global_config.default_warmup_steps = None
    for entry in cachedit.get_manager().entries():
        model = entry.ref()
        if model is not None:
            cachedit.get_manager().release(model)
    gc.collect()
