"""Every notebook runs top to bottom on the organism (executed, not just imported); the repository
opens them as notebooks in JupyterLab and notebooks/build.py finds them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parent.parent
# notebooks/build.py is the script that executes them, not a notebook
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("*.py") if p.name != "build.py")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
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
            ns["mode"].value = "rotate"
            ns["angle"].value = 180
            runs["rotate"] = ns["LAST"]["rows"]
            runs["settings"] = ns["LAST"]["settings"]
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


def _build_script():
    spec = importlib.util.spec_from_file_location("notebooks_build", ROOT / "notebooks" / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_script_picks_notebooks_by_name_or_prefix():
    build = _build_script()
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
    assert config.default_formats(str(ROOT / "workbench" / "figures.py")) is None


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


def test_build_script_executes_a_notebook_into_its_ipynb(tmp_path):
    import jupytext

    source = tmp_path / "tiny.py"
    source.write_text('# %% [markdown]\n# # tiny\n\n# %%\nx = 6 * 7\nprint("answer", x)\n\n# %%\nx\n')
    (written,) = _build_script().build(source, timeout=120, html=False)
    assert written == tmp_path / "tiny.ipynb"
    notebook = jupytext.read(written)
    assert "jupytext" not in notebook.metadata
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert outputs[0]["text"] == "answer 42\n"
    assert outputs[1]["data"]["text/plain"] == "42"
    assert all("execution" not in cell.metadata for cell in notebook.cells)  # no timestamps to churn
