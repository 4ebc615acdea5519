"""Figures from hand-built tidy tables (real column names, no model is loaded)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from workbench import figures as F
from workbench.figures import drawn as D
from workbench.figures import export as E
from workbench.figures.style import _wrap
from workbench.labels import ALL_LABELS
from workbench.steering_math import special_cases

CONDS = ["addition", "none", "resid", "attn", "mlp", "all"]  # deliberately out of order
LABELS = list(ALL_LABELS)
rng = np.random.default_rng(0)


def shares(n: int) -> dict:
    p = rng.dirichlet(np.ones(len(LABELS)), size=n)
    return {f"share_{lab}": p[:, i] for i, lab in enumerate(LABELS)}


@pytest.fixture
def locations():
    summary = pd.DataFrame(
        [
            {
                "split": s,
                "condition": c,
                "refusal_rate": rng.uniform(),
                "empty_rate": 0.1,
                "logodds": 0.0,
                "kl": rng.uniform(),
                "n": 3,
            }
            for s in ("harmful", "harmless")
            for c in CONDS
        ]
    )
    per_prompt = pd.DataFrame(
        [
            {
                "split": s,
                "condition": c,
                "prompt": f"prompt {i} " + "word " * 80,
                "response": "<b>Sure</b>\n" + "x" * 900,
                "refused": i == 0,
                "empty": False,
                "label": "comply",
                "setting": 0,
                "logodds": 0.0,
                "kl": rng.uniform(),
            }
            for s in ("harmful", "harmless")
            for c in CONDS
            for i in range(3)
        ]
    )
    return summary, per_prompt


def keys(n_layers=4, positions=(-2, -1), sites=("resid_pre",)):
    return [SimpleNamespace(site=s, layer=i, pos=p) for s in sites for i in range(n_layers) for p in positions]


def test_location_comparison(locations):
    summary, per_prompt = locations
    fig = F.location_comparison(summary, model="smollm2")
    assert isinstance(fig, go.Figure)
    assert [t.type for t in fig.data] == ["bar", "scatter", "bar", "scatter", "bar"]
    assert list(fig.data[0].x) == [
        "none",
        "resid only",
        "attn out only",
        "MLP out only",
        "everywhere",
        "addition (+αr)",
    ]
    assert "smollm2" in fig.layout.title.text and "attention output only" in fig.layout.title.text
    assert fig.data[0].name == "harmful" and fig.data[0].marker.color == F.SPLIT_COLORS["harmful"]
    assert fig.layout.yaxis2.title.text == "mean KL on harmless prompts (nats)"
    kl = fig.data[-1]  # measured on harmless prompts only: its own neutral colour, named in the legend
    assert kl.xaxis == "x2" and kl.name == "KL on harmless prompts" and kl.showlegend is not False
    assert kl.marker.color == F.style.NEUTRAL and kl.marker.color not in F.SPLIT_COLORS.values()
    assert "harmless prompts only" in fig.layout.annotations[1].text
    fig = F.location_comparison(summary.drop(columns="empty_rate").query("condition != 'mlp'"), per_prompt)
    assert [t.type for t in fig.data] == ["bar", "bar", "bar", "box"]
    assert len(fig.data[0].x) == 5 and "mlp" not in list(fig.data[0].x)
    hover = fig.data[3].text[0]
    assert "<br>" in hover and "…" in hover and "&lt;b&gt;" in hover and len(hover) < 800
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['refusal_rate'\]"):
        F.location_comparison(summary.drop(columns="refusal_rate"))
    with pytest.raises(ValueError, match="response"):
        F.location_comparison(summary, per_prompt.drop(columns="response"))


def test_selection_heatmaps():
    ks = keys(sites=("resid_pre", "resid_post"))
    table = pd.DataFrame(
        {
            "site": [k.site for k in ks],
            "layer": [k.layer for k in ks],
            "pos": [k.pos for k in ks],
            "bypass": rng.normal(size=len(ks)),
            "induce": rng.normal(size=len(ks)),
            "kl": np.nan,
            "auc": rng.uniform(size=len(ks)),
        }
    )
    choices = {"max_auc": ks[3], "arditi": ks[5], "other_site": ks[-1]}
    fig = F.selection_heatmaps(table, choices=choices, model="m")
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 3 and [t.name for t in heat] == ["bypass", "induce", "auc"]  # kl all-NaN, norm absent
    assert heat[0].zmid == 0 and heat[2].zmid is None
    assert heat[0].z.shape == (2, 4)
    marks = [t for t in fig.data if t.type == "scatter"]
    assert len(marks) == 3 and list(marks[0].text) == ["max_auc", "arditi"]
    assert marks[0].cliponaxis is False  # a top-row label is not cut off
    assert len(fig.layout.annotations) == 3 and "resid_pre" in fig.layout.title.text
    assert len(F.selection_heatmaps(table, site="resid_post", stats=("auc",)).data) == 1
    with pytest.raises(ValueError, match="sites"):
        F.selection_heatmaps(table, site="mlp_out")
    with pytest.raises(ValueError, match="none of the statistics"):
        F.selection_heatmaps(table, stats=("norm",))
    with pytest.raises(ValueError, match="pos"):
        F.selection_heatmaps(table.drop(columns="pos"))


def test_selection_heatmaps_show_the_kl_threshold_and_who_passes():
    ks = keys(n_layers=5)
    kl = np.array([0.02, 0.09, 0.1, 0.2, 0.3, 1.0, 5.0, 12.0, 0.0, 0.15])  # 0.1 passes: kl ≤ kl_max
    table = pd.DataFrame(
        {
            "layer": [k.layer for k in ks],
            "pos": [k.pos for k in ks],
            "bypass": rng.normal(size=len(ks)),
            "kl": kl,
            "arditi_pass": [False, True, True] + [False] * 7,
        }
    )
    fig = F.selection_heatmaps(table, stats=("bypass", "kl"), kl_fallback=0.25)
    heat = next(t for t in fig.data if t.type == "heatmap" and t.name == "kl")
    # log colour diverging at the threshold: two decades either side, 0.1 in the middle, marked
    assert heat.zmid == pytest.approx(-1) and (heat.zmin, heat.zmax) == pytest.approx((-3, 1))
    assert heat.colorscale[0][1] != heat.colorscale[-1][1]
    ticks = dict(zip(np.round(heat.colorbar.tickvals, 6), heat.colorbar.ticktext))
    assert "0.1 ◀" in ticks[-1.0] and "≤ 0.1 passes" in heat.colorbar.title.text
    assert np.nanmax(heat.z) == pytest.approx(1) and np.nanmin(heat.z) == pytest.approx(-3)  # clipped, not lost
    assert np.nanmax(np.asarray(heat.customdata, float)) == 12.0  # the hover keeps the true KL
    dots = {t.name: sorted(zip(t.x, t.y)) for t in fig.data if t.type == "scatter"}
    passing = sorted((k.layer, k.pos) for k, v in zip(ks, kl) if v <= 0.1)
    assert dots["kl ≤ 0.1"] == passing and len(passing) == 4
    assert dots["kl ≤ 0.25 (the fallback's threshold)"] == sorted(
        (k.layer, k.pos) for k, v in zip(ks, kl) if 0.1 < v <= 0.25
    )
    assert dots["passes every filter of Arditi's"] == [(ks[1].layer, ks[1].pos), (ks[2].layer, ks[2].pos)]
    titles = [a.text for a in fig.layout.annotations]
    assert "• passes every filter (2)" in titles[0] and "• ≤ 0.1 passes the KL filter, ○ ≤ 0.25" in titles[1]
    plain = F.selection_heatmaps(table, stats=("kl",), kl_max=None)  # no threshold: the linear scale
    assert plain.data[0].zmid is None and np.nanmax(plain.data[0].z) == 12.0 and len(plain.data) == 1


def test_label_map_keeps_its_radial_labels_off_the_bars():
    sweep = pd.DataFrame({"split": "harmful", "angle": np.arange(0, 360, 15.0), **shares(24)})
    fig = F.label_map_polar(sweep)
    assert fig.layout.polar.radialaxis.showticklabels is False and fig.layout.polar.barmode == "stack"
    assert "100 %" in fig.layout.title.text


def test_cosine_matrix_figure():
    ks = keys(n_layers=3)
    v = torch.randn(len(ks), 8)
    cos = torch.nn.functional.normalize(v, dim=1) @ torch.nn.functional.normalize(v, dim=1).T
    fig = F.cosine_matrix_figure(cos, ks, model="m")
    assert len(fig.data) == 1 and fig.data[0].zmin == -1 and fig.data[0].zmax == 1
    assert list(fig.data[0].x)[:2] == ["resid_pre L0 -2", "resid_pre L0 -1"]
    with pytest.raises(ValueError, match="square"):
        F.cosine_matrix_figure(cos[:3], ks)


def test_plane_projection():
    ks = keys(n_layers=5, sites=("resid_pre", "resid_mid"))
    coords = pd.DataFrame(
        {
            "site": [k.site for k in ks],
            "layer": [k.layer for k in ks],
            "pos": [k.pos for k in ks],
            "angle_deg": rng.uniform(0, 360, len(ks)),
            "radius": rng.uniform(0, 1, len(ks)),
        }
    )
    fig = F.plane_projection(coords, model="m")
    assert len(fig.data) == 3 and fig.data[-1].name == "b1 (refusal)" and list(fig.data[-1].theta) == [0, 0]
    assert fig.layout.polar.angularaxis.rotation == 0
    assert fig.layout.polar.angularaxis.direction == "counterclockwise"
    assert (
        fig.layout.coloraxis.colorbar.title.text == "layer" and fig.data[0].marker.symbol != fig.data[1].marker.symbol
    )
    with pytest.raises(ValueError, match="angle_deg"):
        F.plane_projection(coords.drop(columns="angle_deg"))


def test_angle_sweep_polar():
    angles = np.arange(0, 360, 30.0)
    summary = pd.DataFrame(
        {
            "split": np.repeat(["harmful", "harmless"], len(angles)),
            "angle": np.tile(angles, 2),
            "refusal_rate": rng.uniform(size=2 * len(angles)),
            "adaptive": True,
            **shares(2 * len(angles)),
        }
    )
    fig = F.angle_sweep_polar(summary, baseline={"harmful": 0.9, "harmless": 0.05}, model="m")
    kinds = [t.type for t in fig.data]
    assert kinds == ["scatterpolar"] * 4 + ["barpolar"] * len(LABELS)
    assert fig.data[0].theta[0] == fig.data[0].theta[-1] and len(fig.data[0].r) == len(angles) + 1
    assert fig.data[2].line.dash == "dot"
    assert list(fig.layout.polar.radialaxis.range) == [0, 1] and fig.layout.polar2.barmode == "stack"
    assert fig.data[4].name == "refusal" and "adaptive" in fig.layout.title.text
    # the radial tick labels ride a spoke between two angle labels (every 45°), none at the centre
    rates, bars = fig.layout.polar.radialaxis, fig.layout.polar2.radialaxis
    assert (
        fig.layout.polar.angularaxis.dtick == 45
        and rates.angle % 45 not in (0, 45)
        and rates.showticklabels is not False
    )
    assert rates.tickangle == rates.angle and 0 not in rates.tickvals
    assert bars.showticklabels is False and "100 %" in fig.layout.annotations[1].text  # labels would sit on bars
    minimal = F.angle_sweep_polar(summary[["split", "angle", "refusal_rate"]])
    assert len(minimal.data) == 2
    with pytest.raises(ValueError, match="angle"):
        F.angle_sweep_polar(summary.drop(columns="angle"))


def test_projection_histograms():
    rows = []
    for layer in range(4):
        for label, mu in (("harmful", layer), ("harmless", -layer if layer != 2 else 0)):
            rows += [
                {"layer": layer, "label": label, "projection": x, "prompt": f"{label} {i}"}
                for i, x in enumerate(rng.normal(mu, 1.0, 30))
            ]
    proj = pd.DataFrame(rows)
    fig = F.projection_histograms(proj, model="m")
    assert len(fig.data) == 4 * 4 and len(fig.layout.sliders[0].steps) == 4
    visible = [t.visible for t in fig.data]
    assert sum(visible) == 4 and fig.layout.sliders[0].active == 3  # layer 3 separates most
    assert "layer 3" in fig.layout.title.text
    # given the direction's own layer, that frame is shown first (and in a static export), not the best
    fig = F.projection_histograms(proj, layer=1)
    assert fig.layout.sliders[0].active == 1 and fig.layout.sliders[0].steps[1].label == "1"
    assert [t.visible for t in fig.data] == [j // 4 == 1 for j in range(16)]
    assert "layer 1" in fig.layout.title.text and "own layer" in fig.layout.title.text
    assert "own layer" not in fig.layout.sliders[0].steps[3].args[1]["title"]["text"]
    with pytest.raises(ValueError, match="layer 7"):
        F.projection_histograms(proj, layer=7)
    fig = F.projection_histograms(proj.drop(columns="prompt"))
    assert len(fig.data) == 8 and all(t.type == "histogram" for t in fig.data)
    with pytest.raises(ValueError, match="projection"):
        F.projection_histograms(proj.drop(columns="projection"))


def test_layer_subset_figure():
    names = {
        "first:4": range(0, 4),
        "first:8": range(0, 8),
        "last:4": range(26, 30),
        "window:10-20": range(10, 21),
        "first_2": range(0, 2),
        "sparse": [0, 5, 9],
    }
    summary = pd.DataFrame(
        {
            "subset": list(names),
            "n_blocks": [len(v) for v in names.values()],
            "first_layer": [min(v) for v in names.values()],
            "last_layer": [max(v) for v in names.values()],
            "refusal_rate": rng.uniform(size=6),
        }
    )
    fig = F.layer_subset_figure(summary, model="m")
    assert sorted(t.legendgroup for t in fig.data) == ["first", "last", "sparse", "window"]
    first = next(t for t in fig.data if t.legendgroup == "first")
    assert list(first.x) == [2, 4, 8] and "layers 0–1" in first.hovertext[0] and first.name == "first k blocks"
    # what "window" means is said in the legend, the subtitle and on its points
    window = next(t for t in fig.data if t.legendgroup == "window")
    assert window.name == "window: the middle k blocks" and list(window.text) == ["10–20"]
    assert "window = the k contiguous blocks in the middle" in fig.layout.title.text
    assert "10–20 (k = 11)" in fig.layout.title.text
    assert "window" not in F.layer_subset_figure(summary[summary.subset != "window:10-20"]).layout.title.text
    sparse = next(t for t in fig.data if t.legendgroup == "sparse")
    assert "not contiguous" in sparse.hovertext[0]
    with pytest.raises(ValueError, match="n_blocks"):
        F.layer_subset_figure(summary.drop(columns="n_blocks"))


def test_special_cases_figure():
    x, r = torch.randn(5, 3, 16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    result = special_cases(x, r, torch.linspace(-5, 5, 11))
    fig = F.special_cases_figure(result, max_tokens=10, model="m")
    assert [t.type for t in fig.data] == ["histogram", "histogram", "scatter", "scatter"]
    assert np.allclose(fig.data[1].x, 90.0)
    assert len(fig.data[3].x) == 11 and np.isnan(fig.data[2].y).sum() == 10
    assert {s.y0 for s in fig.layout.shapes} == {0, 90, 180}
    assert "residual" in fig.layout.title.text
    with pytest.raises(ValueError, match="alphas"):
        F.special_cases_figure({k: v for k, v in result.items() if k != "alphas"})


def test_wrap_truncates_and_escapes():
    text = _wrap("a <tag> " * 200, width=40, limit=100)
    assert text.endswith("…") and "&lt;tag&gt;" in text and all(len(line) < 70 for line in text.split("<br>"))
    assert _wrap(None) == "" and _wrap(float("nan")) == ""


def test_save_figure(tmp_path, locations, monkeypatch):
    fig = F.location_comparison(locations[0])
    if shutil.which("chromium") or E._find_browser():
        paths = F.save_figure(fig, "loc", tmp_path)
        assert [p.name for p in paths] == ["loc.html", "loc.png"]
        assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setattr(E, "_EXPORT", {"up": False, "failed": None, "warned": False})
    monkeypatch.setattr(E, "_find_browser", lambda: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = F.save_figure(fig, "a", tmp_path / "sub")
        second = F.save_figure(fig, "b", tmp_path / "sub")
    assert [p.name for p in first + second] == ["a.html", "b.html"]
    assert len([w for w in caught if "PNG export skipped" in str(w.message)]) == 1
    assert "chromium" in str(caught[0].message)
    text = first[0].read_text()
    assert "plotly" in text and "cdn.plot.ly" not in text.split("<body")[0]
    assert not list((tmp_path / "sub").glob("*.tmp")) and not (tmp_path / "sub" / "a.png").exists()


def test_angle_sweep_partial_range_is_not_closed():
    summary = pd.DataFrame(
        {"split": "harmful", "angle": [0.0, 45.0, 90.0, 135.0, 180.0], "refusal_rate": [0.9, 0.7, 0.5, 0.2, 0.1]}
    )
    fig = F.angle_sweep_polar(summary)
    assert list(fig.data[0].theta) == [0.0, 45.0, 90.0, 135.0, 180.0]


# ---------------------------------------------------------------------------------------------- byte-stable saving
def needs_browser() -> None:
    if not E._find_browser():
        pytest.skip("no Chrome/Chromium for kaleido, so no PNG export (apt-get install chromium)")


def chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, checking each CRC."""
    out, i = [], 8
    while i < len(png):
        n, kind = int.from_bytes(png[i : i + 4], "big"), png[i + 4 : i + 8]
        data, crc = png[i + 8 : i + 8 + n], png[i + 8 + n : i + 12 + n]
        assert zlib.crc32(kind + data).to_bytes(4, "big") == crc, kind
        out.append((kind, data))
        i += 12 + n
    return out


TINY_PNG = (
    E._PNG_SIGNATURE
    + chunk(b"IHDR", (1).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0]))  # 1×1 grey
    + chunk(b"IDAT", zlib.compress(b"\0\0"))
    + chunk(b"IEND", b"")
)


def test_png_text_chunk(tmp_path):
    tagged = E._png_with_text(TINY_PNG, E._SPEC_KEY, "abc123")
    assert [k for k, _ in chunks(tagged)] == [b"IHDR", b"tEXt", b"IDAT", b"IEND"]
    assert chunks(tagged)[1][1] == E._SPEC_KEY + b"\0abc123"
    assert [c for c in chunks(tagged) if c[0] != b"tEXt"] == chunks(TINY_PNG)
    (tmp_path / "a.png").write_bytes(tagged)
    (tmp_path / "old.png").write_bytes(TINY_PNG)
    (tmp_path / "text.png").write_bytes(b"not a png")
    assert E._png_text(tmp_path / "a.png", E._SPEC_KEY) == "abc123"
    assert E._png_text(tmp_path / "a.png", b"other") is None
    for name in ("old.png", "text.png", "missing.png"):
        assert E._png_text(tmp_path / name, E._SPEC_KEY) is None
    with pytest.raises(ValueError, match="not a PNG"):
        E._png_with_text(b"not a png", E._SPEC_KEY, "x")


def test_drawn_spec_is_the_same_in_another_process(tmp_path, locations):
    fig = F.location_comparison(locations[0], locations[1], model="m")
    here = D.encode(D.spec(fig, F.PNG_SIZE))
    pd.to_pickle(locations, tmp_path / "tables.pkl")
    code = (
        "import pandas as pd, sys; from workbench import figures as F; from workbench.figures import drawn as D; "
        "s, p = pd.read_pickle(sys.argv[1]); "
        "print(D.encode(D.spec(F.location_comparison(s, p, model='m'), F.PNG_SIZE)))"
    )
    there = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "tables.pkl")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    assert there == here and D.decode(here) == D.spec(fig, F.PNG_SIZE)
    assert not D.same(D.spec(fig.update_layout(title="changed"), F.PNG_SIZE), D.decode(here))
    assert D.decode("not ours") is None and D.decode(None) is None


def test_drawn_ignores_another_cpus_rounding_but_not_a_visible_change(locations):
    """The PNG's figure is compared as drawn: float noise (another CPU's kernels: ~1e-6 relative after
    a forward pass) in every number, lists and numpy typed arrays alike, and the hover text leave it
    the same; a change of 1% of a trace's scale, of its length or of its title does not."""
    summary, per_prompt = locations
    gen = np.random.default_rng(0)
    noisy = summary.copy()
    for col in ("refusal_rate", "kl", "logodds"):
        noisy[col] = noisy[col] * (1 + 1e-6 * gen.standard_normal(len(noisy)))
    here = D.spec(F.location_comparison(summary, per_prompt), F.PNG_SIZE)
    assert D.same(D.spec(F.location_comparison(noisy, per_prompt), F.PNG_SIZE), here)
    moved = summary.copy()
    harmless = moved.split == "harmless"  # the KL panel draws the harmless rows: move one by 1% of their scale
    moved.loc[moved.index[harmless][0], "kl"] += 0.01 * moved.loc[harmless, "kl"].abs().max()
    assert not D.same(D.spec(F.location_comparison(moved, per_prompt), F.PNG_SIZE), here)
    x = np.linspace(0.0, 3.0, 2000)  # many values: some always sit within noise of any rounding grid
    y = np.sin(x) * 0.37

    def fig(values, hover):
        return go.Figure(go.Scatter(x=x, y=values, hovertext=hover, mode="lines"), layout={"title": "t"})

    base = D.spec(fig(y, [f"{v:.12f}" for v in y]), F.PNG_SIZE)
    for rel in (1e-7, 1e-6, 1e-5):
        jitter = y * (1 + rel * gen.standard_normal(len(y)))
        assert D.same(D.spec(fig(jitter, [f"{v:.12f}" for v in jitter]), F.PNG_SIZE), base), rel  # typed array
    assert not D.same(D.spec(fig(y + 0.01 * 0.37, None), F.PNG_SIZE), base)
    assert not D.same(D.spec(fig(y[:-1], None), F.PNG_SIZE), base)
    assert not D.same(D.spec(fig(y, None).update_layout(title="u"), F.PNG_SIZE), base)
    assert D.same(D.decode(D.encode(base)), base)


def test_html_is_not_rewritten_when_unchanged(tmp_path, locations):
    fig = F.location_comparison(locations[0])
    html = F.save_figure(fig, "01 loc", tmp_path, png=False)[0]
    assert 'id="01-loc"' in html.read_text()
    os.utime(html, ns=(10**18, 10**18))
    before = html.stat()
    F.save_figure(F.location_comparison(locations[0]), "01 loc", tmp_path, png=False)
    after = html.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_png_is_not_rewritten_when_unchanged(tmp_path, locations, monkeypatch):
    needs_browser()
    exports = []
    png = E._png
    monkeypatch.setattr(E, "_png", lambda fig, opts: exports.append(1) or png(fig, opts))
    fig = F.location_comparison(locations[0])
    path = F.save_figure(fig, "loc", tmp_path)[1]
    drawn_now = D.spec(fig, {"format": "png", **F.PNG_SIZE})
    assert len(exports) == 1 and D.decode(E._png_text(path, E._SPEC_KEY)) == drawn_now
    data = path.read_bytes()
    os.utime(path, ns=(10**18, 10**18))
    before = path.stat()
    assert F.save_figure(F.location_comparison(locations[0]), "loc", tmp_path)[1] == path
    after = path.stat()
    assert len(exports) == 1 and path.read_bytes() == data
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    F.save_figure(fig.update_layout(title="changed"), "loc", tmp_path)  # a changed figure is exported again
    assert len(exports) == 2 and path.read_bytes() != data
    assert D.decode(E._png_text(path, E._SPEC_KEY)) == D.spec(fig, {"format": "png", **F.PNG_SIZE})
    path.write_bytes(TINY_PNG)  # a PNG from before the drawn-spec chunk
    F.save_figure(fig, "loc", tmp_path)
    assert len(exports) == 3 and E._png_text(path, E._SPEC_KEY) is not None


def test_stuck_export_times_out_to_html_only(tmp_path, locations, monkeypatch):
    kaleido = pytest.importorskip("kaleido")
    release = threading.Event()
    calls = []
    monkeypatch.setattr(kaleido, "calc_fig_sync", lambda *a, **k: calls.append(1) or release.wait(30))
    monkeypatch.setattr(E, "_EXPORT", {"up": True, "failed": None, "warned": False})  # as if the server were up
    monkeypatch.setattr(E, "_TIMEOUT", 0.2)
    fig = F.location_comparison(locations[0])
    try:
        with pytest.warns(RuntimeWarning, match="no PNG within 0.2 s"):
            assert [p.name for p in F.save_figure(fig, "a", tmp_path)] == ["a.html"]
        assert [p.name for p in F.save_figure(fig, "b", tmp_path)] == ["b.html"]
    finally:
        release.set()
    assert len(calls) == 1  # a stuck server is not asked again


def test_process_with_a_png_exits_promptly(tmp_path):
    needs_browser()
    code = (
        "import sys, plotly.graph_objects as go; from workbench import figures as F; "
        "paths = F.save_figure(go.Figure(go.Bar(y=[1, 3, 2])), 'bar', sys.argv[1]); "
        "assert [p.name for p in paths] == ['bar.html', 'bar.png'], paths; print('saved')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "saved", done.stderr
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr
    assert (tmp_path / "bar.png").read_bytes()[:8] == E._PNG_SIGNATURE


def test_the_package_exports_every_builder():
    builders = {name for name, f in vars(F).items() if callable(f) and not name.startswith("_")}
    assert builders <= set(F.__all__), builders - set(F.__all__)
    assert all(hasattr(F, name) for name in F.__all__)
    assert "rotation_variants_figure" in F.__all__


ROOT = Path(__file__).resolve().parents[1]


def _jittered(node, rel: float, rng):
    """A drawn spec with every finite number scaled by 1 + rel·N(0, 1): another CPU's rounding."""
    if isinstance(node, dict) and D._NUM in node:
        values = D._values(node)
        return D._numbers([v if v is None else v * (1 + rel * rng.standard_normal()) for v in values])
    if isinstance(node, dict):
        return {k: _jittered(v, rel, rng) for k, v in node.items()}
    if isinstance(node, list):
        return [_jittered(v, rel, rng) for v in node]
    return node


@pytest.mark.parametrize("png", sorted((ROOT / "figures").glob("**/*.png")), ids=lambda p: p.name)
def test_committed_figures_survive_another_cpus_rounding(png):
    """Each committed PNG carries its figure as drawn; that figure with every number moved by float
    noise (1e-6 relative, ~100x float32 eps) still counts as the same drawing, so no host rewrites it,
    while 1 % noise does not."""
    before = D.decode(E._png_text(png, E._SPEC_KEY))
    if before is None:
        pytest.skip(f"{png.name} has no drawn spec yet (written before it; rewritten by its next run)")
    rng = np.random.default_rng(0)
    assert D.same(_jittered(before, 1e-6, rng), before)
    assert not D.same(_jittered(before, 1e-2, rng), before)
