"""The ComfyUI quality benchmarks on short runs: comfyui_schedules with two samplers (a deterministic
one reuses steps, an ancestral one computes every step: its images are the uncached ones, PSNR
inf) and comfyui_img2img's rows."""

from __future__ import annotations

import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_rows_per_sampler(comfy_harness):
    sys.path.insert(0, ROOT)
    from benchmarks import comfyui_schedules as S

    rows = S.run("flux", ["linear"], seeds=1, steps=12, samplers=("euler", "euler_ancestral"))
    assert [r[:3] for r in rows] == [("flux", "linear", "euler"), ("flux", "linear", "euler_ancestral")]
    (_, _, _, euler_psnr, euler_worst, euler_computed), (_, _, _, ancestral_psnr, _, ancestral_computed) = rows
    assert math.isfinite(euler_psnr) and euler_worst == euler_psnr and euler_computed[0] < 12
    assert ancestral_psnr == math.inf and ancestral_computed == [12]
    from benchmarks.common import psnr_of_mse

    assert psnr_of_mse(0.0) == math.inf and psnr_of_mse(1e-4) == 40.0


def test_img2img_rows(comfy_harness):
    """benchmarks.comfyui_img2img: one row per (steps, denoise), the run covering the last part of
    the schedule (denoise 1 starts at sigma_max, 0.5 part way down), PSNR finite, steps counted."""
    sys.path.insert(0, ROOT)
    from benchmarks import comfyui_img2img as I

    rows = I.run("flux", seeds=1, cases=((12, 1.0), (12, 0.5)))
    assert [r[:3] for r in rows] == [("flux", 12, 1.0), ("flux", 12, 0.5)]
    for _, steps, _, pooled, worst, computed in rows:
        assert math.isfinite(pooled) and worst == pooled and 0 < computed[0] <= steps
