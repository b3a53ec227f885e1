"""The pack in the real UI: a ComfyUI server (the pinned tree, --cpu, a free port) with the pack as
the registry ships it in a temporary custom_nodes, the real frontend package, and headless
Chromium driven over the DevTools protocol (cdp.py). One test, one server and one browser:

1. every example workflow loads with no missing node, its nodes do not overlap as drawn, and its
   saved view (`extra.ds`) shows all of it at a readable zoom;
2. the four CacheDit nodes added from the node library show their whole English title;
3. in the Chinese UI (Comfy.Locale = zh, page reloaded) they show their whole Chinese title;
4. a small workflow built on the canvas (a tiny Flux model and conditioning from the test-only
   nodes in browser_pack/, CacheDit Advanced Config, KSampler, CacheDit Detailed Stats) is queued
   as the Run button queues it, and the stats node then shows the run's summary in Chinese words
   and a chart drawn at a readable size;
5. no page exception mentions CacheDit.

CACHEDIT_THUMBNAILS=<folder> also saves a screenshot of each example workflow there (how the
`example_workflows/*.jpg` thumbnails are made). About a minute on 2 cores, most of it ComfyUI's
start-up.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from . import registry_package
from .cdp import Chromium, Page

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORKFLOWS = sorted(f for f in os.listdir(os.path.join(REPO, "example_workflows")) if f.endswith(".json"))
EN = {"CacheDitAccelerate": "CacheDit Accelerate", "CacheDitAdvancedConfig": "CacheDit Advanced Config",
      "CacheDitCacheControl": "CacheDit Cache Control", "CacheDitDetailedStats": "CacheDit Detailed Stats"}
ZH = {"CacheDitAccelerate": "CacheDit 模型加速", "CacheDitAdvancedConfig": "CacheDit 高级配置",
      "CacheDitCacheControl": "CacheDit 缓存控制", "CacheDitDetailedStats": "CacheDit 详细统计"}
VIEWPORT = (1600, 1000)
MIN_ZOOM = 0.6  # the frontend stops drawing text below 8 px (14 px node text at zoom 0.57, its default)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """`python main.py --cpu` of the ComfyUI under test, in a base directory of its own."""

    def __init__(self, comfy_path: str, base: str, env: dict) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(base, "comfyui.log")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                 "--base-directory", base, "--disable-auto-launch", "--disable-api-nodes",
                 "--database-url", "sqlite:///:memory:"],
                cwd=comfy_path, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT)

    def log_tail(self, chars: int = 4000) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-chars:]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")
            try:  # poll interval, bounded by the deadline above; returns at once if ComfyUI exits
                self.process.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _prepare_base(base: str) -> None:
    """custom_nodes/ with the registry package and the test-only nodes; settings that skip the
    first-run template browser and keep the page from restoring the last workflow after `app`
    is up (a reload would otherwise swap the graph under the test); the output/ folder."""
    custom_nodes = os.path.join(base, "custom_nodes")
    os.makedirs(custom_nodes)
    registry_package.copy_to(os.path.join(custom_nodes, "cachedit-block-cache"))
    os.symlink(os.path.join(HERE, "browser_pack"), os.path.join(custom_nodes, "cachedit-test-nodes"))
    settings = os.path.join(base, "user", "default")
    os.makedirs(settings)
    with open(os.path.join(settings, "comfy.settings.json"), "w", encoding="utf-8") as f:
        # no missing-model dialog over the canvas (loaders point at models this server lacks) and
        # no minimap: the screenshots show the workflow; missing nodes are checked by the test itself
        json.dump({"Comfy.TutorialCompleted": True, "Comfy.Locale": "en", "Comfy.Workflow.Persist": False,
                   "Comfy.Workflow.ShowMissingModelsWarning": False, "Comfy.Workflow.ShowMissingNodesWarning": False,
                   "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False}, f)
    os.makedirs(os.path.join(base, "output"))


APP_READY = ("window.app && window.app.graph && window.app.canvas && "
             "window.LiteGraph && LiteGraph.registered_node_types['CacheDitDetailedStats']")


async def _open_app(page: Page) -> None:
    await page.wait_for(APP_READY, timeout=90, what="the ComfyUI app with the CacheDit nodes")


# -- 1. example workflows ---------------------------------------------------------------------------

LOAD_WORKFLOW = """
(async () => {
  const wf = %s;
  await app.loadGraphData(wf, true, true, %s);
  app.canvas.draw(true, true);
  const known = LiteGraph.registered_node_types;
  const nodes = app.graph._nodes;
  const boxes = nodes.map((n) => { const b = n.getBounding(); return [n.id, n.type, b[0], b[1], b[2], b[3]]; });
  return {
    count: nodes.length,
    missing: nodes.filter((n) => !known[n.type]).map((n) => n.type),
    broken: nodes.filter((n) => n.has_errors || n.last_serialization).map((n) => n.type),
    boxes,
    scale: app.canvas.ds.scale,
    lowQuality: app.canvas.low_quality,
    offset: [app.canvas.ds.offset[0], app.canvas.ds.offset[1]],
    canvas: [app.canvas.canvas.clientWidth, app.canvas.canvas.clientHeight],
    rect: (() => { const r = app.canvas.canvas.getBoundingClientRect();
                   return {x: r.x, y: r.y, width: r.width, height: r.height}; })(),
  };
})()
"""


def _overlaps(boxes) -> list:
    """Pairs of node ids whose drawn rectangles (title bar included) intersect."""
    pairs = []
    for i, (a_id, _, ax, ay, aw, ah) in enumerate(boxes):
        for b_id, _, bx, by, bw, bh in boxes[i + 1:]:
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                pairs.append((a_id, b_id))
    return pairs


async def _check_example_workflows(page: Page, thumbnails: str | None) -> None:
    for name in WORKFLOWS:
        with open(os.path.join(REPO, "example_workflows", name), encoding="utf-8") as f:
            wf = json.load(f)
        result = await page.evaluate(LOAD_WORKFLOW % (json.dumps(wf), json.dumps(name)))
        assert result["count"] == len(wf["nodes"]), name
        assert result["missing"] == [], f"{name}: node types the UI does not know: {result['missing']}"
        assert result["broken"] == [], f"{name}: nodes the UI could not create: {result['broken']}"
        assert _overlaps(result["boxes"]) == [], f"{name}: overlapping nodes {_overlaps(result['boxes'])}"
        scale, (ox, oy), (cw, ch) = result["scale"], result["offset"], result["canvas"]
        assert scale >= MIN_ZOOM and not result["lowQuality"], f"{name}: opens at zoom {scale:.2f}: text too small"
        left = min(b[2] for b in result["boxes"])
        top = min(b[3] for b in result["boxes"])
        right = max(b[2] + b[4] for b in result["boxes"])
        bottom = max(b[3] + b[5] for b in result["boxes"])
        screen = [(left + ox) * scale, (top + oy) * scale, (right + ox) * scale, (bottom + oy) * scale]
        assert screen[0] >= 0 and screen[1] >= 0 and screen[2] <= cw and screen[3] <= ch, \
            f"{name}: the saved view shows {screen} of a {cw}x{ch} canvas: part of the workflow is off screen"
        if thumbnails:
            _save_thumbnail(await page.screenshot_bytes(clip=result["rect"]), os.path.join(thumbnails, name[:-5] + ".jpg"))


def _save_thumbnail(png: bytes, path: str, width: int = 960) -> None:
    """The canvas screenshot, scaled to `width` px, as the JPEG beside a workflow."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.resize((width, round(image.height * width / image.width)), Image.LANCZOS).save(path, quality=85)


# -- 2./3. the nodes from the library, titles whole -------------------------------------------------

ADD_NODES = """
(() => {
  app.graph.clear();
  const ctx = document.createElement("canvas").getContext("2d");
  return %s.map((type, i) => {
    const node = LiteGraph.createNode(type);
    node.pos = [40 + 460 * i, 80];
    app.graph.add(node);
    ctx.font = node.titleFontStyle;
    return {type, title: node.title, width: node.size[0],
            needed: ctx.measureText(node.title).width + 2 * LiteGraph.NODE_TITLE_HEIGHT};
  });
})()
"""


async def _check_titles(page: Page, names: dict) -> None:
    nodes = await page.evaluate(ADD_NODES % json.dumps(list(names)))
    for node in nodes:
        assert node["title"] == names[node["type"]], node
        assert node["width"] >= node["needed"], f"title cut off: {node}"


# -- 4. a run from the canvas -----------------------------------------------------------------------

BUILD_AND_RUN = """
(async () => {
  app.graph.clear();
  const add = (type, x, y, values) => {
    const node = LiteGraph.createNode(type);
    node.pos = [x, y];
    app.graph.add(node);
    for (const [name, value] of Object.entries(values || {})) {
      const widget = node.widgets.find((w) => w.name === name);
      if (!widget) throw new Error(type + " has no widget " + name);
      widget.value = value;
    }
    return node;
  };
  const model = add("CacheDitTestTinyFlux", 20, 40);
  const cond = add("CacheDitTestConditioning", 20, 200);
  const latent = add("EmptySD3LatentImage", 20, 360, {width: 128, height: 128, batch_size: 1});
  const cache = add("CacheDitAdvancedConfig", 360, 40, {strategy: "fixed", skip_interval: 2, warmup_steps: 1,
                                                       max_continuous_cached_steps: -1});
  const sampler = add("KSampler", 760, 40, {seed: 0, control_after_generate: "fixed", steps: 6, cfg: 2.0,
                                            sampler_name: "euler", scheduler: "simple", denoise: 1.0});
  const stats = add("CacheDitDetailedStats", 1100, 40);
  model.connect(0, cache, 0);
  cache.connect(0, sampler, 0);
  cond.connect(0, sampler, 1);
  cond.connect(1, sampler, 2);
  latent.connect(0, sampler, 3);
  cache.connect(0, stats, 0);
  sampler.connect(0, stats, 1);
  window.__cachedit_stats = stats;
  window.comfyAPI.api.api.addEventListener("execution_error", (e) => { window.__cachedit_error = e.detail; });
  await app.queuePrompt(0, 1);
  return stats.id;
})()
"""

STATS_SHOWN = """
(() => {
  if (window.__cachedit_error) return {error: window.__cachedit_error};
  const node = window.__cachedit_stats;
  const widget = node.widgets && node.widgets.find((w) => w.name === "cachedit_summary");
  const img = node.imgs && node.imgs[0];
  if (!widget || !widget.value || !img || !img.complete || !img.naturalWidth) return null;
  app.canvas.draw(true, true);  // lays out the preview widget
  // how the frontend draws a node's single preview image: fitted into the node below the
  // preview widget's top, less a 15 px caption, never enlarged
  const preview = node.widgets.find((w) => w.name === "$$canvas-image-preview");
  const top = preview ? (preview.y ?? preview.last_y ?? 0) : 0;
  if (!top) return null;
  const chartScale = Math.min(node.size[0] / img.naturalWidth, (node.size[1] - top - 15) / img.naturalHeight, 1);
  return {text: widget.value, image: [img.naturalWidth, img.naturalHeight], chartScale};
})()
"""


async def _check_run(page: Page) -> None:
    await page.evaluate(BUILD_AND_RUN)
    shown = await page.wait_for(STATS_SHOWN, timeout=120, what="the stats node's summary and chart")
    assert "error" not in shown, f"the run failed: {shown['error']}"
    text = shown["text"]
    assert "最近一次运行：6 步中复用了 2 步。" in text and "复用的步：2, 4。" in text, text
    assert "设置：固定间隔，间隔 2" in text and "DBCache_" not in text, text
    chart = _chart_module()
    assert tuple(shown["image"]) == (chart.WIDTH, chart.HEIGHT)
    # the chart's smallest text, as drawn on the node at its default size (at 100% zoom)
    assert chart.MIN_FONT_PX * shown["chartScale"] >= 12, shown["chartScale"]


def _chart_module():
    """The pack's nodes/chart.py (PIL only), for its sizes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cachedit_pack_chart", os.path.join(REPO, "nodes", "chart.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pack_in_the_real_ui(comfy_harness, tmp_path):
    base = str(tmp_path / "comfyui")
    _prepare_base(base)
    server = ComfyServer(comfy_harness.comfy_path(), base, comfy_harness.child_env())
    thumbnails = os.environ.get("CACHEDIT_THUMBNAILS")

    async def session() -> None:
        async with Chromium.launch(str(tmp_path / "chromium")) as browser:
            page = await browser.open(server.url, *VIEWPORT)
            await _open_app(page)
            await _check_example_workflows(page, thumbnails)
            await _check_titles(page, EN)
            await page.evaluate("app.extensionManager.setting.set('Comfy.Locale', 'zh')")
            await page.evaluate("window.__cachedit_old_page = true; setTimeout(() => location.reload(), 0)")
            await page.wait_for("!window.__cachedit_old_page", timeout=30, what="the page to reload")
            await _open_app(page)
            await _check_titles(page, ZH)
            await _check_run(page)
            ours = [e for e in page.exceptions if "cachedit" in e.lower()]
            assert ours == [], ours

    try:
        server.wait_ready(timeout=120)
        asyncio.run(session())
    except BaseException:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
