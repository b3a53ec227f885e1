"""What ComfyUI's /prompt endpoint checks before a workflow runs (`execution.validate_inputs`, the
function the server calls for every queued node): out-of-range numbers, NaN and unknown combo
values on CacheDit's nodes are refused with the input's name, before any node runs; a valid prompt
passes. The model comes from a stand-in source node, so the check is CacheDit's nodes alone."""

from __future__ import annotations

import asyncio
import math

import pytest

from .test_nodes_comfyui import _custom_nodes_dir, pack  # noqa: F401 (pack is a fixture)


class _ModelSource:
    """A node with no inputs that outputs a MODEL (never executed: validation only)."""

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 (ComfyUI's V1 node protocol)
        return {"required": {}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"
    CATEGORY = "tests"


@pytest.fixture()
def validate(pack, monkeypatch):  # noqa: F811
    """validate(node_id, **inputs) -> (valid, [error details]) as ComfyUI's server validates it."""
    import execution
    import nodes

    monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, "CacheDitTestModelSource", _ModelSource)

    def run(node: str, **inputs):
        schema = nodes.NODE_CLASS_MAPPINGS[node].define_schema()
        given = {i.id: i.default for i in schema.inputs if i.id != "model" and not i.optional}
        prompt = {"1": {"class_type": node, "inputs": {**given, "model": ["2", 0], **inputs}},
                  "2": {"class_type": "CacheDitTestModelSource", "inputs": {}}}
        valid, errors, _ = asyncio.run(execution.validate_inputs("test", prompt, "1", {}))
        return valid, [f"{e['message']}: {e['details']}" for e in errors]

    return run


def test_a_valid_prompt_passes(validate):
    assert validate("CacheDitAdvancedConfig") == (True, [])
    assert validate("CacheDitAdvancedConfig", cache_device="cpu", distributed="off") == (True, [])
    assert validate("CacheDitAccelerate", preset="fast") == (True, [])


@pytest.mark.parametrize("inputs, expected", [
    (dict(warmup_steps=21), "Value 21 bigger than max of 20: warmup_steps"),
    (dict(skip_interval=11), "Value 11 bigger than max of 10: skip_interval"),
    (dict(Fn_compute_blocks=65), "Value 65 bigger than max of 64: Fn_compute_blocks"),
    (dict(taylorseer_order=5), "Value 5 bigger than max of 4: taylorseer_order"),
    (dict(noise_scale=0.101), "noise_scale=0.101 is invalid; allowed: a number in [0.0, 0.1]"),
    (dict(residual_diff_threshold=1.01), "residual_diff_threshold=1.01 is invalid; allowed: a number in [0.0, 1.0]"),
    (dict(start_percent=math.nan), "start_percent=nan is invalid; allowed: a number in [0.0, 1.0]"),
    (dict(start_percent=0.8, end_percent=0.2), "start_percent=0.8 is above end_percent=0.2"),
    (dict(strategy="turbo"), "strategy='turbo' is invalid; allowed: 'fixed' | 'dynamic' | 'adaptive'"),
    (dict(cache_device="gpu"), "cache_device='gpu' is invalid; allowed: 'auto' | 'model' | 'cpu'"),
    (dict(distributed="on"), "distributed='on' is invalid; allowed: 'auto' | 'off'"),
])
def test_bad_advanced_inputs_are_refused_before_the_run(validate, inputs, expected):
    valid, errors = validate("CacheDitAdvancedConfig", **inputs)
    assert not valid and errors and all(expected in e for e in errors), errors


def test_an_unknown_preset_is_refused(validate):
    valid, errors = validate("CacheDitAccelerate", preset="turbo")
    assert not valid and any("preset='turbo' is invalid; allowed: 'quality' | 'balanced' | 'fast'" in e for e in errors)
