"""Two gloo ranks, each running ComfyUI's own Flux model with CacheDit on different inputs (as the
multi-GPU packs run one rank per GPU): both ranks reuse the same steps, because the adapter
reduces its decisions over the process group (the rank code: tests/distributed_workers.py)."""

from __future__ import annotations

import json
import os

from .test_nodes_comfyui import REPO, _custom_nodes_dir, _run, pack  # noqa: F401 (pack is a fixture)


def test_comfyui_ranks_with_different_inputs_reuse_the_same_steps(comfy_harness, tmp_path):
    from distributed_workers import spawn

    a, b = spawn("comfyui_different_inputs", tmp_path, deadline=300, timeout=20)
    for key in ("reduced", "default"):
        assert a[key] == b[key], key
    assert a["reduced"]  # something is reused at all
    assert a["reduced_diffs"] == b["reduced_diffs"]  # one measurement: the world's
    assert a["alone_diffs"] != b["alone_diffs"]  # each rank's own input moves its own probe



def test_advanced_node_sets_the_distributed_policy(pack, comfy_harness):  # noqa: F811
    """The Advanced node's `distributed` input (auto / off; Chinese name from the locales) reaches
    the engine's decision group; without it the policy is auto."""
    from cachedit.adapters import comfyui

    schema = pack.NODE_CLASS_MAPPINGS["CacheDitAdvancedConfig"].GET_SCHEMA()
    policy = next(i for i in schema.inputs if i.id == "distributed")
    assert list(policy.options) == ["auto", "off"] and policy.default == "auto" and policy.optional
    with open(os.path.join(REPO, "locales", "zh", "nodeDefs.json"), encoding="utf-8") as f:
        assert json.load(f)["CacheDitAdvancedConfig"]["inputs"]["distributed"]["name"] == "多卡决策"
    defaults = {i.id: i.default for i in schema.inputs if i.id != "model" and not i.optional}
    node = pack.NODE_CLASS_MAPPINGS["CacheDitAdvancedConfig"]
    for given, expected in ((dict(distributed="off"), "off"), ({}, "auto")):
        model = _run(node, model=comfy_harness.build_model("flux"), **defaults, **given)[0]
        engine = comfyui.engine_of(model)
        assert engine.options.distributed == expected and engine.decider.group.policy == expected
