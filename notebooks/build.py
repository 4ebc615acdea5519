"""Regenerate the executed copies of the notebooks: notebooks/NAME.py → notebooks/NAME.ipynb (with outputs).

    .venv/bin/python notebooks/build.py              # every notebook (minutes each on a CPU)
    .venv/bin/python notebooks/build.py 03 --html    # one notebook (a name or its prefix), plus NAME.html

Each percent-format source is read with jupytext, executed top to bottom in a fresh ``python3`` kernel
(nbclient, working directory notebooks/) and written next to it as ``.ipynb``, the pair that
``jupytext.toml`` declares, so JupyterLab opens the source with these outputs. The kernel runs with
``WORKBENCH_STATIC_FIGURES=1``, so ``workbench.figures.use_notebook_renderer()`` (each notebook's
first cell) stores every Plotly figure as the plotly mimetype (interactive in JupyterLab) plus a PNG
(what a code host such as GitHub shows), without plotly.js: the committed files stay small.
``--html`` also exports the executed notebook with nbconvert, each figure interactive (plotly.js
embedded once, offline). A cell that raises stops the build with exit code 1 and writes nothing for
that notebook.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATIC_ENV = "WORKBENCH_STATIC_FIGURES"  # workbench.figures.STATIC_ENV (not imported: this runs from notebooks/)
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def sources() -> list[Path]:
    return sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name)


def pick(names: list[str]) -> list[Path]:
    """The sources named (stem, its prefix such as ``03``, or a path); all of them when none is named."""
    available = sources()
    if not names:
        return available
    chosen = []
    for name in names:
        stem = Path(name).stem
        hits = [p for p in available if p.stem == stem] or [p for p in available if p.stem.startswith(stem)]
        if len(hits) != 1:
            known = ", ".join(p.stem for p in available)
            raise SystemExit(f"build.py: error: {name!r} names {len(hits)} notebooks; choose one of {known}")
        chosen += hits
    return chosen


POLL_SLICE_S = 1.0  # how often a wait for the kernel's reply looks at its socket again


def _sliced(get_msg):
    """``get_msg`` that waits in slices of :data:`POLL_SLICE_S` up to the same total timeout."""
    from queue import Empty

    async def get(timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE_S if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await get_msg(timeout=min(POLL_SLICE_S, left))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    return get


def notebook_client(notebook, **kwargs):
    """An nbclient ``NotebookClient`` (``kwargs`` as its own) that reads the kernel's replies in
    one-second polls.

    nbclient waits for a cell's reply with one poll as long as the cell timeout. With ipywidgets in
    the kernel that poll can miss a reply already queued, and both sides then sit idle until the
    timeout (jupyter/nbclient#312; seen with 04_live_steering in loaded full test runs). A new poll
    looks at the socket's queue first, so polling in slices picks such a reply up within a second.
    """
    from nbclient import NotebookClient

    class SlicedPollClient(NotebookClient):
        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            for channel in (kc.shell_channel, kc.iopub_channel):
                channel.get_msg = _sliced(channel.get_msg)
            return kc

    return SlicedPollClient(notebook, **kwargs)


def build(source: Path, *, timeout: int, html: bool) -> list[Path]:
    import jupytext

    notebook = jupytext.read(source)
    notebook.metadata.pop("jupytext", None)  # the pairing lives in jupytext.toml, not in each copy
    client = notebook_client(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,  # no per-cell timestamps: a rebuild only changes what the outputs change
        resources={"metadata": {"path": str(source.parent)}},
    )
    before = os.environ.get(STATIC_ENV)
    os.environ[STATIC_ENV] = "1"  # the kernel inherits this process's environment
    try:
        client.execute()
    finally:
        if before is None:
            os.environ.pop(STATIC_ENV, None)
        else:
            os.environ[STATIC_ENV] = before
    written = [source.with_suffix(".ipynb")]
    jupytext.write(notebook, written[0], fmt="ipynb")
    if html:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_notebook_node(interactive_copy(notebook))
        written.append(source.with_suffix(".html"))
        written[-1].write_text(body, encoding="utf-8")
    return written


def interactive_copy(notebook):
    """A copy of ``notebook`` whose Plotly outputs also carry interactive HTML (nbconvert prefers it
    to the PNG), plotly.js embedded in the first one only."""
    import plotly.io as pio

    notebook = copy.deepcopy(notebook)
    first = True
    for cell in notebook.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            spec = output.get("data", {}).get(PLOTLY_MIME)
            if spec is None:
                continue
            fig = pio.from_json(json.dumps(spec), skip_invalid=True)
            output["data"]["text/html"] = pio.to_html(fig, include_plotlyjs=first, full_html=False)
            first = False
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks to build (default: all), e.g. 03 or 03_layer_hooks")
    parser.add_argument("--html", action="store_true", help="also write NAME.html (nbconvert)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run (default 1800)")
    args = parser.parse_args(argv)
    for source in pick(args.names):
        print(f"build.py: executing {source.name} ...", flush=True)
        try:
            written = build(source, timeout=args.timeout, html=args.html)
        except Exception as exc:  # CellExecutionError carries the cell and its traceback
            print(f"build.py: {source.name} failed:\n{exc}", file=sys.stderr)
            return 1
        for path in written:
            print(f"build.py: wrote {path.relative_to(HERE.parent)} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
