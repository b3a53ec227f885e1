"""The ComfyUI node pack, checked without ComfyUI: locales, the root package's behaviour outside
ComfyUI, requirements and example workflows. Node definitions themselves need ComfyUI's
`comfy_api` (tests/comfyui/test_nodes_comfyui.py loads them in real ComfyUI)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_IDS = ["CacheDitAccelerate", "CacheDitAdvancedConfig", "CacheDitCacheControl", "CacheDitDetailedStats"]


def _has_comfy() -> bool:
    """Checked when a test runs: tests/comfyui may have put ComfyUI on sys.path after collection."""
    return importlib.util.find_spec("comfy_api") is not None
CJK = re.compile(r"[\u4e00-\u9fff]")


def _locale(lang):
    with open(os.path.join(REPO, "locales", lang, "main.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_locale_lists_every_node(lang):
    defs = _locale(lang)["nodeDefs"]
    assert sorted(defs) == sorted(NODE_IDS)
    for node_id, d in defs.items():
        assert d["display_name"] and d["description"]
        assert d["inputs"] and all(v["name"] and v["tooltip"] for v in d["inputs"].values()), node_id
        assert d["outputs"] and all(v["name"] and v["tooltip"] for v in d["outputs"].values()), node_id
        assert sorted(d["outputs"]) == [str(i) for i in range(len(d["outputs"]))]


def test_locales_agree_and_are_bilingual():
    en, zh = _locale("en")["nodeDefs"], _locale("zh")["nodeDefs"]
    for node_id in NODE_IDS:
        assert set(en[node_id]["inputs"]) == set(zh[node_id]["inputs"])
        assert set(en[node_id]["outputs"]) == set(zh[node_id]["outputs"])
        # both names on every node: "English | 中文" (en) and "中文 | English" (zh)
        assert en[node_id]["display_name"].startswith("CacheDit ") and CJK.search(en[node_id]["display_name"])
        assert CJK.search(zh[node_id]["display_name"].split("|")[0]) and "CacheDit" in zh[node_id]["display_name"]
        assert all(CJK.search(v["tooltip"]) for v in zh[node_id]["inputs"].values())


def _load_root_package():
    name = "cachedit_node_pack_under_test"
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def test_root_package_outside_comfyui_registers_nothing():
    if _has_comfy():
        pytest.skip("ComfyUI's comfy_api is importable here: the pack registers its nodes (checked in "
                    "tests/comfyui/test_nodes_comfyui.py)")
    module = _load_root_package()
    assert module.NODE_CLASS_MAPPINGS == {} and module.NODE_DISPLAY_NAME_MAPPINGS == {}
    assert "ComfyUI" in module.LOAD_ERROR
    import cachedit.adapters.comfyui as adapter  # the library, adapter included, imports without ComfyUI

    assert adapter.enable and adapter.disable and adapter.entries


def test_root_package_inside_comfyui_exports_the_four_nodes():
    if not _has_comfy():
        pytest.skip("node definitions import ComfyUI's comfy_api (run tests/comfyui with COMFYUI_PATH set for the "
                    "full node tests)")
    module = _load_root_package()
    assert sorted(module.NODE_CLASS_MAPPINGS) == sorted(NODE_IDS)


def test_requirements_leave_torch_to_comfyui():
    with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as f:
        names = [re.split(r"[<>=!~ ;\[]", line.strip())[0].lower() for line in f if line.strip() and not line.startswith("#")]
    assert {"blinker", "structlog"} <= set(names)
    assert not {"torch", "torchvision", "comfyui"} & set(names)


@pytest.mark.parametrize("workflow", sorted(os.listdir(os.path.join(REPO, "example_workflows"))))
def test_example_workflow_is_consistent(workflow):
    with open(os.path.join(REPO, "example_workflows", workflow), encoding="utf-8") as f:
        wf = json.load(f)
    ids = {n["id"] for n in wf["nodes"]}
    assert len(ids) == len(wf["nodes"]) and wf["last_node_id"] == max(ids)
    link_ids = [link[0] for link in wf["links"]]
    assert len(set(link_ids)) == len(link_ids) and wf["last_link_id"] == max(link_ids)
    for link_id, src, src_slot, dst, dst_slot, _ in wf["links"]:
        s = next(n for n in wf["nodes"] if n["id"] == src)
        d = next(n for n in wf["nodes"] if n["id"] == dst)
        assert link_id in s["outputs"][src_slot]["links"] and d["inputs"][dst_slot]["link"] == link_id
    types = [n["type"] for n in wf["nodes"]]
    assert "CacheDitAccelerate" in types and ("KSampler" in types or "KSamplerAdvanced" in types)
    assert set(t for t in types if t.startswith("CacheDit")) <= set(NODE_IDS)
