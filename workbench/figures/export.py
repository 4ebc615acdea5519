"""Figures out of the process: :func:`save_figure` (self-contained HTML and, when kaleido finds a
Chromium, a PNG; an unchanged figure is not rewritten) and the ``workbench_png`` notebook renderer.

One kaleido browser serves the process, behind a lock, each call on a thread of its own with a
timeout; the PNG carries a sha256 of what it is drawn from in a tEXt chunk, so an unchanged figure
skips the export.
"""

from __future__ import annotations

import base64
import re
import threading
import warnings
import zlib
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.io._base_renderers import MimetypeRenderer
from plotly.offline import get_plotlyjs

from ..artifacts import atomic_write_bytes, atomic_write_text
from . import drawn
from .style import PNG_SIZE

NOTEBOOK_PNG = {"width": 1000, "height": 600, "scale": 1}  # the notebook's column width; keeps files small


def _png_opts(fig: go.Figure, size: dict) -> dict:
    """kaleido's options: the figure's own width/height where it sets them, else ``size``'s."""
    return {
        "format": "png",
        "width": fig.layout.width or size["width"],
        "height": fig.layout.height or size["height"],
        "scale": size["scale"],
    }


class _NotebookPng(MimetypeRenderer):
    """A PNG of the figure in the display bundle, through the process's kaleido browser (:func:`_png`)."""

    def to_mimebundle(self, fig_dict: dict) -> dict:
        fig = go.Figure(fig_dict)
        opts = _png_opts(fig, NOTEBOOK_PNG)
        data = _png(fig, opts)
        return {"image/png": base64.b64encode(data).decode("ascii")} if data else {}


pio.renderers["workbench_png"] = _NotebookPng()


_EXPORT: dict = {"up": False, "failed": None, "warned": False}  # kaleido's sync server in this process
_LOCK = threading.Lock()
_TIMEOUT = 120  # s: the first PNG includes the browser's start; kaleido itself gives up on a render after 90 s
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SPEC_KEY = b"workbench-drawn-spec"  # the figure as drawn (drawn.encode), compared on the next save


def _find_browser() -> str | None:
    """The Chrome/Chromium kaleido would use (BROWSER_PATH, kaleido's download, PATH, /usr/bin/chromium)."""
    try:
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False)
    except Exception:  # noqa: BLE001 kaleido/choreographer missing or broken
        return None


def _calc_png(fig_dict: dict, opts: dict) -> bytes:
    """``kaleido.calc_fig_sync``, or a TimeoutError after ``_TIMEOUT`` seconds."""
    import kaleido

    result: Future = Future()

    def call():
        try:
            result.set_result(kaleido.calc_fig_sync(fig_dict, opts=opts))
        except BaseException as e:  # noqa: BLE001 handed to the caller
            result.set_exception(e)

    # on a thread of its own: kaleido's server waits forever if its browser failed to start (plotly/Kaleido#422)
    threading.Thread(target=call, daemon=True, name="kaleido-call").start()
    return result.result(_TIMEOUT)


def _png(fig: go.Figure, opts: dict) -> bytes | None:
    """PNG bytes, or None (with one warning per process) when static export is unavailable."""
    with _LOCK:
        if not _EXPORT["up"] and _EXPORT["failed"] is None:
            browser = _find_browser()
            try:
                if browser is None:
                    raise RuntimeError("no Chrome/Chromium found for kaleido")
                import kaleido

                # one browser for the process: ≈2 s to start, then ≈0.3 s a PNG; kaleido closes it at exit.
                # No MathJax: it would come from a CDN.
                kaleido.start_sync_server(n=1, mathjax=False, path=browser, silence_warnings=True)
                _EXPORT["up"] = True
            except Exception as e:  # noqa: BLE001
                _EXPORT["failed"] = str(e) or repr(e)
        if _EXPORT["up"]:
            try:
                return _calc_png(fig.to_dict(), opts)
            except FutureTimeout:
                _EXPORT["up"] = False  # the server is stuck: send it nothing more
                _EXPORT["failed"] = f"kaleido gave no PNG within {_TIMEOUT} s"
            except Exception as e:  # noqa: BLE001
                _EXPORT["failed"] = f"kaleido export failed: {e!r}"
        if not _EXPORT["warned"]:
            _EXPORT["warned"] = True
            warnings.warn(
                f"PNG export skipped ({_EXPORT['failed']}); writing HTML only. Install a browser with "
                "`apt-get install chromium` (or, where online, `python -c 'import kaleido; "
                "kaleido.get_chrome_sync()'`), or set BROWSER_PATH.",
                RuntimeWarning,
                stacklevel=3,
            )
        return None


def _png_with_text(png: bytes, key: bytes, text: str) -> bytes:
    """``png`` with a tEXt chunk ``key``/``text`` inserted right after its IHDR chunk."""
    if png[:8] != _PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ValueError("not a PNG (no signature and IHDR chunk at its start)")
    end = 8 + 12 + int.from_bytes(png[8:12], "big")  # a chunk: length, type, data, CRC
    body = b"tEXt" + key + b"\0" + text.encode("latin-1")
    chunk = (len(body) - 4).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    return png[:end] + chunk + png[end:]


def _png_text(path: Path, key: bytes) -> str | None:
    """The text of the tEXt chunk ``key`` before the image data of the PNG file ``path``, or None."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != _PNG_SIGNATURE:
                return None
            while len(head := f.read(8)) == 8 and head[4:] not in (b"IDAT", b"IEND"):
                data = f.read(int.from_bytes(head[:4], "big") + 4)[:-4]  # data + CRC
                if head[4:] == b"tEXt" and data.startswith(key + b"\0"):
                    return data[len(key) + 1 :].decode("latin-1")
    except OSError:
        pass
    return None


def _write_changed(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically unless the file already holds exactly these bytes."""
    if not (path.is_file() and path.read_bytes() == data):
        atomic_write_bytes(path, data)


def save_figure(fig: go.Figure, name: str, outdir: str | Path = "figures", *, png: bool = True) -> list[Path]:
    """Write ``outdir/<name>.html`` (offline: it loads the ``plotly.min.js`` written once beside it,
    instead of embedding 4.6 MB of plotly.js in every figure) and
    ``outdir/<name>.png`` (kaleido; ``PNG_SIZE`` unless the figure sets width/height), each atomically.

    Returns the paths written. Without a Chromium for kaleido the PNG is skipped, with one warning
    per process. ``png=False`` writes only the HTML.

    A file that would not change is left untouched (bytes and mtime), so a rerun keeps ``git status``
    clean: the HTML (div id taken from ``name``) is compared byte for byte; the PNG carries the figure
    as drawn (:mod:`.drawn`: its JSON, hover text dropped, numbers kept to 1e-5 of their array's scale)
    in a tEXt chunk, and the export is skipped while the new figure draws the same within 1/1000 of
    each array's scale (another CPU's rounding differs by ~1e-6), so no host rewrites another's PNG.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = [outdir / f"{name}.html"]
    bundle = outdir / "plotly.min.js"
    if not bundle.exists():
        atomic_write_text(bundle, get_plotlyjs())
    div_id = re.sub(r"[^\w-]", "-", name)  # plotly's default is a random uuid
    _write_changed(paths[0], fig.to_html(include_plotlyjs="plotly.min.js", full_html=True, div_id=div_id).encode())
    if png:
        target = outdir / f"{name}.png"
        opts = _png_opts(fig, PNG_SIZE)
        now = drawn.spec(fig, opts)
        before = drawn.decode(_png_text(target, _SPEC_KEY))
        if before is None or not drawn.same(before, now):  # Chromium's PNG bytes differ run to run: only on change
            data = _png(fig, opts)
            if data is None:
                return paths
            atomic_write_bytes(target, _png_with_text(data, _SPEC_KEY, drawn.encode(now)))
        paths.append(target)
    return paths
