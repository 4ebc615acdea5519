"""Every notebook runs top to bottom on the organism (executed, not just imported); the repository
opens them as notebooks in JupyterLab and notebooks/build.py finds them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parent.parent
# notebooks/build.py is the script that executes them, not a notebook
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("*.py") if p.name != "build.py")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, build):
    import warnings

    import jupytext
    from nbclient.exceptions import CellTimeoutError

    # build.py's client polls the kernel's replies in slices: one long poll missed a reply of 04's
    # widget kernel in every loaded full-suite run here (jupyter/nbclient#312). No cell takes 10
    # minutes, so a timeout would be that hang again: say so, and run the notebook once more, fresh.
    for attempt in (1, 2):
        notebook = jupytext.read(path)
        client = build.notebook_client(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        )
        try:
            client.execute()
            break
        except CellTimeoutError:
            if attempt == 2:
                raise
            warnings.warn(f"{path.name}: a cell timed out (a kernel hang?); running the notebook again", stacklevel=1)
    errors = [
        o
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors


@pytest.mark.slow
def test_live_steering_controls_regenerate_when_driven(tmp_path, monkeypatch):
    """04_live_steering: setting the widgets' values reruns the callback, and its rows
    change: the first default harmful prompt is refused unsteered and answered with the direction
    ablated everywhere; rotating the plane to 180° changes the responses too."""
    # In this process, not through nbclient: driving the widgets over a kernel hung once with the
    # kernel idle (nbclient waiting for a reply); test_notebook_runs executes the notebook in a kernel.
    import contextlib
    import io

    import jupytext

    notebook = jupytext.read(ROOT / "notebooks" / "04_live_steering.py")
    code = "\n\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    ns: dict = {}
    monkeypatch.chdir(tmp_path)
    grad_was = torch.is_grad_enabled()  # the notebook turns grad off for the whole process
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # displayed tables and figures print their repr here
            exec(compile(code, "04_live_steering.py", "exec"), ns)
            runs = {"none": ns["LAST"]["rows"]}
            ns["location"].value = "all"
            ns["mode"].value = "ablate"
            runs["ablate"] = ns["LAST"]["rows"]
            runs["ablate_maps"] = ns["where_figures"](ns["LAST"]["settings"], ns["LAST"]["rows"])
            ns["mode"].value = "rotate"
            ns["angle"].value = 180
            runs["rotate"] = ns["LAST"]["rows"]
            runs["settings"] = ns["LAST"]["settings"]
            runs["rotate_maps"] = ns["where_figures"](ns["LAST"]["settings"], ns["LAST"]["rows"])
            runs["direct"] = ns["steer"]({"mode": "none", "prompts": ns["DEFAULT_PROMPTS"]})
    finally:
        torch.set_grad_enabled(grad_was)
    none, ablate, rotate = runs["none"], runs["ablate"], runs["rotate"]
    assert len(none) == len(ablate) == len(rotate) == 4
    assert none[0]["label"] == "refusal"
    assert ablate[0]["label"].startswith("comply"), ablate[0]
    assert [r["response"] for r in rotate] != [r["response"] for r in none]
    assert runs["settings"]["mode"] == "rotate" and runs["settings"]["angle"] == 180
    assert runs["direct"] == none  # steer() alone gives what the panel showed (greedy, deterministic)
    # the maps mark the setting: ablation everywhere on the location comparison, rotation on the angle map
    ablate_angles, ablate_places = runs["ablate_maps"]
    rotate_angles, rotate_places = runs["rotate_maps"]
    assert _stars(ablate_angles) == [] and _stars(rotate_places) == []  # not a rotation / not a location
    harmful_refused = sum(r["label"] == "refusal" for r in ablate[:2]) / 2
    harmless_refused = sum(r["label"] == "refusal" for r in ablate[2:]) / 2
    assert _stars(ablate_places) == [
        ("now: harmful", ["everywhere"], [harmful_refused]),
        ("now: harmless", ["everywhere"], [harmless_refused]),
    ]
    assert [where for _, where, _ in _stars(rotate_angles)] == [[180.0], [180.0]]


def _stars(fig) -> list[tuple]:
    """(name, where, refused share) of each marker of the current setting in ``fig``."""
    polar = [(t.name, list(t.theta), list(t.r)) for t in fig.data if t.type == "scatterpolar"]
    cartesian = [(t.name, list(t.x), list(t.y)) for t in fig.data if t.type == "scatter"]
    return [star for star in polar + cartesian if (star[0] or "").startswith("now:")]


@pytest.fixture(scope="module")
def build(load_script):
    return load_script("notebooks/build.py")


def test_the_client_polls_the_kernel_in_slices_up_to_the_same_timeout(build):
    import asyncio
    from queue import Empty

    asked: list[float | None] = []

    def channel(replies_after: int):
        async def get_msg(timeout=None):
            asked.append(timeout)
            if len(asked) > replies_after:
                return {"msg": "reply"}
            await asyncio.sleep(timeout or 0)
            raise Empty

        return build._sliced(get_msg)

    assert asyncio.run(channel(2)(timeout=None)) == {"msg": "reply"}  # found on the third poll
    assert asked == [build.POLL_SLICE_S] * 3
    asked.clear()
    build.POLL_SLICE_S, before = 0.05, build.POLL_SLICE_S
    try:
        with pytest.raises(Empty):
            asyncio.run(channel(10**6)(timeout=0.12))  # gives up at the caller's own timeout
    finally:
        build.POLL_SLICE_S = before
    assert len(asked) in (3, 4) and all(t is not None and t <= 0.05 for t in asked)


def test_build_script_picks_notebooks_by_name_or_prefix(build):
    assert build.sources() == NOTEBOOKS
    assert build.pick([]) == NOTEBOOKS
    assert build.pick(["03"]) == [ROOT / "notebooks" / "03_layer_hooks.py"]
    assert build.pick(["notebooks/01_explore.py"]) == [ROOT / "notebooks" / "01_explore.py"]
    with pytest.raises(SystemExit, match="names 0 notebooks"):
        build.pick(["nope"])
    with pytest.raises(SystemExit, match="names 4 notebooks"):
        build.pick(["0"])


def test_jupytext_pairs_each_notebook_with_its_ipynb_and_nothing_else():
    from jupytext.config import find_jupytext_configuration_file, load_jupytext_configuration_file
    from jupytext.paired_paths import paired_paths

    config_file = find_jupytext_configuration_file(str(ROOT / "notebooks"))
    assert config_file == str(ROOT / "jupytext.toml")
    config = load_jupytext_configuration_file(config_file)
    for path in NOTEBOOKS:
        formats = config.default_formats(str(path))
        paths = [p for p, _ in paired_paths(str(path), "py:percent", formats)]
        assert sorted(paths) == sorted([str(path.with_suffix(".ipynb")), str(path)])
    assert config.default_formats(str(ROOT / "workbench" / "figures" / "__init__.py")) is None


def test_jupyterlab_opens_python_files_as_notebooks():
    overrides = json.loads((ROOT / ".jupyter" / "labconfig" / "default_setting_overrides.json").read_text())
    assert overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]["python"] == "Jupytext Notebook"
    assert "default_setting_overrides.json" in (ROOT / "setup.sh").read_text()


def test_notebooks_use_the_renderer_that_works_in_exported_html():
    import plotly.io as pio

    from workbench.figures import NOTEBOOK_RENDERER, use_notebook_renderer

    before = pio.renderers.default
    try:
        assert use_notebook_renderer() == NOTEBOOK_RENDERER == pio.renderers.default
        assert "notebook" in NOTEBOOK_RENDERER.split("+")  # the HTML half: plotly.js embedded, not a CDN
    finally:
        pio.renderers.default = before
    for path in NOTEBOOKS:
        assert "use_notebook_renderer()" in path.read_text(), path.name


def test_build_script_executes_a_notebook_into_its_ipynb(tmp_path, build):
    import jupytext

    source = tmp_path / "tiny.py"
    source.write_text('# %% [markdown]\n# # tiny\n\n# %%\nx = 6 * 7\nprint("answer", x)\n\n# %%\nx\n')
    (written,) = build.build(source, timeout=120, html=False)
    assert written == tmp_path / "tiny.ipynb"
    notebook = jupytext.read(written)
    assert "jupytext" not in notebook.metadata
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert outputs[0]["text"] == "answer 42\n"
    assert outputs[1]["data"]["text/plain"] == "42"
    assert all("execution" not in cell.metadata for cell in notebook.cells)  # no timestamps to churn


def test_static_renderer_bundles_the_figure_and_a_png_without_plotlyjs(monkeypatch):
    """With WORKBENCH_STATIC_FIGURES set (notebooks/build.py), a figure's display bundle is the plotly
    mimetype (interactive in JupyterLab) plus a PNG (a code host's view), and no HTML with plotly.js."""
    import base64

    import plotly.graph_objects as go
    import plotly.io as pio

    from workbench import figures

    if figures.export._find_browser() is None:
        pytest.skip("no Chromium for kaleido's PNG export")
    before = pio.renderers.default
    try:
        monkeypatch.setenv(figures.STATIC_ENV, "1")
        assert figures.use_notebook_renderer() == figures.STATIC_RENDERER == pio.renderers.default
        bundle = pio.renderers._build_mime_bundle(go.Figure(go.Bar(y=[1, 3, 2])).to_dict())
        monkeypatch.setenv(figures.STATIC_ENV, "0")
        assert figures.use_notebook_renderer() == figures.NOTEBOOK_RENDERER
    finally:
        pio.renderers.default = before
    assert set(bundle) == {"application/vnd.plotly.v1+json", "image/png"}
    png = base64.b64decode(bundle["image/png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert int.from_bytes(png[16:20], "big") == figures.NOTEBOOK_PNG["width"]  # IHDR width


def test_build_stores_small_figures_and_exports_them_interactive(tmp_path, build):
    """build.py: the executed copy holds each figure as plotly JSON + PNG, without plotly.js (small);
    the HTML export draws every figure interactively, with plotly.js embedded once."""
    from workbench import figures

    if figures.export._find_browser() is None:
        pytest.skip("no Chromium for kaleido's PNG export")
    assert build.STATIC_ENV == figures.STATIC_ENV
    source = tmp_path / "figs.py"
    source.write_text(
        "# %%\nimport os\nimport plotly.graph_objects as go\nfrom workbench.figures import use_notebook_renderer\n"
        "print(use_notebook_renderer(), os.environ.get('WORKBENCH_STATIC_FIGURES'))\n\n"
        "# %%\ngo.Figure(go.Bar(y=[1, 3, 2]))\n\n# %%\ngo.Figure(go.Scatter(y=[4, 1, 5]))\n"
    )
    ipynb, html = build.build(source, timeout=300, html=True)
    assert build.STATIC_ENV not in os.environ  # set for the kernel only
    notebook = json.loads(ipynb.read_text())
    outputs = [o for c in notebook["cells"] for o in c.get("outputs", [])]
    assert "".join(outputs[0]["text"]) == f"{figures.STATIC_RENDERER} 1\n"
    assert [sorted(o["data"]) for o in outputs[1:]] == [[build.PLOTLY_MIME, "image/png"]] * 2
    assert ipynb.stat().st_size < 500_000  # plotly.js alone is 4.6 MB
    page = html.read_text()
    assert page.count('class="plotly-graph-div"') == 2
    assert page.count("window.PlotlyConfig") == 1  # plotly.js embedded once, ahead of the first figure
