"""benchmarks.comfyui_schedules on a short run with two samplers: a deterministic one reuses steps
below the uncached images' PSNR ceiling, an ancestral one computes every step (its images are the
uncached ones: PSNR inf), and the table names the sampler."""

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
    assert S._psnr(0.0) == math.inf and S._psnr(1e-4) == 40.0
