"""The ComfyUI node pack, checked without ComfyUI: locales, the root package's behaviour outside
ComfyUI, requirements and example workflows. Node definitions themselves need ComfyUI's
`comfy_api` (tests/comfyui/test_nodes_comfyui.py loads them in real ComfyUI)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_IDS = ["CacheDitAccelerate", "CacheDitAdvancedConfig", "CacheDitCacheControl", "CacheDitDetailedStats"]


def _has_comfy() -> bool:
    """Checked when a test runs: tests/comfyui may have put ComfyUI on sys.path after collection."""
    return importlib.util.find_spec("comfy_api") is not None
CJK = re.compile(r"[\u4e00-\u9fff]")


def _locale(lang):
    """What ComfyUI serves as the pack's `nodeDefs` for `lang` (locales/<lang>/nodeDefs.json)."""
    with open(os.path.join(REPO, "locales", lang, "nodeDefs.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_locale_lists_every_node(lang):
    defs = _locale(lang)
    assert sorted(defs) == sorted(NODE_IDS)
    for node_id, d in defs.items():
        assert d["display_name"] and d["description"]
        assert d["inputs"] and all(v["name"] and v["tooltip"] for v in d["inputs"].values()), node_id
        assert d["outputs"] and all(v["name"] and v["tooltip"] for v in d["outputs"].values()), node_id
        assert sorted(d["outputs"]) == [str(i) for i in range(len(d["outputs"]))]
        names = [v["name"] for v in d["outputs"].values()]
        assert len(set(names)) == len(names), (lang, node_id, names)  # no two outputs share a name


def test_locales_agree_and_each_is_one_language():
    """English names are plain English, Chinese ones Chinese: no "English | 中文" (the frontend
    reads " | " as a plural separator and shows one half)."""
    en, zh = _locale("en"), _locale("zh")
    for node_id in NODE_IDS:
        assert set(en[node_id]["inputs"]) == set(zh[node_id]["inputs"])
        assert set(en[node_id]["outputs"]) == set(zh[node_id]["outputs"])
        assert en[node_id]["display_name"].startswith("CacheDit ") and not CJK.search(en[node_id]["display_name"])
        assert zh[node_id]["display_name"].startswith("CacheDit ") and CJK.search(zh[node_id]["display_name"])
        for lang in (en, zh):
            assert "|" not in lang[node_id]["display_name"]
        assert CJK.search(zh[node_id]["description"])
        assert all(CJK.search(v["tooltip"]) for v in zh[node_id]["inputs"].values())
        assert all(CJK.search(v["tooltip"]) for v in zh[node_id]["outputs"].values())
        assert not any(CJK.search(v["tooltip"]) for v in en[node_id]["inputs"].values())


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


def _load_pack_in_fresh_process(tmp_path, prelude: str = "") -> list:
    """Import the pack's root __init__.py in a new Python (stand-ins under `tmp_path` first on
    sys.path, `prelude` run before); it must register nothing. Returns its WARNING lines."""
    script = textwrap.dedent(f"""
        import importlib.util, logging, sys
        sys.path.insert(0, {str(tmp_path)!r})
    """) + textwrap.dedent(prelude) + textwrap.dedent(f"""
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
        spec = importlib.util.spec_from_file_location("pack", {os.path.join(REPO, "__init__.py")!r},
                                                      submodule_search_locations=[{REPO!r}])
        module = importlib.util.module_from_spec(spec)
        sys.modules["pack"] = module
        spec.loader.exec_module(module)
        print("MAPPINGS", module.NODE_CLASS_MAPPINGS, hasattr(module, "comfy_entrypoint"))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMFYUI_PATH")}
    result = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MAPPINGS {} False" in result.stdout
    return [line for line in result.stderr.splitlines() if line.startswith("WARNING cachedit ")]


def test_root_package_in_old_comfyui_warns_what_to_update(tmp_path):
    """Inside a ComfyUI without `comfy_api.latest` (older than 0.3.48) the pack registers nothing
    and logs a WARNING naming the minimum ComfyUI version (a fresh process: a stand-in `comfy`
    package is importable, `comfy_api` is not)."""
    (tmp_path / "comfy").mkdir()
    (tmp_path / "comfy" / "__init__.py").write_text("")
    warnings = _load_pack_in_fresh_process(tmp_path)
    assert len(warnings) == 1 and "ComfyUI 0.3.48 or newer" in warnings[0] and "comfy_api" in warnings[0], warnings


@pytest.mark.parametrize("missing", ["blinker", "structlog"])
def test_root_package_without_its_requirements_says_how_to_install_them(tmp_path, missing):
    """Copied into custom_nodes without `pip install -r requirements.txt`: no traceback, nothing
    registered, one WARNING with the pip command (a fresh process: a stand-in comfy_api, the
    requirement made unimportable)."""
    api = tmp_path / "comfy_api" / "latest"
    api.mkdir(parents=True)
    (tmp_path / "comfy_api" / "__init__.py").write_text("")
    (api / "__init__.py").write_text("ComfyExtension = object\nio = None\n")
    warnings = _load_pack_in_fresh_process(tmp_path, f"""
        sys.modules[{missing!r}] = None  # import {missing} raises ImportError(name={missing!r})
    """)
    assert len(warnings) == 1 and f"need the Python package '{missing}'" in warnings[0] and \
        "-m pip install -r" in warnings[0] and "requirements.txt" in warnings[0], warnings


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


def _pyproject() -> dict:
    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_registry_metadata():
    """What the ComfyUI registry reads from pyproject.toml: an id of our own (no "ComfyUI", no
    case-insensitive clash with the existing "ComfyUI-CacheDiT"), the required Repository url,
    classifiers, the Apache-2.0 LICENSE file, [tool.comfy] and the first ComfyUI with the V3 API."""
    project, comfy = _pyproject()["project"], _pyproject()["tool"]["comfy"]
    name = project["name"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", name) and len(name) < 100
    assert "comfyui" not in name.lower() and name.lower() not in {"comfyui-cachedit", "cache-dit", "cachedit"}
    assert project["urls"]["Repository"].startswith("https://github.com/")
    assert "Operating System :: OS Independent" in project["classifiers"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    with open(os.path.join(REPO, "LICENSE"), encoding="utf-8") as f:
        assert "Apache License" in f.read(200)
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"].startswith("https://")
    assert comfy["includes"] == [] and comfy["requires-comfyui"] == ">=0.3.48"


def test_dependencies_are_requirements_txt():
    """pip and ComfyUI users get one list: pyproject reads requirements.txt (no torch in it)."""
    config = _pyproject()
    assert "dependencies" in config["project"]["dynamic"] and "dependencies" not in config["project"]
    assert config["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}


def test_comfyignore_keeps_what_comfyui_needs():
    """The registry package leaves out tests, benchmarks, scripts, docs images and the demo weights,
    and keeps the nodes, the library, the frontend extension, locales and example workflows (the
    package is loaded and run in ComfyUI by tests/comfyui/test_nodes_comfyui.py)."""
    with open(os.path.join(REPO, ".comfyignore"), encoding="utf-8") as f:
        patterns = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert {"tests/", "benchmarks/", "scripts/", "docs/", "cachedit/bundled/*.safetensors"} <= set(patterns)
    for kept in ("nodes/", "cachedit/", "web/", "locales/", "example_workflows/", "__init__.py"):
        assert not any(p.rstrip("/") == kept.rstrip("/") for p in patterns), kept


WORKFLOWS = sorted(f for f in os.listdir(os.path.join(REPO, "example_workflows")) if f.endswith(".json"))
SAMPLERS = {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"}


@pytest.mark.parametrize("workflow", WORKFLOWS)
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
    # every input's link and every output's links are listed in `links`
    for n in wf["nodes"]:
        assert all(i.get("link") is None or i["link"] in link_ids for i in n.get("inputs", [])), n["type"]
        assert all(x in link_ids for o in n.get("outputs", []) for x in (o.get("links") or [])), n["type"]
    types = [n["type"] for n in wf["nodes"]]
    assert "CacheDitAccelerate" in types and SAMPLERS & set(types)
    assert set(t for t in types if t.startswith("CacheDit")) <= set(NODE_IDS)
    assert all(n.get("mode", 0) == 0 for n in wf["nodes"])  # nothing muted or bypassed


FAMILIES = {"flux_dev", "flux_kontext", "wan22_t2v_two_experts", "qwen_image", "hunyuan_video", "ltxv_t2v", "chroma",
            "sd35"}
LOADERS = {"UNETLoader", "CLIPLoader", "DualCLIPLoader", "VAELoader", "CheckpointLoaderSimple", "LoraLoaderModelOnly"}
MODEL_USERS = SAMPLERS | {"BasicGuider", "CFGGuider"}  # where the accelerated MODEL must arrive


def test_one_example_workflow_per_family():
    """The families ComfyUI's own templates cover, each with a thumbnail beside its workflow."""
    assert {w[: -len("_cachedit.json")] for w in WORKFLOWS} == FAMILIES
    for workflow in WORKFLOWS:
        assert os.path.isfile(os.path.join(REPO, "example_workflows", workflow[:-5] + ".jpg")), workflow


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_example_workflow_is_ready_to_use(workflow):
    """What a user needs when opening it: loaders that name their model downloads, CacheDit
    Accelerate between the loader chain and the sampler, a visible bilingual note, no overlapping
    nodes and a saved view at a readable zoom (tests/comfyui/test_browser.py checks the same as
    the frontend draws it)."""
    with open(os.path.join(REPO, "example_workflows", workflow), encoding="utf-8") as f:
        wf = json.load(f)
    by_id = {n["id"]: n for n in wf["nodes"]}
    for n in wf["nodes"]:
        if n["type"] in LOADERS:
            models = n["properties"]["models"]
            assert models and all(m["name"] and m["url"].startswith("https://") for m in models), n["type"]
            assert models[0]["name"] in n["widgets_values"], n["type"]
    links = {link[0]: link for link in wf["links"]}

    def downstream(node_id):
        return [by_id[links[x][3]] for o in by_id[node_id]["outputs"] for x in (o.get("links") or [])]

    def upstream(node_id):
        return [by_id[links[i["link"]][1]] for i in by_id[node_id]["inputs"] if i.get("link") is not None]

    for acc in (n for n in wf["nodes"] if n["type"] == "CacheDitAccelerate"):
        assert MODEL_USERS & {d["type"] for d in downstream(acc["id"])}, workflow
        chain, source = [acc], upstream(acc["id"])
        while source:  # walk the MODEL chain back to its loader
            chain.append(source[0])
            source = upstream(source[0]["id"])
        assert chain[-1]["type"] in LOADERS, [c["type"] for c in chain]
    notes = [n for n in wf["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1 and "CacheDit" in notes[0]["widgets_values"][0] and CJK.search(notes[0]["widgets_values"][0])
    assert "residual_diff_threshold" in notes[0]["widgets_values"][0]  # the knob to touch
    title_h = 30
    rects = [(n["id"], n["pos"][0], n["pos"][1] - title_h, n["size"][0], n["size"][1] + title_h) for n in wf["nodes"]]
    for i, (a, ax, ay, aw, ah) in enumerate(rects):
        for b, bx, by, bw, bh in rects[i + 1:]:
            assert not (ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah), (workflow, a, b)
    assert 0.6 <= wf["extra"]["ds"]["scale"] <= 1.0


def _chart_module():
    """nodes/chart.py (PIL only: no ComfyUI needed)."""
    spec = importlib.util.spec_from_file_location("cachedit_pack_chart_unit", os.path.join(REPO, "nodes", "chart.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chart_shows_measured_error_against_the_budget():
    """With error feedback the chart gets a panel of the reuse error measured at computed steps
    against the budget (dashed red), below the change against the per-step threshold; the size
    the node is laid out for stays the same."""
    from types import SimpleNamespace as S

    chart = _chart_module()
    steps = []
    for i in range(12):
        reused = i in (4, 5, 7, 8, 10)
        for b in (0, 1):
            steps.append(S(step=i, branch=b, reused=reused, diff=None if i == 0 else 0.1 + 0.01 * i,
                           threshold=0.24 if i < 3 else 0.3 + 0.02 * i,
                           error=None if reused or i == 0 else (0.2 if i == 6 else 0.05 + 0.01 * b)))

    def red_rows(img):
        px = img.load()
        return {y for y in range(img.height) for x in range(chart.WIDTH // 2, chart.WIDTH - 20)
                if px[x, y] == chart.THRESHOLD}

    with_budget = chart.render_chart(steps, "flux: 5/12 steps reused", 12, budget=0.15)
    without = chart.render_chart(steps, "flux: 5/12 steps reused", 12)
    assert with_budget.size == without.size == (chart.WIDTH, chart.HEIGHT)
    assert len(red_rows(with_budget)) > len(red_rows(without))  # a second dashed line: the budget
    assert max(red_rows(with_budget)) > max(red_rows(without)) + 40  # drawn in a panel below the change panel
    fixed = [S(step=s.step, branch=s.branch, reused=s.reused, diff=None, threshold=None) for s in steps]
    assert chart.render_chart(fixed, "", 12, budget=None).size == (chart.WIDTH, chart.HEIGHT)  # no error attribute


@pytest.mark.parametrize("guidance, uneven, en, zh", [
    (6.0, False, "error budget 0.15, 0.075 at CFG 6 (", "误差预算 0.15，CFG 6 时为 0.075"),
    (None, True, "error budget 0.15, 0.0375 with CFG branches of different inputs (", "误差预算 0.15，正负条件输入不同时为 0.0375"),
    (6.0, True, "error budget 0.15, 0.0187 at CFG 6 and with CFG branches of different inputs (",
     "误差预算 0.15，CFG 6 且正负条件输入不同时为 0.0187"),
    (None, False, "error budget 0.15 (", "误差预算 0.15（"),
])
def test_stats_node_says_what_lowered_the_budget(guidance, uneven, en, zh):
    """The Detailed Stats settings line names why a run's budget is below the configured one: a CFG
    scale above 3, CFG branches of different form, or both (the guidance is unknown, None, on a
    transformer enabled alone: the line must not need it)."""
    import cachedit
    from conftest import make_tiny_flux

    spec = importlib.util.spec_from_file_location("cachedit_pack_summary_unit", os.path.join(REPO, "nodes", "summary.py"))
    summary = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = summary  # its dataclasses look their module up
    spec.loader.exec_module(summary)
    model = make_tiny_flux()
    cachedit.enable_cache(model)
    try:
        engine = cachedit.get_manager().entry(model).engine
        engine.feedback.guidance, engine.feedback.uneven_branches = guidance, uneven
        line_en, line_zh = summary._settings(engine)
        assert en in line_en and zh in line_zh, (line_en, line_zh)
    finally:
        cachedit.disable_cache(model)
