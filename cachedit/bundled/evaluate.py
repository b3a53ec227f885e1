"""Evaluate a bundled digits model: accuracy per sampler / CFG mode, speed, and how its first
block's residual changes from step to step (what a first-block cache measures).

Used by ``scripts/train_bundled.py`` (after training and with ``--eval-only``).
"""

from __future__ import annotations

import time
from typing import List, Optional, Sequence

import torch

from . import archs as A
from . import digits as D

__all__ = ["evaluate", "residual_change_profile"]


def residual_change_profile(model: D.DigitsModel, labels: Sequence[int], num_steps: int = 28,
                            shift: Optional[float] = None) -> List[float]:
    """Per-step relative L1 change of the first block's hidden-state residual.

    R_t = block0 output hidden_states - block0 input hidden_states at step t (28-step Euler,
    batched CFG 3.0); returns [mean|R_t - R_{t-1}| / mean|R_{t-1}| for t = 1..num_steps-1].
    """
    residuals = []

    def hook(module, args, kwargs, output):
        inp = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        # a tuple holds the text stream too, in either order (FLUX: (encoder, hidden); HunyuanVideo: (hidden, encoder))
        out = next(o for o in output if o.shape == inp.shape) if isinstance(output, tuple) else output
        residuals.append((out - inp).detach().float().cpu())

    h = A.get_arch(model.arch).first_block(model.transformer).register_forward_hook(hook, with_kwargs=True)
    try:
        D.generate(model, labels, num_steps=num_steps, guidance_scale=3.0, seed=0, sigma_shift=shift)
    finally:
        h.remove()
    return [
        float((residuals[t] - residuals[t - 1]).abs().mean() / residuals[t - 1].abs().mean())
        for t in range(1, len(residuals))
    ]


def evaluate(model: D.DigitsModel, n_images: int, shift: Optional[float] = None, grid_path: Optional[str] = None) -> None:
    """Print accuracies (28 steps, CFG 3) on ``n_images`` images, a timing and the residual profile."""
    labels = torch.arange(n_images) % D.NUM_CLASSES
    rows = []
    for sampler, cfg_mode in (("euler", "batched"), ("euler", "separate"), ("heun", "batched"), ("euler", "none")):
        t0 = time.time()
        imgs = D.generate(
            model, labels, num_steps=28, guidance_scale=3.0, seed=0, cfg_mode=cfg_mode, sampler=sampler, sigma_shift=shift
        )
        acc = D.digit_accuracy(imgs, labels)
        rows.append((f"{sampler}/{cfg_mode}", imgs[:20]))
        print(f"eval {sampler}/{cfg_mode}: accuracy {acc:.3f} on {n_images} images ({time.time() - t0:.1f}s)", flush=True)
    x, y = D.digits_dataset()
    print(f"eval real digits: accuracy {D.digit_accuracy(x, y):.3f} (classifier fitted on them)", flush=True)
    times = []
    for _ in range(3):
        t0 = time.time()
        D.generate(model, list(range(8)), num_steps=28, guidance_scale=3.0, seed=0, sigma_shift=shift)
        times.append(time.time() - t0)
    print(f"time of one 28-step batched-CFG generation of 8 images: {min(times):.3f}s (best of 3)", flush=True)
    diffs = residual_change_profile(model, list(range(8)), shift=shift)
    print("block0 residual relative L1 change per step: " + ", ".join(f"{d:.3f}" for d in diffs), flush=True)
    if grid_path:
        D.save_grid(rows, grid_path)
        print(f"wrote {grid_path}", flush=True)
