"""A small Chrome DevTools Protocol client for the browser test: headless Chromium driven over
its websocket with aiohttp (already installed with ComfyUI's requirements), no browser download.

    async with Chromium.launch(profile_dir) as browser:
        page = await browser.open(url, width=1600, height=1000)
        await page.wait_for("window.app && window.app.graph", timeout=60)
        value = await page.evaluate("1 + 1")
        await page.screenshot("canvas.png")  # or screenshot_bytes(clip={...})

`CHROMIUM` names the browser binary (default: chromium on PATH, Debian's package, installed by
scripts/comfyui_for_tests.sh). Waits poll against a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from typing import Any, Dict, List, Optional

import aiohttp

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--hide-scrollbars", "--mute-audio", "--remote-debugging-port=0"]


def chromium_path() -> Optional[str]:
    """The Chromium binary: $CHROMIUM, else `chromium` / `chromium-browser` on PATH (None if none)."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    return shutil.which("chromium") or shutil.which("chromium-browser")


class CDPError(RuntimeError):
    """A DevTools command failed, or page JavaScript threw."""


class Page:
    """One browser tab (a flattened CDP session)."""

    def __init__(self, browser: "Chromium", session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id
        self.exceptions: List[str] = []  # uncaught page exceptions (Runtime.exceptionThrown)

    async def send(self, method: str, params: Optional[dict] = None) -> dict:
        return await self.browser.send(method, params, session_id=self.session_id)

    async def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        """The value of a JavaScript expression (promises awaited), or CDPError with the JS error."""
        reply = await asyncio.wait_for(self.send("Runtime.evaluate", {
            "expression": expression, "awaitPromise": True, "returnByValue": True, "userGesture": True}), timeout)
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"JavaScript error: {text}\n  in: {expression[:300]}")
        return reply.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float, what: str = "") -> Any:
        """Poll `expression` until it is truthy (returns its value); CDPError after `timeout` s."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            try:
                value = await self.evaluate(expression, timeout=max(1.0, deadline - time.monotonic()))
                if value:
                    return value
            except (CDPError, asyncio.TimeoutError) as exc:
                last_error = str(exc)
            if time.monotonic() > deadline:
                raise CDPError(f"timed out after {timeout:.0f} s waiting for {what or expression!r} {last_error}")
            await asyncio.sleep(0.1)  # poll interval, bounded by the deadline above

    async def screenshot_bytes(self, clip: Optional[dict] = None) -> bytes:
        """A PNG of the viewport, or of the `clip` rectangle (x, y, width, height in CSS px)."""
        params: Dict[str, Any] = {"format": "png"}
        if clip is not None:
            params["clip"] = {**clip, "scale": clip.get("scale", 1)}
        reply = await self.send("Page.captureScreenshot", params)
        return base64.b64decode(reply["data"])

    async def screenshot(self, path: str, clip: Optional[dict] = None) -> None:
        """Save a PNG of the viewport (or of `clip`) to `path`."""
        with open(path, "wb") as f:
            f.write(await self.screenshot_bytes(clip))


class Chromium:
    """A headless Chromium with a fresh profile, driven over its browser websocket."""

    def __init__(self, process: subprocess.Popen, ws: aiohttp.ClientWebSocketResponse,
                 http: aiohttp.ClientSession) -> None:
        self.process = process
        self.ws = ws
        self.http = http
        self._ids = itertools.count(1)
        self._pending: Dict[int, asyncio.Future] = {}
        self._pages: Dict[str, Page] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    def launch(cls, profile_dir: str, timeout: float = 30.0) -> "_Launch":
        return _Launch(profile_dir, timeout)

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(CDPError(f"{data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
            elif data.get("method") == "Runtime.exceptionThrown":
                page = self._pages.get(data.get("sessionId", ""))
                if page is not None:
                    details = data["params"]["exceptionDetails"]
                    page.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CDPError("the browser closed the DevTools connection"))

    async def send(self, method: str, params: Optional[dict] = None, session_id: Optional[str] = None) -> dict:
        message: Dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        future = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = future
        await self.ws.send_str(json.dumps(message))
        return await future

    async def open(self, url: str, width: int = 1600, height: int = 1000) -> Page:
        """A new tab of `width` x `height` CSS pixels showing `url` (returns once created)."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        self._pages[page.session_id] = page
        await page.send("Runtime.enable")
        await page.send("Page.enable")
        await page.send("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        await page.send("Page.navigate", {"url": url})
        return page

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.send("Browser.close"), 5)
        except Exception:
            pass
        self._reader.cancel()
        await self.ws.close()
        await self.http.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _Launch:
    """`async with Chromium.launch(dir) as browser`: starts Chromium, always stops it."""

    def __init__(self, profile_dir: str, timeout: float) -> None:
        self.profile_dir = profile_dir
        self.timeout = timeout
        self.browser: Optional[Chromium] = None

    async def __aenter__(self) -> Chromium:
        binary = chromium_path()
        if binary is None:
            raise CDPError("no Chromium: install Debian's chromium (scripts/comfyui_for_tests.sh does) or set CHROMIUM")
        os.makedirs(self.profile_dir, exist_ok=True)
        log = open(os.path.join(self.profile_dir, "chromium.log"), "wb")
        process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile_dir}", "about:blank"],
                                   stdout=log, stderr=subprocess.STDOUT)
        log.close()
        port_file = os.path.join(self.profile_dir, "DevToolsActivePort")
        deadline = time.monotonic() + self.timeout
        lines: List[str] = []
        while len(lines) < 2:
            if process.poll() is not None:
                raise CDPError(f"Chromium exited ({process.returncode}); see {self.profile_dir}/chromium.log")
            if time.monotonic() > deadline:
                process.kill()
                raise CDPError(f"Chromium did not open its DevTools port within {self.timeout:.0f} s")
            if os.path.exists(port_file):
                with open(port_file, encoding="utf-8") as f:
                    lines = f.read().split()
            await asyncio.sleep(0.05)  # poll interval, bounded by the deadline above
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", max_msg_size=0)
        self.browser = Chromium(process, ws, http)
        return self.browser

    async def __aexit__(self, *exc) -> None:
        if self.browser is not None:
            await self.browser.close()
