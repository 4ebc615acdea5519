"""A headless Chromium driven over the Chrome DevTools Protocol, for the browser tests.

No driver and no new dependency: Chromium opens a DevTools websocket (``--remote-debugging-port=0``
writes the port it picked into the profile's DevToolsActivePort) and tornado, which Jupyter already
installs, speaks websocket. Only what the tests need: open a page, evaluate JavaScript, wait for a
condition, take a screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str | None:
    """Debian's Chromium, or another ``chromium`` on PATH; None when there is none."""
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


class Browser:
    """One headless Chromium with a fresh profile under ``workdir``, showing ``url`` in a single tab."""

    def __init__(self, url: str, workdir: Path, *, size: tuple[int, int] = (1400, 1000), timeout: float = 60):
        from tornado.websocket import websocket_connect

        exe = chromium()
        if exe is None:
            raise RuntimeError("no chromium found")
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True)
        self.log = (workdir / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            [
                exe,
                *FLAGS,
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}",
            ]
            + [url],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.loop = asyncio.new_event_loop()
        self.next_id = 0
        try:
            port = self._port(profile / "DevToolsActivePort", timeout)
            pages = []
            deadline = time.monotonic() + timeout
            while not pages and time.monotonic() < deadline:  # the tab appears shortly after the port
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                time.sleep(0.2)
            if not pages:
                raise RuntimeError(f"chromium opened no page within {timeout} s")
            url = pages[0]["webSocketDebuggerUrl"]

            async def connect():  # in a coroutine: tornado binds the connection to the running loop
                return await websocket_connect(url, max_message_size=1 << 28)  # screenshots exceed 10 MiB

            self.ws = self.loop.run_until_complete(connect())
        except BaseException:
            self.close()
            raise

    def _port(self, path: Path, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.proc.returncode}")
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.1)
        raise RuntimeError(f"chromium opened no DevTools port within {timeout} s")

    def send(self, method: str, **params) -> dict:
        """One DevTools command; its result (events arriving meanwhile are dropped)."""
        self.next_id += 1
        ident = self.next_id

        async def call() -> dict:
            await self.ws.write_message(json.dumps({"id": ident, "method": method, "params": params}))
            while True:
                message = await asyncio.wait_for(self.ws.read_message(), 60)
                if message is None:
                    raise RuntimeError("the DevTools connection closed")
                reply = json.loads(message)
                if reply.get("id") == ident:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]

        return self.loop.run_until_complete(call())

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> Any:
        """Poll ``expression`` until it is truthy; its last value (falsy after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.5)

    def screenshot(self, path: Path, *, full_page: bool = False) -> Path:
        """A PNG of the viewport (``full_page``: of the whole page) written to ``path``."""
        params: dict = {"format": "png"}
        if full_page:
            metrics = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={**_box(metrics), "scale": 1})
        data = base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def screenshot_element(self, selector: str, path: Path, *, pad: int = 8) -> Path:
        """A PNG of the first element matching ``selector``, scrolled into view."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
            " const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}; })()"
        )
        time.sleep(0.5)  # let the scrolled view repaint
        clip = {
            "x": max(box["x"] - pad, 0),
            "y": max(box["y"] - pad, 0),
            "width": box["width"] + 2 * pad,
            "height": box["height"] + 2 * pad,
            "scale": 1,
        }
        data = base64.b64decode(self.send("Page.captureScreenshot", format="png", clip=clip)["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.loop.close()
        self.log.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _box(size: dict) -> dict:
    return {"x": 0, "y": 0, "width": size["width"], "height": size["height"]}
