"""Blocks that carry more streams than image and text tokens: LTX-2's blocks take and return
video and audio tokens, `(hidden_states, audio_hidden_states)`. Each extra stream is cached with a
residual of its own; an output the cache cannot rebuild from the block's arguments is never reused."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import cachedit
from cachedit import DBCacheConfig

DIM, AUDIO_DIM = 16, 8
ALWAYS_REUSE = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=1e6, max_warmup_steps=2)


class AudioVideoBlock(nn.Module):
    """Adds a fixed residual to each stream (so a reused residual is exact), after attention to the text."""

    def __init__(self, extra_output: bool = False) -> None:
        super().__init__()
        self.attn = nn.Linear(DIM, DIM)
        self.video = nn.Parameter(torch.randn(DIM) * 0.1)
        self.audio = nn.Parameter(torch.randn(AUDIO_DIM) * 0.1)
        self.extra_output = extra_output

    def forward(self, hidden_states, audio_hidden_states, encoder_hidden_states, temb):
        video = hidden_states + self.video
        audio = audio_hidden_states + self.audio
        if self.extra_output:  # something shaped like no argument: the cache cannot rebuild it
            return video, audio, video.mean(dim=1)
        return video, audio


class AudioVideoDiT(nn.Module):
    def __init__(self, extra_output: bool = False, num_blocks: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.transformer_blocks = nn.ModuleList([AudioVideoBlock(extra_output) for _ in range(num_blocks)])

    def forward(self, hidden_states, audio_hidden_states, encoder_hidden_states, timestep):
        temb = timestep.reshape(-1, 1, 1).float() / 1000
        h, a = hidden_states, audio_hidden_states
        for block in self.transformer_blocks:
            h, a, *_ = block(hidden_states=h, audio_hidden_states=a, encoder_hidden_states=encoder_hidden_states, temb=temb)
        return h * (1 + temb), a * (1 + temb)


def sample(model, steps: int = 10):
    g = torch.Generator().manual_seed(0)
    x, a = torch.randn(2, 12, DIM, generator=g), torch.randn(2, 5, AUDIO_DIM, generator=g)
    e = torch.randn(2, 4, DIM, generator=g)  # text: no output has its shape
    ts = torch.linspace(1000, 0, steps + 1)
    with torch.no_grad():
        for i in range(steps):
            v, va = model(x, a, e, ts[i].expand(2))
            x = x + (ts[i + 1] - ts[i]) / 1000 * v
            a = a + (ts[i + 1] - ts[i]) / 1000 * va
    return x, a


def test_an_extra_stream_is_reused_with_its_own_residual():
    model = AudioVideoDiT()
    ref_video, ref_audio = sample(model)
    cachedit.enable_cache(model, cache_config=DBCacheConfig(**ALWAYS_REUSE))
    video, audio = sample(model)
    stats = cachedit.summary(model, logging=False)[0]
    cachedit.disable_cache(model)
    assert stats.cached_steps == [2, 3, 4, 5, 6, 7, 8, 9]  # every step after warmup (no pipeline: the end is unknown)
    # each block adds a constant: the reused residual of either stream is exactly what the blocks add
    torch.testing.assert_close(video, ref_video, rtol=0, atol=1e-5)
    torch.testing.assert_close(audio, ref_audio, rtol=0, atol=1e-5)


def test_an_output_no_argument_matches_is_never_reused(caplog):
    model = AudioVideoDiT(extra_output=True)
    ref_video, ref_audio = sample(model)
    with caplog.at_level(logging.WARNING, logger="cachedit"):
        cachedit.enable_cache(model, cache_config=DBCacheConfig(**ALWAYS_REUSE))
        video, audio = sample(model)
    stats = cachedit.summary(model, logging=False)[0]
    cachedit.disable_cache(model)
    assert stats.cached_steps == []
    assert torch.equal(video, ref_video) and torch.equal(audio, ref_audio)
    warnings = [r.getMessage() for r in caplog.records if "cannot rebuild" in r.getMessage()]
    assert warnings == ["cachedit: AudioVideoBlock returns 3 outputs and CacheDit "
                        "cannot rebuild output 2 (shape (2, 16)) from its arguments; every step is computed"]


def test_ltx2_video_transformer_runs_cached():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.LTX2VideoTransformer3DModel(  # diffusers' own test config, three layers
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=3, qk_norm="rms_norm_across_heads",
        caption_channels=16, rope_double_precision=False).eval()
    g = torch.Generator().manual_seed(0)
    video = torch.randn(1, 2 * 4 * 4, 4, generator=g)
    audio = torch.randn(1, 9, 4, generator=g)
    kwargs = dict(encoder_hidden_states=torch.randn(1, 16, 16, generator=g),
                  audio_encoder_hidden_states=torch.randn(1, 16, 16, generator=g),
                  encoder_attention_mask=torch.ones(1, 16, dtype=torch.bool), num_frames=2, height=4, width=4,
                  audio_num_frames=9, fps=25.0, return_dict=False)

    def run():
        x, a, outs = video, audio, []
        for t in torch.linspace(1000, 100, 8):
            with torch.no_grad():
                v, va = model(hidden_states=x, audio_hidden_states=a, timestep=t.expand(1), **kwargs)
            outs.append((v, va))
            x, a = x - 0.1 * v, a - 0.1 * va
        return outs

    ref = run()
    cachedit.enable_cache(model, cache_config=DBCacheConfig(**ALWAYS_REUSE))
    cached = run()
    stats = cachedit.summary(model, logging=False)[0]
    cachedit.disable_cache(model)
    assert stats.cached_steps == [2, 3, 4, 5, 6, 7]
    for (v, va), (rv, rva) in zip(cached[:2], ref[:2]):  # warmup: computed, identical
        assert torch.equal(v, rv) and torch.equal(va, rva)
    for v, va in cached[2:]:
        assert v.shape == (1, 32, 4) and va.shape == (1, 9, 4) and torch.isfinite(v).all() and torch.isfinite(va).all()
