"""benchmarks.comfyui_peers on a short run: its block-call counter counts exactly, every row (ours and
ComfyUI's core EasyCache / LazyCache) yields numbers or a recorded error, and building the peers'
models leaves the unpatched model unpatched."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_block_calls_and_rows_on_a_short_run(comfy_harness):
    import torch

    sys.path.insert(0, ROOT)
    from benchmarks import comfyui_peers as P
    from cachedit.bundled import comfyui as bundled_comfy

    patcher, bundled = bundled_comfy.load_patcher("flux")
    dm = patcher.model.diffusion_model
    blocks = sum(len(b) for b in P._block_lists(dm))
    assert blocks == len(dm.double_blocks) + len(dm.single_blocks) > 0
    counter = P.BlockCalls(dm)
    bundled_comfy.generate(patcher, bundled, torch.tensor([3]), steps=5)
    assert counter.count == 5 * blocks  # one batched (cond, uncond) call per Euler step
    counter.remove()
    bundled_comfy.generate(patcher, bundled, torch.tensor([3]), steps=5)
    assert counter.count == 5 * blocks  # removed: counts no more

    rows = P.run("flux", batch=1, seeds=1, repeats=1, steps=12, log=lambda s: None)
    names = [r["name"] for r in rows]
    assert names[0] == "CacheDit Accelerate (default)" and len(names) == 1 + 2 * len(P.THRESHOLDS)
    assert {n.split()[0] for n in names[1:]} == {"EasyCache", "LazyCache"}
    for r in rows:
        if r["error"] is None:
            assert 0 < r["calls"] <= 1 and r["speedup"] > 0 and r["psnr_min"] <= r["psnr"], r
    ours = rows[0]
    assert ours["error"] is None and ours["calls"] < 1  # the default reuses steps at 12 steps
    assert "easycache" not in patcher.model_options.get("transformer_options", {})
    assert not patcher.wrappers  # the nodes cloned it
    assert "| flux | 1 | CacheDit Accelerate (default) |" in P.table({("flux", 1): rows}, 1, 1)


def test_block_calls_count_only_computed_blocks_of_an_object_patched_model(comfy_harness):
    """HiDream's blocks are object-patched (no block replace patches): a reused block is still called,
    its insides are not. The counter counts the blocks that computed, over the adapter's block lists
    only (not HiDream's list of caption projections)."""
    import torch

    import cachedit

    sys.path.insert(0, ROOT)
    from benchmarks import comfyui_peers as P
    from cachedit.bundled import comfyui as bundled_comfy

    patcher, bundled = bundled_comfy.load_patcher("hidream")
    dm = patcher.model.diffusion_model
    blocks = sum(len(b) for b in P._block_lists(dm))
    assert blocks == len(dm.double_stream_blocks) + len(dm.single_stream_blocks) == 8
    counter = P.BlockCalls(dm)
    bundled_comfy.generate(patcher, bundled, torch.tensor([3]), steps=6)
    assert counter.count == 6 * blocks
    counter.count = 0
    model = cachedit.enable_cache(patcher, strategy="fixed", skip_interval=2, warmup_steps=1, Fn_compute_blocks=1,
                                  Bn_compute_blocks=0)
    bundled_comfy.generate(model, bundled, torch.tensor([3]), steps=6)
    reused = len(cachedit.summary(model, logging=False)[0].cached_steps)
    cachedit.disable_cache(model)
    counter.remove()
    assert reused > 0 and counter.count == (6 - reused) * blocks + reused * 1  # a reused step runs its first block
