"""A ControlNet in real ComfyUI adds its residuals between the DiT blocks a reused step skips:
the default must add this step's residuals once (before, they were counted again inside the
reused residual, 3 seeds: FLUX layout at scale 1 20.4 dB, until 50% 27.4; Qwen-Image at 0.3 27.9;
ComfyUI's own ControlNetFlux at 0.05 30.0; benchmarks/results/runs/2026-12-01_comfyui_control_before.md)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("arch,cases", [
    ("flux", (("stand-in", 1.0, 1.0), ("stand-in", 1.0, 0.5), ("ControlNetFlux", 0.05, 1.0))),
    ("qwen", (("stand-in", 0.3, 1.0),)),
])
def test_default_keeps_quality_with_a_controlnet(comfy_harness, arch, cases):
    from benchmarks import comfyui_control

    for _, kind, size, end, pooled, worst, computed in comfyui_control.run(arch, seeds=1, cases=cases):
        assert pooled >= 40.0, (arch, kind, size, end, pooled)
        assert computed[0] <= 14, (arch, kind, size, end, computed)  # still reuses half the steps or more


def test_control_stand_in_follows_its_end_percent(comfy_harness):
    import torch

    from benchmarks import comfyui_control
    from cachedit.bundled import comfyui as bundled_comfy

    patcher, _ = bundled_comfy.load_patcher("flux")
    control = comfyui_control.make_control(patcher.model.diffusion_model, 1.0, end_percent=0.5)
    control.pre_run(patcher.model, patcher.model.model_sampling.percent_to_sigma)
    x = torch.zeros(2, 1, 16, 16)
    early = control.get_control(x, torch.tensor([0.9]), {}, 2, {})
    late = control.get_control(x, torch.tensor([0.3]), {}, 2, {})
    assert late is None
    assert len(early["input"]) == 2 and len(early["output"]) == 10 and early["input"][0].shape == (2, 64, 160)


def test_default_keeps_quality_with_a_controlnet_on_the_positive_only(comfy_harness):
    """The legacy Apply ControlNet node puts the control on the positive alone: ComfyUI then runs
    the two CFG branches as separate calls of different form, whose reuse errors no longer cancel
    under guidance. The run's budget is cut for that (feedback.UNEVEN_BRANCHES_SCALE); before,
    the stand-in at scale 1 landed at 32.1 dB pooled over 3 seeds
    (benchmarks/results/runs/2026-12-02_comfyui_control_positive_before.md)."""
    from benchmarks import comfyui_control

    rows = comfyui_control.run("flux", seeds=1, cases=(("stand-in", 1.0, 1.0),), positive_only=True)
    for _, kind, size, end, pooled, worst, computed in rows:
        assert pooled >= 40.0, (kind, size, end, pooled)
        assert computed[0] <= 18, (kind, size, end, computed)  # still reuses 10 steps or more (17 computed here)
