"""The node pack inside real ComfyUI: the repo folder loads through ComfyUI's own custom node
loader under any folder name, its locales are picked up by ComfyUI's translation loader, and
the four nodes run the way ComfyUI's executor runs V3 nodes."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE_IDS = ["CacheDitAccelerate", "CacheDitAdvancedConfig", "CacheDitCacheControl", "CacheDitDetailedStats"]
DISPLAY_NAMES = {"CacheDitAccelerate": "CacheDit Accelerate", "CacheDitAdvancedConfig": "CacheDit Advanced Config",
                 "CacheDitCacheControl": "CacheDit Cache Control", "CacheDitDetailedStats": "CacheDit Detailed Stats"}
ZH_NAMES = {"CacheDitAccelerate": "CacheDit 模型加速", "CacheDitAdvancedConfig": "CacheDit 高级配置",
            "CacheDitCacheControl": "CacheDit 缓存控制", "CacheDitDetailedStats": "CacheDit 详细统计"}


def _custom_nodes_dir(tmp_path, name="ComfyUI-CacheDit_x.y"):
    """tmp/custom_nodes/<name> -> the repository (a symlink, as a user's clone or copy would be)."""
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    os.symlink(REPO, custom_nodes / name)
    return custom_nodes, str(custom_nodes / name)


@pytest.fixture(scope="module")
def pack(comfy_harness, tmp_path_factory):
    """The pack loaded by ComfyUI's nodes.load_custom_node (once per module)."""
    import nodes

    _, path = _custom_nodes_dir(tmp_path_factory.mktemp("comfy"))
    assert asyncio.run(nodes.load_custom_node(path)) is True
    module = sys.modules[path.replace(".", "_x_")]
    yield module


def _run(node_cls, **inputs):
    """Execute a V3 node like ComfyUI's executor does (class clone, locked, EXECUTE_NORMALIZED)."""
    from comfy_api.internal import make_locked_method_func

    node_cls.VALIDATE_CLASS()
    clone = node_cls.PREPARE_CLASS_CLONE({})
    return make_locked_method_func(node_cls, "EXECUTE_NORMALIZED", clone)(**inputs)


def _sample(h, model, arch="flux", steps=6, seed=0):
    pos, neg = h.make_conditioning(arch)
    return h.sample(model, steps=steps, cfg=2.0, sampler_name="euler", scheduler="simple", seed=seed,
                    latent=h.empty_latent(arch), positive=pos, negative=neg)


def test_pack_registers_nodes_in_comfyui(pack):
    import nodes

    for node_id in NODE_IDS:
        cls = nodes.NODE_CLASS_MAPPINGS[node_id]
        assert cls is pack.NODE_CLASS_MAPPINGS[node_id]
        assert cls.RELATIVE_PYTHON_MODULE == "custom_nodes.ComfyUI-CacheDit_x.y"
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == DISPLAY_NAMES[node_id]  # plain English, no " | "
        info = cls.INPUT_TYPES()  # what the server's /object_info builds on
        for name, spec in {**info["required"], **info.get("optional", {})}.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert os.path.realpath(nodes.__file__).endswith(os.path.join("ComfyUI", "nodes.py"))  # not our nodes/
    assert nodes.NODE_CLASS_MAPPINGS["CacheDitDetailedStats"].OUTPUT_NODE is True
    # the frontend extension (web/cachedit.js) is served for the pack's folder
    assert os.path.realpath(nodes.EXTENSION_WEB_DIRS["ComfyUI-CacheDit_x.y"]) == os.path.realpath(os.path.join(REPO, "web"))


def test_comfy_entrypoint_lists_the_same_nodes(pack):
    from comfy_api.latest import ComfyExtension

    extension = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension)
    assert asyncio.run(extension.get_node_list()) == list(pack.NODE_CLASS_MAPPINGS.values())


def test_search_aliases(pack, monkeypatch):
    """Each node is found under the peer packs' names and in Chinese. This ComfyUI's io.Schema has
    no search_aliases field (newer ones do): the schema leaves them out here and passes them there."""
    import dataclasses

    from comfy_api.latest import io

    schema_module = sys.modules[pack.__name__ + ".nodes.schema"]
    has_field = "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}
    assert schema_module.supports("search_aliases") is has_field
    seen = {}
    monkeypatch.setattr(schema_module, "supports", lambda field: True)
    monkeypatch.setattr(schema_module.io, "Schema", lambda **kwargs: seen.setdefault(kwargs["node_id"], kwargs))
    for node_id in NODE_IDS:
        pack.NODE_CLASS_MAPPINGS[node_id].define_schema()
        aliases = seen[node_id]["search_aliases"]
        assert {"TeaCache", "FBCache", "first block cache", "cache-dit", "加速"} <= set(aliases), node_id
        assert len(aliases) == len(set(aliases)) and seen[node_id]["category"] == "CacheDit"
    assert "模型加速" in seen["CacheDitAccelerate"]["search_aliases"]


def test_advanced_config_keeps_comfyuis_range_checks(pack):
    """validate_inputs names the inputs it checks: with **kwargs ComfyUI would skip its own
    min/max checks for every input of the node."""
    import inspect

    node = pack.NODE_CLASS_MAPPINGS["CacheDitAdvancedConfig"]
    spec = inspect.getfullargspec(node.validate_inputs)
    assert spec.varkw is None and {"start_percent", "end_percent"} <= set(spec.args)
    assert len(spec.args) - 1 < len(node.GET_SCHEMA().inputs)  # the other inputs keep ComfyUI's checks
    defaults = {i.id: getattr(i, "default", None) for i in node.GET_SCHEMA().inputs}

    def validate(**values):
        return node.validate_inputs(**{name: values.get(name, defaults[name]) for name in spec.args[1:]})

    assert validate(start_percent=0.2, end_percent=0.8) is True
    assert "above end_percent" in validate(start_percent=0.8, end_percent=0.2)
    assert "start_percent" in validate(start_percent=-0.1, end_percent=0.5)


def test_pack_shares_the_cachedit_library(pack, comfy_harness):
    import cachedit

    assert pack.nodes.accelerate.cachedit is cachedit
    model = _run(pack.NODE_CLASS_MAPPINGS["CacheDitAccelerate"], model=comfy_harness.build_model("flux"))[0]
    assert any(e.ref() is model for e in cachedit.get_manager().entries())


def test_registry_package_loads_and_runs_in_a_fresh_process(comfy_harness, tmp_path):
    """The pack as the registry ships it (the repo less .comfyignore: no tests, no demo weights),
    in a ComfyUI process where `cachedit` is not importable: the pack makes its own copy
    importable, `import cachedit` elsewhere in the process gets that same module and manager,
    and the nodes accelerate and sample a model without touching the demo models."""
    from . import registry_package

    path = str(tmp_path / "custom_nodes" / "cachedit-pack")
    registry_package.copy_to(path)
    assert not os.path.exists(os.path.join(path, "tests")) and os.path.isfile(os.path.join(path, "web", "cachedit.js"))
    harness_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness.py")
    script = textwrap.dedent(f"""
        import asyncio, importlib.util, os, sys
        sys.path.insert(0, {comfy_harness.comfy_path()!r})
        # a user's ComfyUI has no cachedit installed: hide this venv's editable install of the repo
        sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
        assert importlib.util.find_spec("cachedit") is None
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import nodes
        assert asyncio.run(nodes.load_custom_node({path!r}))
        import cachedit
        pack = sys.modules[{path.replace(".", "_x_")!r}]
        assert os.path.realpath(cachedit.__file__).startswith(os.path.realpath({path!r}))
        assert pack.nodes.accelerate.cachedit is cachedit
        assert sys.modules["nodes"] is nodes and nodes.__file__.endswith("nodes.py")
        spec = importlib.util.spec_from_file_location("harness", {harness_file!r})
        h = sys.modules["harness"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(h)
        accelerated = pack.NODE_CLASS_MAPPINGS["CacheDitAccelerate"].execute(h.build_model("flux")).args[0]
        pos, neg = h.make_conditioning("flux")
        h.sample(accelerated, steps=4, cfg=2.0, latent=h.empty_latent("flux"), positive=pos, negative=neg)
        text = pack.NODE_CLASS_MAPPINGS["CacheDitDetailedStats"].execute(accelerated).args[2]
        assert "Last run:" in text, text
        assert not [m for m in sys.modules if m.startswith("cachedit.bundled")]
        print("OK", sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("CacheDit")))
    """)
    env = comfy_harness.child_env()  # no PYTHONPATH but the torchvision stand-in's, when ComfyUI needs it
    result = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"OK {sorted(NODE_IDS)}" in result.stdout


@contextlib.contextmanager
def _comfy_top_level_utils():
    """Import ComfyUI modules that need its top-level `utils` package (`server`, `app.*`): importing
    `nodes` put comfy/ first on sys.path, where `utils` is comfy/utils.py. The package is put in
    sys.modules for the block and the previous modules are put back afterwards."""
    import folder_paths

    comfy_root = os.path.dirname(os.path.abspath(folder_paths.__file__))
    saved = {k: v for k, v in sys.modules.items() if k == "utils" or k.startswith(("utils.", "app"))}
    try:
        spec = importlib.util.spec_from_file_location("utils", os.path.join(comfy_root, "utils", "__init__.py"),
                                                      submodule_search_locations=[os.path.join(comfy_root, "utils")])
        utils_pkg = importlib.util.module_from_spec(spec)
        sys.modules["utils"] = utils_pkg
        spec.loader.exec_module(utils_pkg)
        yield
    finally:
        for k in [k for k in sys.modules if k == "utils" or k.startswith(("utils.", "app"))]:
            del sys.modules[k]
        sys.modules.update(saved)


def test_locales_are_loaded_by_comfyui(pack, tmp_path, monkeypatch):
    import folder_paths

    custom_nodes, _ = _custom_nodes_dir(tmp_path)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "custom_nodes", ([str(custom_nodes)], set()))
    with _comfy_top_level_utils():
        from app.custom_node_manager import CustomNodeManager

        translations = CustomNodeManager().build_translations()
    for lang, names in (("en", DISPLAY_NAMES), ("zh", ZH_NAMES)):
        defs = translations[lang]["nodeDefs"]
        for node_id in NODE_IDS:
            assert defs[node_id]["display_name"] == names[node_id]
            schema = pack.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA()
            assert set(defs[node_id]["inputs"]) == {i.id for i in schema.inputs}
            assert all(v["tooltip"] and v["name"] for v in defs[node_id]["inputs"].values())
            assert set(defs[node_id]["outputs"]) == {str(i) for i in range(len(schema.outputs))}


def test_english_locale_matches_schema(pack):
    with open(os.path.join(REPO, "locales", "en", "nodeDefs.json"), encoding="utf-8") as f:
        en = json.load(f)
    for node_id in NODE_IDS:
        schema = pack.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA()
        assert en[node_id]["display_name"] == schema.display_name == DISPLAY_NAMES[node_id]
        assert en[node_id]["description"] == schema.description
        for i in schema.inputs:
            assert en[node_id]["inputs"][i.id]["tooltip"] == i.tooltip
        for k, o in enumerate(schema.outputs):
            assert en[node_id]["outputs"][str(k)] == {"name": o.display_name or o.io_type, "tooltip": o.tooltip}
    # every output of the stats node carries a display name (its own, in both locales)
    assert all(o.display_name for o in pack.NODE_CLASS_MAPPINGS["CacheDitDetailedStats"].GET_SCHEMA().outputs)


def test_nodes_run_like_comfyui_runs_them(pack, comfy_harness, tmp_path, monkeypatch):
    import torch
    import folder_paths

    monkeypatch.setattr(folder_paths, "temp_directory", str(tmp_path))
    h = comfy_harness
    nodes_ = pack.NODE_CLASS_MAPPINGS
    m = h.build_model("flux")
    base = _sample(h, m)

    accelerated = _run(nodes_["CacheDitAccelerate"], model=m)[0]
    out = _sample(h, accelerated, steps=12)
    assert torch.isfinite(out).all()

    advanced = _run(nodes_["CacheDitAdvancedConfig"], model=m, strategy="fixed", skip_interval=2, warmup_steps=1,
                    noise_scale=0.0, debug=False, residual_diff_threshold=0.24, Fn_compute_blocks=1,
                    Bn_compute_blocks=0, max_continuous_cached_steps=3, taylorseer=False, taylorseer_order=1,
                    start_percent=0.0, end_percent=1.0)[0]
    latent = {"samples": _sample(h, advanced)}

    stats = _run(nodes_["CacheDitDetailedStats"], model=advanced, latent=latent)
    latent_out, image_out, summary, chart = stats.args
    assert latent_out is latent and image_out is None
    assert "Last run: 2 of 6 steps reused." in summary and "Settings: fixed, interval 2" in summary, summary
    assert "Reused steps: 2, 4." in summary and "DBCache_" not in summary, summary
    assert chart.shape == (1, 360, 640, 3) and 0.0 <= float(chart.min()) and float(chart.max()) <= 1.0
    assert stats.ui["text"] == (summary,) and stats.ui["images"]
    zh = stats.ui["text_zh"][0]
    assert "最近一次运行：6 步中复用了 2 步。" in zh and "设置：固定间隔，间隔 2" in zh, zh

    off = _run(nodes_["CacheDitCacheControl"], model=advanced, enabled=False)[0]
    assert torch.equal(_sample(h, off), base)
    assert _run(nodes_["CacheDitCacheControl"], model=advanced, enabled=True)[0] is advanced

    plain = _run(nodes_["CacheDitDetailedStats"], model=m, image=torch.zeros(1, 8, 8, 3))
    assert "not enabled" in plain.args[2] and plain.args[1] is not None and plain.args[0] is None


def test_stats_say_why_steps_were_reused(pack, comfy_harness):
    """The default (error feedback, balanced): the summary names the budget and the measured reuse
    error (median, largest, how many over budget), in both languages; the chart keeps its size."""
    nodes_ = pack.NODE_CLASS_MAPPINGS
    accelerated = _run(nodes_["CacheDitAccelerate"], model=comfy_harness.build_model("flux"))[0]
    latent = {"samples": _sample(comfy_harness, accelerated, steps=12)}
    stats = _run(nodes_["CacheDitDetailedStats"], model=accelerated, latent=latent)
    summary, chart = stats.args[2], stats.args[3]
    assert "error budget 0.15 (the threshold follows the measured error)" in summary, summary
    assert "Measured reuse error (checked at " in summary and ", budget 0.15; " in summary, summary
    assert "median " in summary and "largest " in summary and " over budget" in summary, summary
    zh = stats.ui["text_zh"][0]
    assert "误差预算 0.15" in zh and "实测复用误差" in zh, zh
    assert chart.shape == (1, 360, 640, 3)


def test_stats_say_when_the_sampler_adds_noise(pack, comfy_harness):
    """An ancestral sampler re-noises every step: the run computes every step, and the stats node
    says why and which samplers accelerate, in both languages."""
    h = comfy_harness
    nodes_ = pack.NODE_CLASS_MAPPINGS
    accelerated = _run(nodes_["CacheDitAccelerate"], model=h.build_model("flux"))[0]
    pos, neg = h.make_conditioning("flux")
    samples = h.sample(accelerated, steps=12, cfg=2.0, sampler_name="euler_ancestral", scheduler="simple", seed=0,
                       latent=h.empty_latent("flux"), positive=pos, negative=neg)
    stats = _run(nodes_["CacheDitDetailedStats"], model=accelerated, latent={"samples": samples})
    summary = stats.args[2]
    assert "Last run: 0 of 12 steps reused." in summary, summary
    assert "The sampler adds new noise at every step" in summary and "use euler, dpmpp_2m" in summary, summary
    assert "每一步都加入新噪声" in stats.ui["text_zh"][0]


def test_stats_before_any_run(pack, comfy_harness):
    accelerated = _run(pack.NODE_CLASS_MAPPINGS["CacheDitAccelerate"], model=comfy_harness.build_model("sdxl"))[0]
    text = _run(pack.NODE_CLASS_MAPPINGS["CacheDitDetailedStats"], model=accelerated).args[2]
    assert "No finished run yet" in text and "whole steps are reused" in text, text


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"MarkdownNote", "Note"}  # node types the frontend itself defines (no server class)
WORKFLOWS = sorted(f for f in os.listdir(os.path.join(REPO, "example_workflows")) if f.endswith(".json"))


@pytest.fixture(scope="module")
def builtin_nodes(pack):
    """ComfyUI's nodes with every comfy_extras module loaded, as the server loads them."""
    import nodes

    with _comfy_top_level_utils():
        import server  # noqa: F401  (comfy_extras/nodes_images.py imports it)
    failed = asyncio.run(nodes.init_builtin_extra_nodes())
    # left out by the test setup: spandrel (needs torchvision) and torchaudio (scripts/comfyui_for_tests.sh)
    assert set(failed) <= {"nodes_upscale_model.py", "nodes_audio.py", "nodes_audio_encoder.py"}, failed
    return nodes.NODE_CLASS_MAPPINGS


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_example_workflow_matches_node_definitions(builtin_nodes, workflow):
    """Every node of the example workflow exists in ComfyUI (core, its comfy_extras, this pack, or
    the frontend's own notes), every link joins matching types, and each node has one widget value
    per widget input."""
    with open(os.path.join(REPO, "example_workflows", workflow), encoding="utf-8") as f:
        wf = json.load(f)
    by_id = {n["id"]: n for n in wf["nodes"]}
    for node in wf["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            assert len(node["widgets_values"]) == 1 and node["widgets_values"][0].strip()
            continue
        cls = builtin_nodes.get(node["type"])
        assert cls is not None, f"{workflow}: unknown node type {node['type']}"
        spec = cls.INPUT_TYPES()
        widgets = 0
        for name, value in {**spec.get("required", {}), **spec.get("optional", {})}.items():
            kind = value[0]
            options = value[1] if len(value) > 1 else {}
            if (isinstance(kind, list) or str(kind) in WIDGET_TYPES) and not options.get("forceInput"):
                widgets += 1 + bool(options.get("control_after_generate"))
                # widgets the frontend adds: an upload button, and a remote list's auto-refresh toggle + button
                widgets += bool(options.get("image_upload")) + 2 * bool(options.get("remote", {}).get("refresh_button"))
            elif name in spec.get("required", {}):
                assert name in [i["name"] for i in node["inputs"]], (workflow, node["type"], name)
        assert len(node["widgets_values"]) == widgets, (workflow, node["type"], node["widgets_values"], widgets)
        outputs = [str(t) for t in cls.RETURN_TYPES]
        assert [o["type"] for o in node["outputs"]] == outputs, (workflow, node["type"])
    for link_id, src, src_slot, dst, dst_slot, type_ in wf["links"]:
        assert by_id[src]["outputs"][src_slot]["type"] == type_ == by_id[dst]["inputs"][dst_slot]["type"], link_id
    used = {n["type"] for n in wf["nodes"]}
    assert "CacheDitAccelerate" in used and "CacheDitDetailedStats" in used


@pytest.mark.parametrize("strategy", ["adaptive", "dynamic"])
def test_advanced_config_every_knob(pack, comfy_harness, strategy):
    import torch
    import cachedit

    h = comfy_harness
    m = h.build_model("wan21_t2v")
    model = _run(pack.NODE_CLASS_MAPPINGS["CacheDitAdvancedConfig"], model=m, strategy=strategy, skip_interval=3,
                 warmup_steps=2, noise_scale=0.01, debug=True, residual_diff_threshold=0.9, Fn_compute_blocks=1,
                 Bn_compute_blocks=0, max_continuous_cached_steps=2, taylorseer=True, taylorseer_order=2,
                 start_percent=0.15, end_percent=0.85)[0]
    out = _sample(h, model, "wan21_t2v", steps=10)
    assert torch.isfinite(out).all()
    engine = cachedit.adapters.comfyui.engine_of(model)
    options = engine.options
    assert (options.strategy, options.skip_interval, options.noise_scale, options.taylorseer_order) == (strategy, 3, 0.01, 2)
    assert (options.start_percent, options.end_percent, options.debug) == (0.15, 0.85, True)
    config = options.cache_config
    assert (config.max_warmup_steps, config.residual_diff_threshold, config.max_continuous_cached_steps) == (2, 0.9, 2)
    record = cachedit.get_manager().stats.last_record(engine.key)
    reused = sorted(s.step for s in record.steps if s.reused)
    # step i of 10 sits at sigma percent i/10 ("simple"): the 15%..85% window holds steps 2..8
    assert reused and all(2 <= s <= 8 for s in reused), reused
