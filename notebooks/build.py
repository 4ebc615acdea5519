"""Regenerate the executed copies of the notebooks: notebooks/NAME.py → notebooks/NAME.ipynb (with outputs).

    .venv/bin/python notebooks/build.py              # every notebook (minutes each on a CPU)
    .venv/bin/python notebooks/build.py 03 --html    # one notebook (a name or its prefix), plus NAME.html

Each percent-format source is read with jupytext, executed top to bottom in a fresh ``python3`` kernel
(nbclient, working directory notebooks/) and written next to it as ``.ipynb``, the pair that
``jupytext.toml`` declares, so JupyterLab opens the source with these outputs. ``--html`` also exports
the executed notebook with nbconvert (figures included: the notebooks call
``workbench.figures.use_notebook_renderer()``). A cell that raises stops the build with exit code 1
and writes nothing for that notebook.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


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


def build(source: Path, *, timeout: int, html: bool) -> list[Path]:
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(source)
    notebook.metadata.pop("jupytext", None)  # the pairing lives in jupytext.toml, not in each copy
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,  # no per-cell timestamps: a rebuild only changes what the outputs change
        resources={"metadata": {"path": str(source.parent)}},
    )
    client.execute()
    written = [source.with_suffix(".ipynb")]
    jupytext.write(notebook, written[0], fmt="ipynb")
    if html:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_notebook_node(notebook)
        written.append(source.with_suffix(".html"))
        written[-1].write_text(body, encoding="utf-8")
    return written


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
