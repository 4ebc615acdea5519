"""Plotly figures from the workbench's tidy tables: one function per figure, one shared style.

Each function takes a table from :mod:`workbench.experiments`, :mod:`workbench.directions`,
:mod:`workbench.planes` or :mod:`workbench.steering_math`, checks its columns (ValueError naming the
missing ones) and returns a ``go.Figure``; ``model=`` adds the model to the title. Polar plots use
the plane convention: 0° = b1 (refusal) points east, angles grow counter-clockwise toward b2.
:func:`save_figure` writes self-contained HTML and, when kaleido finds a Chromium, a PNG.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import textwrap
import threading
import warnings
import zlib
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly
import plotly.graph_objects as go
import plotly.io as pio
from plotly.io._base_renderers import MimetypeRenderer
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from .artifacts import atomic_write_bytes, atomic_write_text
from .experiments import CONDITIONS
from .labels import ALL_LABELS

__all__ = [
    "TEMPLATE",
    "SPLIT_COLORS",
    "CONDITION_COLORS",
    "LABEL_COLORS",
    "CONDITION_ORDER",
    "LABEL_ORDER",
    "location_comparison",
    "selection_heatmaps",
    "cosine_matrix_figure",
    "plane_projection",
    "angle_sweep_polar",
    "projection_histograms",
    "layer_subset_figure",
    "special_cases_figure",
    "label_map_polar",
    "behaviour_bars",
    "save_figure",
    "use_notebook_renderer",
    "NOTEBOOK_RENDERER",
    "STATIC_RENDERER",
    "STATIC_ENV",
    "PNG_SIZE",
]

# ---------------------------------------------------------------------------------------------- style
CONDITION_ORDER = CONDITIONS
LABEL_ORDER = ALL_LABELS
SPLIT_COLORS = {"harmful": "#c0392b", "harmless": "#2874a6", "warning": "#d68910", "redirect": "#7d3c98"}
CONDITION_COLORS = {
    "none": "#7f8c8d",
    "resid": "#2e86c1",
    "attn": "#28b463",
    "mlp": "#d68910",
    "all": "#8e44ad",
    "addition": "#c0392b",
}
CONDITION_NAMES = {
    "none": "none",
    "resid": "resid only",
    "attn": "attn out only",
    "mlp": "MLP out only",
    "all": "everywhere",
    "addition": "addition (+αr)",
}
LABEL_COLORS = {
    "refusal": "#c0392b",
    "comply_with_warning": "#f39c12",
    "ethical_redirect": "#8e44ad",
    "comply": "#27ae60",
    "empty": "#bdc3c7",
    "degenerate": "#566573",
}
_OTHER = ("#16a085", "#d35400", "#2c3e50", "#7d3c98", "#a93226", "#1abc9c")
SITE_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "star")
PNG_SIZE = {"width": 1100, "height": 650, "scale": 2}

TEMPLATE = go.layout.Template(pio.templates["plotly_white"])
TEMPLATE.layout.update(
    font={"family": "Helvetica, Arial, sans-serif", "size": 13},
    title={"x": 0.02},
    colorway=list(SPLIT_COLORS.values()) + list(_OTHER),
    hoverlabel={"align": "left"},
    legend={"bgcolor": "rgba(255,255,255,0.6)"},
    margin={"t": 90},
)
pio.templates["workbench"] = TEMPLATE

# Plotly's own combination for "every place a notebook is shown": the plotly mimetype (JupyterLab, VS Code,
# nteract) plus HTML that embeds plotly.js once per kernel (classic notebook, nbconvert HTML export, offline).
NOTEBOOK_RENDERER = "plotly_mimetype+notebook"
# For committed .ipynb copies (notebooks/build.py sets STATIC_ENV): the plotly mimetype (interactive in
# JupyterLab) plus a PNG (what GitHub and nbconvert show), and no 4.6 MB of plotly.js in each file.
STATIC_RENDERER = "plotly_mimetype+workbench_png"
STATIC_ENV = "WORKBENCH_STATIC_FIGURES"
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


def use_notebook_renderer() -> str:
    """Make ``fig.show()`` / a cell's figure render in JupyterLab, the classic notebook and nbconvert HTML.

    Plotly's default in a kernel is the plotly mimetype alone, which nbconvert's HTML export drops
    ("mimetype application/vnd.plotly.v1+json is not able to be represented"). This sets
    :data:`NOTEBOOK_RENDERER`, whose HTML half embeds plotly.js (no CDN, so exported HTML works offline);
    call it in a notebook's first cell. With the environment variable :data:`STATIC_ENV` set to a
    non-empty value other than ``0`` (notebooks/build.py sets it), it sets :data:`STATIC_RENDERER`
    instead: the plotly mimetype plus a PNG, for small files that render on a code host.
    Returns the renderer set.
    """
    static = os.environ.get(STATIC_ENV, "") not in ("", "0")
    pio.renderers.default = STATIC_RENDERER if static else NOTEBOOK_RENDERER
    return pio.renderers.default


STAT_TITLES = {
    "bypass": "bypass: refusal log-odds on harmful, candidate ablated (nats, lower = better)",
    "induce": "induce: refusal log-odds on harmless, candidate added (nats, higher = better)",
    "kl": "KL on harmless, candidate ablated (nats)",
    "auc": "AUC of harmful vs harmless projections",
    "norm": "‖candidate‖ (activation units)",
    "max_sim": "mean cosine to all candidates",
    "cohens_d": "Cohen's d of the projections",
    "cos_to_mean": "cosine to the mean direction",
}
_DIVERGING = {"bypass", "induce", "cohens_d", "cos_to_mean"}


def _color(mapping: dict, key, i: int) -> str:
    return mapping.get(key, _OTHER[i % len(_OTHER)])


def _title(text: str, model: str | None, sub: str | None = None) -> dict:
    head = f"{text} — {model}" if model else text
    return {"text": head + (f"<br><sup>{sub}</sup>" if sub else "")}


def _require(df: pd.DataFrame, cols, what: str, hint: str = "") -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what} lacks column(s) {missing}; it needs {list(cols)}, has "
            f"{list(df.columns)}" + (f" ({hint})" if hint else "")
        )


def _wrap(text, width: int = 70, limit: int = 300) -> str:
    """Hover-safe text: truncated to ``limit`` characters, HTML-escaped, wrapped with ``<br>``."""
    text = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
    if len(text) > limit:
        text = text[:limit].rstrip() + " …"
    lines = [w for line in text.splitlines() or [""] for w in textwrap.wrap(line, width) or [""]]
    return "<br>".join(html.escape(w) for w in lines)


def _hover(prompt, response) -> str:
    return f"<b>prompt</b>: {_wrap(prompt, limit=200)}<br><b>response</b>: {_wrap(response)}"


def _np(x) -> np.ndarray:
    """A tensor (any device/dtype) or array-like as a float64 numpy array."""
    return np.asarray(x.detach().cpu().double().numpy() if hasattr(x, "detach") else x, dtype=np.float64)


def _splits(df: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(df["split"]))
    return [s for s in SPLIT_COLORS if s in present] + [s for s in present if s not in SPLIT_COLORS]


def _fig(**layout) -> go.Figure:
    return go.Figure(layout={"template": TEMPLATE, **layout})


# ---------------------------------------------------------------------------------------------- figures
def location_comparison(
    summary: pd.DataFrame, per_prompt: pd.DataFrame | None = None, *, model: str | None = None
) -> go.Figure:
    """Refusal rate under ablation at each location, harmful and harmless side by side.

    Left: grouped bars of ``refusal_rate`` per condition (none / resid / attn / mlp / all /
    addition, present ones in that order, unknown ones after), one bar per split, with
    ``empty_rate`` as ✕ markers when present. Right: mean first-token ``kl`` per condition on the
    harmless split (the first split if there is none). Needs ``summary`` columns split, condition,
    refusal_rate, kl (from :func:`~workbench.experiments.compare_locations`); ``per_prompt`` (split,
    condition, prompt, response, kl) adds example responses to the bar hover and per-prompt KL points.
    """
    _require(summary, ["split", "condition", "refusal_rate", "kl"], "summary", "use compare_locations()")
    present = list(dict.fromkeys(summary["condition"]))
    order = [c for c in CONDITION_ORDER if c in present] + [c for c in present if c not in CONDITION_ORDER]
    names = [CONDITION_NAMES.get(c, c) for c in order]
    if per_prompt is not None:
        _require(per_prompt, ["split", "condition", "prompt", "response", "kl"], "per_prompt")
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.62, 0.38],
        horizontal_spacing=0.1,
        subplot_titles=("refusal rate", "first-token KL vs unsteered"),
    )
    fig.update_layout(template=TEMPLATE, barmode="group", scattermode="group")
    for i, split in enumerate(_splits(summary)):
        rows = summary[summary["split"] == split].set_index("condition").reindex(order)
        hover = [f"n = {'?' if 'n' not in rows else str(rows.at[c, 'n'])}" for c in order]
        if per_prompt is not None:
            pp = per_prompt[per_prompt["split"] == split]
            for j, c in enumerate(order):
                ex = pp[pp["condition"] == c].head(2)
                hover[j] += "".join("<br>" + _hover(p, r) for p, r in zip(ex["prompt"], ex["response"]))
        color = _color(SPLIT_COLORS, split, i)
        fig.add_trace(
            go.Bar(
                x=names,
                y=rows["refusal_rate"],
                name=split,
                marker_color=color,
                offsetgroup=split,
                legendgroup=split,
                hovertext=hover,
                hovertemplate="%{x}: %{y:.0%}<br>%{hovertext}<extra>" + split + "</extra>",
            ),
            1,
            1,
        )
        if "empty_rate" in rows:
            fig.add_trace(
                go.Scatter(
                    x=names,
                    y=rows["empty_rate"],
                    mode="markers",
                    offsetgroup=split,
                    name=f"{split}: empty rate",
                    legendgroup=split,
                    marker={"symbol": "x", "size": 11, "color": "black"},
                    hovertemplate="empty: %{y:.0%}<extra>" + split + "</extra>",
                ),
                1,
                1,
            )
    kl_split = "harmless" if "harmless" in set(summary["split"]) else _splits(summary)[0]
    kl = summary[summary["split"] == kl_split].set_index("condition").reindex(order)["kl"]
    fig.add_trace(
        go.Bar(
            x=names,
            y=kl,
            name=f"mean KL ({kl_split})",
            showlegend=False,
            marker_color=[_color(CONDITION_COLORS, c, j) for j, c in enumerate(order)],
            hovertemplate="%{x}: mean KL %{y:.3g} nats<extra></extra>",
        ),
        1,
        2,
    )
    if per_prompt is not None:
        pp = per_prompt[(per_prompt["split"] == kl_split) & per_prompt["condition"].isin(order)]
        fig.add_trace(
            go.Box(
                x=[CONDITION_NAMES.get(c, c) for c in pp["condition"]],
                y=pp["kl"],
                boxpoints="all",
                jitter=0.5,
                pointpos=0,
                fillcolor="rgba(0,0,0,0)",
                line={"width": 0},
                marker={"size": 4, "color": "rgba(0,0,0,0.45)"},
                name="per prompt",
                showlegend=False,
                text=[_hover(p, r) for p, r in zip(pp["prompt"], pp["response"])],
                hovertemplate="KL %{y:.3g} nats<br>%{text}<extra></extra>",
            ),
            1,
            2,
        )
    fig.update_xaxes(title_text="intervention", categoryorder="array", categoryarray=names)
    return fig.update_layout(
        yaxis={"title": {"text": "refusal rate (fraction of prompts)"}, "range": [0, 1.05], "tickformat": ".0%"},
        yaxis2={"title": {"text": f"mean KL on {kl_split} prompts (nats)"}, "rangemode": "tozero"},
        title=_title(
            "Refusal vs ablation location",
            model,
            "ablation location: residual only, attention output "
            "only, MLP output only, everywhere; plus none and activation addition",
        ),
    )


def selection_heatmaps(
    table: pd.DataFrame,
    *,
    stats=("bypass", "induce", "kl", "auc", "norm"),
    site: str = "resid_pre",
    choices: dict | None = None,
    model: str | None = None,
) -> go.Figure:
    """Layer (x) × position (y) heatmaps of candidate scores at one ``site``, one row per statistic.

    ``table``: columns site (optional), layer, pos and any of ``stats`` — e.g.
    :attr:`~workbench.selection.Selection.table`, :func:`~workbench.selection.candidate_stats` or
    :func:`~workbench.experiments.arditi_scores`. Absent or all-NaN statistics are skipped.
    bypass/induce (and other signed scores) use a diverging scale centred at 0. ``choices``
    (``{method: key with .site/.layer/.pos}``, e.g. ``Selection.choices``) marks the chosen candidates.
    """
    _require(table, ["layer", "pos"], "table", "candidate_stats(), arditi_scores() or Selection.table")
    if "site" in table:
        if site not in set(table["site"]):
            raise ValueError(f"no candidates at site {site!r}; the table has sites {sorted(set(table['site']))}")
        table = table[table["site"] == site]
    shown = [s for s in stats if s in table and table[s].notna().any()]
    if not shown:
        raise ValueError(
            f"none of the statistics {list(stats)} has a value in the table (columns {list(table.columns)})"
        )
    fig = make_subplots(
        rows=len(shown),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.22 / len(shown),
        subplot_titles=[STAT_TITLES.get(s, s) for s in shown],
    )
    marks = [(m, k) for m, k in (choices or {}).items() if getattr(k, "site", site) == site]
    for i, stat in enumerate(shown, start=1):
        grid = table.pivot_table(index="pos", columns="layer", values=stat, aggfunc="mean", dropna=False)
        dom = fig.layout[f"yaxis{'' if i == 1 else i}"].domain
        diverging = stat in _DIVERGING
        fig.add_trace(
            go.Heatmap(
                z=grid.values,
                x=grid.columns,
                y=grid.index,
                name=stat,
                colorscale="RdBu_r" if diverging else "Viridis",
                zmid=0 if diverging else None,
                colorbar={
                    "title": {"text": stat},
                    "len": dom[1] - dom[0],
                    "y": (dom[0] + dom[1]) / 2,
                    "yanchor": "middle",
                    "thickness": 14,
                },
                hovertemplate="layer %{x}, pos %{y}<br>" + stat + " = %{z:.4g}<extra></extra>",
            ),
            i,
            1,
        )
        if marks:
            fig.add_trace(
                go.Scatter(
                    x=[k.layer for _, k in marks],
                    y=[k.pos for _, k in marks],
                    mode="markers+text",
                    text=[m for m, _ in marks],
                    textposition="top center",
                    name="chosen",
                    showlegend=False,
                    textfont={"size": 11},
                    marker={"symbol": "x-thin", "size": 13, "line": {"width": 2.5, "color": "black"}},
                    hovertemplate="%{text}: layer %{x}, pos %{y}<extra></extra>",
                ),
                i,
                1,
            )
        fig.update_yaxes(title_text="pos (tokens from end)", dtick=1, row=i, col=1)
    fig.update_xaxes(title_text="layer", row=len(shown), col=1)
    return fig.update_layout(
        template=TEMPLATE,
        height=max(420, 230 * len(shown)),
        title=_title(f"Candidate directions at {site}: scores by layer and position", model),
    )


def cosine_matrix_figure(cosine, keys, *, model: str | None = None) -> go.Figure:
    """Pairwise cosine similarity of candidate directions (e.g.
    :func:`~workbench.directions.cosine_matrix`), rows/columns in the order of ``keys``
    (objects with .site/.layer/.pos, labelled like ``resid_pre L12 -1``), colour range [-1, 1]."""
    c = _np(cosine)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] != len(keys):
        raise ValueError(f"cosine must be a square [n, n] matrix with n = len(keys) = {len(keys)}; got shape {c.shape}")
    labels = [f"{k.site} L{k.layer} {k.pos}" for k in keys]
    fig = _fig(
        title=_title("Cosine similarity between candidate refusal directions", model),
        xaxis={"title": {"text": "candidate (site, layer, pos)"}, "tickangle": -60},
        yaxis={"title": {"text": "candidate (site, layer, pos)"}, "autorange": "reversed"},
        height=min(1400, max(500, 14 * len(keys) + 250)),
        width=min(1500, max(650, 14 * len(keys) + 350)),
    )
    return fig.add_trace(
        go.Heatmap(
            z=c,
            x=labels,
            y=labels,
            zmin=-1,
            zmax=1,
            colorscale="RdBu_r",
            colorbar={"title": {"text": "cosine"}},
            hovertemplate="%{y}<br>%{x}<br>cos = %{z:.3f}<extra></extra>",
        )
    )


def plane_projection(coords: pd.DataFrame, *, model: str | None = None, b1_label: str = "b1 (refusal)") -> go.Figure:
    """Unit candidates in the steering plane (polar: angle_deg from b1 at 0° east, counter-clockwise;
    radius ≤ 1), coloured by layer, one symbol per site. Needs columns site, layer, pos, angle_deg,
    radius (:meth:`~workbench.planes.Plane.candidate_coords`)."""
    _require(coords, ["site", "layer", "pos", "angle_deg", "radius"], "coords", "use Plane.candidate_coords()")
    rmax = max(1.0, float(coords["radius"].max()))
    lo, hi = int(coords["layer"].min()), int(coords["layer"].max())
    fig = _fig(
        title=_title(
            "Candidate directions on the steering plane span(b1, b2)",
            model,
            "unit candidates; angle from b1 (0°, east) counter-clockwise toward b2; radius = in-plane norm",
        ),
        coloraxis={
            "colorscale": "Viridis",
            "cmin": lo,
            "cmax": max(hi, lo + 1),
            "colorbar": {"title": {"text": "layer"}},
        },
        legend={"x": 0, "y": 0.5, "title": {"text": "site"}},
        polar={
            "angularaxis": {"rotation": 0, "direction": "counterclockwise", "dtick": 30},
            "radialaxis": {"range": [0, rmax]},
        },
    )
    for i, (site, rows) in enumerate(coords.groupby("site", sort=False)):
        fig.add_trace(
            go.Scatterpolar(
                r=rows["radius"],
                theta=rows["angle_deg"],
                mode="markers",
                name=str(site),
                marker={
                    "color": rows["layer"],
                    "coloraxis": "coloraxis",
                    "size": 9,
                    "symbol": SITE_SYMBOLS[i % len(SITE_SYMBOLS)],
                    "line": {"width": 0.5, "color": "white"},
                },
                customdata=np.stack([rows["layer"], rows["pos"]], axis=1),
                hovertemplate=f"{site} L%{{customdata[0]}} pos %{{customdata[1]}}<br>angle %{{theta:.1f}}°, "
                f"radius %{{r:.3f}}<extra></extra>",
            )
        )
    return fig.add_trace(
        go.Scatterpolar(  # b1 always sits at 0°, so an east-pointing triangle is its arrowhead
            r=[0, rmax],
            theta=[0, 0],
            mode="lines+markers",
            name=b1_label,
            line={"color": "black", "width": 2.5},
            marker={"symbol": ["circle", "triangle-right"], "size": [1, 15], "color": "black"},
            hoverinfo="name",
        )
    )


def angle_sweep_polar(summary: pd.DataFrame, *, baseline: dict | None = None, model: str | None = None) -> go.Figure:
    """Angular steering sweep. (a) ``refusal_rate`` per angle and split (closed curves; 0° = b1
    east, counter-clockwise; r ∈ [0, 1]; dotted circles = ``baseline: {split: unsteered rate}``).
    (b) stacked polar bars of the label shares (``share_<label>``) per angle on the harmful split.
    Needs columns split, angle, refusal_rate (:func:`~workbench.experiments.angle_sweep`)."""
    _require(summary, ["split", "angle", "refusal_rate"], "summary", "use angle_sweep()")
    share_split = "harmful" if "harmful" in set(summary["split"]) else _splits(summary)[0]
    fig = make_subplots(
        rows=1,
        cols=2,
        specs=[[{"type": "polar"}, {"type": "polar"}]],
        horizontal_spacing=0.15,
        subplot_titles=("(a) refusal rate by steering angle", f"(b) response labels ({share_split})"),
    )
    polar = {
        "angularaxis": {"rotation": 0, "direction": "counterclockwise", "dtick": 45},
        "radialaxis": {"range": [0, 1], "tickformat": ".0%", "angle": 90, "tickangle": 90},
    }
    fig.update_layout(template=TEMPLATE, polar=polar, polar2={**polar, "barmode": "stack"}, height=650)
    for i, split in enumerate(_splits(summary)):
        rows = summary[summary["split"] == split].sort_values("angle")
        theta, r = list(rows["angle"]), list(rows["refusal_rate"])
        if len(theta) > 2 and 360 - (theta[-1] - theta[0]) <= 1.01 * max(np.diff(theta)):  # full circle: close it
            theta, r = theta + theta[:1], r + r[:1]
        color = _color(SPLIT_COLORS, split, i)
        fig.add_trace(
            go.Scatterpolar(
                theta=theta,
                r=r,
                mode="lines+markers",
                name=split,
                line={"color": color},
                legendgroup=split,
                hovertemplate="%{theta:.0f}°: %{r:.0%}<extra>" + split + "</extra>",
            ),
            1,
            1,
        )
    for i, (split, rate) in enumerate((baseline or {}).items()):
        fig.add_trace(
            go.Scatterpolar(
                theta=np.linspace(0, 360, 73),
                r=[rate] * 73,
                mode="lines",
                name=f"{split} unsteered",
                legendgroup=split,
                hoverinfo="name",
                line={"dash": "dot", "color": _color(SPLIT_COLORS, split, i)},
            ),
            1,
            1,
        )
    rows = summary[summary["split"] == share_split].sort_values("angle")
    gaps = np.diff(np.unique(rows["angle"]))
    width = 0.9 * float(gaps.min()) if len(gaps) else 20.0
    for lab in LABEL_ORDER:
        if f"share_{lab}" in rows:
            fig.add_trace(
                go.Barpolar(
                    theta=rows["angle"],
                    r=rows[f"share_{lab}"].fillna(0),
                    width=width,
                    name=lab,
                    marker_color=LABEL_COLORS[lab],
                    legendgroup="labels",
                    legendgrouptitle_text="labels",
                    hovertemplate="%{theta:.0f}°: %{r:.0%}<extra>" + lab + "</extra>",
                ),
                1,
                2,
            )
    mode = ""
    if "adaptive" in summary and summary["adaptive"].nunique() == 1:
        gate = {"True": "b1", "False": "off"}.get(str(summary["adaptive"].iloc[0]), str(summary["adaptive"].iloc[0]))
        mode = "non-adaptive " if gate == "off" else f"adaptive: gate on {gate}, "
    if "site" in summary and summary["site"].nunique() == 1:
        mode += f"{str(summary['site'].iloc[0]).replace('_', '-')} "
    return fig.update_layout(
        title=_title(
            f"Angular steering ({mode}rotation to θ in the plane)",
            model,
            "0° = b1 (refusal direction), counter-clockwise toward b2; radius = fraction of prompts",
        )
    )


def projection_histograms(proj: pd.DataFrame, *, nbins: int = 40, model: str | None = None) -> go.Figure:
    """Overlaid histograms of per-prompt projections onto the chosen direction, one frame per layer
    (slider); the default frame is the layer with the largest separation (|Cohen's d|). Needs
    columns layer, label ("harmful"/"harmless"), projection; a ``prompt`` column adds a hoverable
    per-prompt strip above the histograms."""
    _require(proj, ["layer", "label", "projection"], "proj")
    layers = sorted(proj["layer"].unique())
    labels = _splits(proj.rename(columns={"label": "split"}))
    strip = "prompt" in proj
    main = 2 if strip else 1  # the histogram row

    def sep(df):  # |Cohen's d| between the first two labels
        g = [df.loc[df["label"] == lab, "projection"].to_numpy(float) for lab in labels[:2]]
        pooled = np.sqrt((g[0].var(ddof=1) + g[1].var(ddof=1)) / 2) if len(g) == 2 and min(map(len, g)) > 1 else 0
        return float(abs(g[0].mean() - g[1].mean()) / pooled) if pooled > 0 else 0.0

    d = {layer: sep(proj[proj["layer"] == layer]) for layer in layers}
    best = max(layers, key=lambda layer: d[layer])
    fig = make_subplots(
        rows=main, cols=1, shared_xaxes=True, row_heights=[0.18, 0.82] if strip else None, vertical_spacing=0.03
    )
    per_layer = 2 * len(labels) if strip else len(labels)
    for layer in layers:
        df = proj[proj["layer"] == layer]
        lo, hi = float(df["projection"].min()), float(df["projection"].max())
        size = (hi - lo) / nbins if hi > lo else 1.0
        bins = {"start": lo, "end": hi + size, "size": size}  # shared by the labels; the maximum included
        for i, lab in enumerate(labels):
            rows, color = df[df["label"] == lab], _color(SPLIT_COLORS, lab, i)
            fig.add_trace(
                go.Histogram(
                    x=rows["projection"],
                    xbins=bins,
                    name=lab,
                    marker_color=color,
                    opacity=0.6,
                    histnorm="probability",
                    visible=layer == best,
                    legendgroup=lab,
                    hovertemplate="%{x}: %{y:.1%}<extra>" + lab + "</extra>",
                ),
                main,
                1,
            )
            if strip:
                fig.add_trace(
                    go.Box(
                        x=rows["projection"],
                        name=lab,
                        boxpoints="all",
                        jitter=1,
                        pointpos=0,
                        fillcolor="rgba(0,0,0,0)",
                        line={"width": 0},
                        visible=layer == best,
                        marker={"size": 4, "color": color},
                        showlegend=False,
                        legendgroup=lab,
                        text=[_wrap(p, limit=200) for p in rows["prompt"]],
                        hovertemplate="%{x:.3g}<br>%{text}<extra></extra>",
                    ),
                    1,
                    1,
                )
    head = "Projection onto the refusal direction"
    steps: list[dict[str, Any]] = [
        {
            "method": "update",
            "label": str(layer),
            "args": [
                {"visible": [j // per_layer == k for j in range(per_layer * len(layers))]},
                {"title": _title(f"{head}, layer {layer}", model, f"|Cohen's d| = {d[layer]:.2f}")},
            ],
        }
        for k, layer in enumerate(layers)
    ]
    fig.update_layout(
        template=TEMPLATE,
        barmode="overlay",
        title=steps[layers.index(best)]["args"][1]["title"],
        sliders=[
            {"active": layers.index(best), "steps": steps, "pad": {"t": 50}, "currentvalue": {"prefix": "layer "}}
        ],
    )
    fig.update_xaxes(title_text="projection onto r̂ (activation units)", row=main, col=1)
    fig.update_yaxes(title_text="fraction of prompts", row=main, col=1)
    return fig.update_yaxes(showticklabels=False, row=1, col=1) if strip else fig


def _family(name: str) -> str:
    name = str(name)
    return name.split(":", 1)[0] if ":" in name else (re.match(r"[A-Za-z]+", name) or [name])[0]


def layer_subset_figure(summary: pd.DataFrame, *, model: str | None = None) -> go.Figure:
    """Refusal rate vs the number of blocks the direction is ablated in, one line per subset family
    (the name before ':', e.g. ``first:4`` → first, ``window:10-20`` → window). Needs columns
    subset, n_blocks, first_layer, last_layer, refusal_rate (:func:`~workbench.experiments.layer_subset_sweep`)."""
    cols = ["subset", "n_blocks", "first_layer", "last_layer", "refusal_rate"]
    _require(summary, cols, "summary", "use layer_subset_sweep()")
    df = summary.assign(family=summary["subset"].map(_family)).sort_values(["n_blocks", "first_layer"])
    fig = _fig(
        title=_title("Refusal after ablating the direction in a subset of blocks", model),
        xaxis={"title": {"text": "number of intervened blocks"}},
        yaxis={"title": {"text": "refusal rate (fraction of prompts)"}, "range": [0, 1.05], "tickformat": ".0%"},
    )
    for i, (family, rows) in enumerate(df.groupby("family", sort=False)):
        span = [
            f"layers {a}–{b}" + ("" if b - a + 1 == n else f" ({n} blocks, not contiguous)")
            for a, b, n in zip(rows["first_layer"], rows["last_layer"], rows["n_blocks"])
        ]
        fig.add_trace(
            go.Scatter(
                x=rows["n_blocks"],
                y=rows["refusal_rate"],
                mode="lines+markers",
                name=family,
                line={"color": _OTHER[i % len(_OTHER)]},
                text=rows["subset"],
                hovertext=span,
                hovertemplate="%{text}: %{hovertext}<br>refusal %{y:.0%}<extra></extra>",
            )
        )
    return fig


_SPECIAL_KEYS = ("angle_before", "ablation_angle", "alphas", "addition_angle")


def special_cases_figure(result: dict, *, max_tokens: int = 60, model: str | None = None) -> go.Figure:
    """Ablation and addition as rotations in each token's own plane span(r̂, x)
    (:func:`~workbench.steering_math.special_cases`). Left: the per-token angle before and after
    ablation (all at exactly 90°). Right: the angle after adding αr vs α (thin: up to
    ``max_tokens`` tokens; bold: mean) — it tends to 0° / 180° but never crosses, a rotation < 180°."""
    missing = [k for k in _SPECIAL_KEYS if k not in result]
    if missing:
        raise ValueError(f"result lacks key(s) {missing}; pass the dict from steering_math.special_cases()")
    before, after = _np(result["angle_before"]).ravel(), _np(result["ablation_angle"]).ravel()
    alphas = _np(result["alphas"]).ravel()
    add = _np(result["addition_angle"]).reshape(len(alphas), -1)
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.1,
        subplot_titles=("ablation: every token rotated to 90°", "addition x + αr: angle vs α"),
    )
    fig.update_layout(template=TEMPLATE, barmode="overlay")
    for vals, name, color in ((before, "before ablation", "#7f8c8d"), (after, "after ablation", "#8e44ad")):
        fig.add_trace(
            go.Histogram(
                x=vals,
                name=name,
                marker_color=color,
                opacity=0.7,
                xbins={"start": 0, "end": 180, "size": 2},
                hovertemplate="%{x}°: %{y} tokens<extra>" + name + "</extra>",
            ),
            1,
            1,
        )
    tok = add[:, :max_tokens]
    xs = np.concatenate([np.append(alphas, np.nan) for _ in range(tok.shape[1])])
    ys = np.concatenate([np.append(tok[:, j], np.nan) for j in range(tok.shape[1])])
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines",
            name=f"tokens (first {tok.shape[1]})",
            hoverinfo="skip",
            line={"color": "rgba(192,57,43,0.25)", "width": 1},
        ),
        1,
        2,
    )
    fig.add_trace(
        go.Scatter(
            x=alphas,
            y=add.mean(1),
            mode="lines",
            name="mean over tokens",
            line={"color": "#c0392b", "width": 4},
            hovertemplate="α = %{x:.3g}: %{y:.1f}°<extra>mean</extra>",
        ),
        1,
        2,
    )
    for y, dash in ((0, "dash"), (90, "dot"), (180, "dash")):
        fig.add_hline(y=y, line={"dash": dash, "color": "black", "width": 1}, row=1, col=2)
    res = [
        f"max {k} = {float(_np(result[k]).max()):.1e}"
        for k in ("ablation_residual", "addition_residual")
        if k in result
    ]
    return fig.update_layout(
        xaxis={"title": {"text": "angle in span(r̂, x) (degrees; 0° = along r̂)"}, "range": [0, 180]},
        yaxis={"title": {"text": "tokens"}},
        xaxis2={"title": {"text": "α (coefficient of r, raw units)"}},
        yaxis2={"title": {"text": "angle after addition (degrees)"}, "range": [-5, 185], "dtick": 45},
        title=_title("Ablation and addition are rotations in each token's own plane", model, "; ".join(res) or None),
    )


# ---------------------------------------------------------------------------------------------- saving
_EXPORT: dict = {"up": False, "failed": None, "warned": False}  # kaleido's sync server in this process
_LOCK = threading.Lock()
_TIMEOUT = 120  # s: the first PNG includes the browser's start; kaleido itself gives up on a render after 90 s
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SPEC_KEY = b"workbench-spec-sha256"


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


def _spec_hash(fig: go.Figure, opts: dict) -> str:
    """sha256 of what a PNG is drawn from: the figure's JSON (keys sorted), the export options and the
    plotly version (its plotly.js draws the figure)."""
    spec = {"figure": json.loads(fig.to_json()), "opts": opts, "plotly": plotly.__version__}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
    clean: the HTML (div id taken from ``name``) is compared byte for byte; the PNG carries a sha256 of
    the figure and export options in a tEXt chunk, and the same hash skips the export.
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
        digest = _spec_hash(fig, opts)
        if _png_text(target, _SPEC_KEY) != digest:  # Chromium's PNG bytes differ run to run: export only on change
            data = _png(fig, opts)
            if data is None:
                return paths
            atomic_write_bytes(target, _png_with_text(data, _SPEC_KEY, digest))
        paths.append(target)
    return paths


def rotation_variants_figure(table: pd.DataFrame, *, model: str | None = None) -> go.Figure:
    """Mean first-token refusal log-odds (top) and KL to the unsteered model (bottom) vs the steering
    angle, one line per way to rotate (``variant``: rotation site × plane candidates), harmful and
    harmless test prompts side by side. Needs columns variant, split, angle, logodds, kl
    (:func:`~workbench.experiments.rotation_variant_sweep`)."""
    _require(table, ["variant", "split", "angle", "logodds", "kl"], "table", "use rotation_variant_sweep()")
    splits = _splits(table)
    fig = make_subplots(
        rows=2,
        cols=len(splits),
        shared_xaxes=True,
        subplot_titles=[f"{s}: refusal log-odds" for s in splits] + [f"{s}: KL to unsteered (nats)" for s in splits],
        vertical_spacing=0.12,
    )
    fig.update_layout(
        template=TEMPLATE,
        title=_title("What the rotation variants change: the same angles, four ways to rotate", model),
    )
    for i, (variant, rows) in enumerate(table.groupby("variant", sort=False)):
        color, dash = _OTHER[i % len(_OTHER)], "solid" if i == 0 else ("dash", "dot", "dashdot")[(i - 1) % 3]
        for j, split in enumerate(splits):
            part = rows[rows.split == split].sort_values("angle")
            for row, column in ((1, "logodds"), (2, "kl")):
                fig.add_trace(
                    go.Scatter(
                        x=part["angle"],
                        y=part[column],
                        mode="lines+markers",
                        name=variant,
                        legendgroup=variant,
                        showlegend=row == 1 and j == 0,
                        line={"color": color, "dash": dash},
                        hovertemplate=f"{variant}<br>%{{x}}°: %{{y:.2f}}<extra></extra>",
                    ),
                    row=row,
                    col=j + 1,
                )
    fig.update_xaxes(title_text="angle (degrees, 0° = b1, toward b2)", tickvals=list(range(0, 360, 30)), row=2)
    fig.add_hline(y=0, line={"color": "#888", "width": 1}, row=1)
    return fig


def label_map_polar(summary: pd.DataFrame, *, model: str | None = None) -> go.Figure:
    """The angle map: stacked polar bars of the label shares (``share_<label>``) at each steering
    angle, one circle per prompt set (``split``: harmful, harmless, warning, redirect ...); 0° = b1
    east, counter-clockwise toward b2; radius = fraction of the set's prompts. Needs the columns of
    :func:`~workbench.experiments.angle_sweep`'s summary."""
    _require(summary, ["split", "angle"], "summary", "use angle_sweep()")
    splits = _splits(summary)
    cols = min(2, len(splits))
    n_rows = -(-len(splits) // cols)
    fig = make_subplots(
        rows=n_rows,
        cols=cols,
        specs=[[{"type": "polar"}] * cols for _ in range(n_rows)],
        subplot_titles=[f"{split} (n = {int(summary[summary.split == split]['n'].iloc[0])})" for split in splits]
        if "n" in summary
        else splits,
        horizontal_spacing=0.12,
        vertical_spacing=0.1,
    )
    polar = {
        "angularaxis": {"rotation": 0, "direction": "counterclockwise", "dtick": 45},
        "radialaxis": {"range": [0, 1], "tickformat": ".0%", "angle": 90, "tickangle": 90},
        "barmode": "stack",
    }
    for i, split in enumerate(splits):
        rows = summary[summary["split"] == split].sort_values("angle")
        gaps = np.diff(np.unique(rows["angle"]))
        width = 0.9 * float(gaps.min()) if len(gaps) else 20.0
        for lab in LABEL_ORDER:
            if f"share_{lab}" not in rows:
                continue
            fig.add_trace(
                go.Barpolar(
                    theta=rows["angle"],
                    r=rows[f"share_{lab}"].fillna(0),
                    width=width,
                    name=lab,
                    marker_color=LABEL_COLORS[lab],
                    legendgroup=lab,
                    showlegend=i == 0,
                    hovertemplate="%{theta:.0f}°: %{r:.0%}<extra>" + f"{split}: {lab}" + "</extra>",
                ),
                i // cols + 1,
                i % cols + 1,
            )
    fig.update_layout(
        template=TEMPLATE,
        height=520 * n_rows,
        **{f"polar{'' if i == 0 else i + 1}": polar for i in range(n_rows * cols)},
        title=_title(
            "The angle map: response labels at each steering angle",
            model,
            "0° = b1 (refusal direction), counter-clockwise toward b2; bar = share of the set's prompts",
        ),
    )
    return fig


def behaviour_bars(summary: pd.DataFrame, *, model: str | None = None) -> go.Figure:
    """Unsteered behaviour per held-out prompt category: stacked horizontal bars of the label shares
    (``share_<label>``, one row per ``category``; :func:`~workbench.experiments.behaviour_table`)."""
    _require(summary, ["category", "n"], "summary", "use behaviour_table()")
    fig = _fig(
        barmode="stack",
        height=120 + 60 * len(summary),
        xaxis={"title": "share of the category's prompts", "tickformat": ".0%", "range": [0, 1]},
        yaxis={"autorange": "reversed"},
        title=_title(
            "What the model does unsteered, per prompt category", model, "heuristic labels, greedy, test split"
        ),
    )
    names = [f"{c} (n = {n})" for c, n in zip(summary["category"], summary["n"])]
    for lab in LABEL_ORDER:
        if f"share_{lab}" in summary:
            fig.add_trace(
                go.Bar(
                    y=names,
                    x=summary[f"share_{lab}"],
                    orientation="h",
                    name=lab,
                    marker_color=LABEL_COLORS[lab],
                    hovertemplate="%{y}: %{x:.0%}<extra>" + lab + "</extra>",
                )
            )
    return fig
