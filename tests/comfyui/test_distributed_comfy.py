"""Two gloo ranks, each running ComfyUI's own Flux model with CacheDit on different inputs (as the
multi-GPU packs run one rank per GPU): both ranks reuse the same steps, because the adapter
reduces its decisions over the process group (the rank code: tests/distributed_workers.py)."""

from __future__ import annotations


def test_comfyui_ranks_with_different_inputs_reuse_the_same_steps(comfy_harness, tmp_path):
    from distributed_workers import spawn

    a, b = spawn("comfyui_different_inputs", tmp_path, deadline=300, timeout=20)
    for key in ("reduced", "default"):
        assert a[key] == b[key], key
    assert a["reduced"]  # something is reused at all
    assert a["reduced_diffs"] == b["reduced_diffs"]  # one measurement: the world's
    assert a["alone_diffs"] != b["alone_diffs"]  # each rank's own input moves its own probe
