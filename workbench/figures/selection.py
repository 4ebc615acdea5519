"""Figures of the candidate directions: their scores by layer and position (:func:`selection_heatmaps`),
their pairwise cosines (:func:`cosine_matrix_figure`) and how the prompts project onto the chosen one
(:func:`projection_histograms`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import (
    _DIVERGING,
    SPLIT_COLORS,
    STAT_TITLES,
    TEMPLATE,
    _color,
    _fig,
    _np,
    _require,
    _splits,
    _title,
    _wrap,
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
        _add_stat_heatmap(fig, table, stat, i, marks)
        fig.update_yaxes(title_text="pos (tokens from end)", dtick=1, row=i, col=1)
    fig.update_xaxes(title_text="layer", row=len(shown), col=1)
    return fig.update_layout(
        template=TEMPLATE,
        height=max(420, 230 * len(shown)),
        title=_title(f"Candidate directions at {site}: scores by layer and position", model),
    )


def _add_stat_heatmap(fig: go.Figure, table: pd.DataFrame, stat: str, i: int, marks: list) -> None:
    """Row ``i``: the layer × pos heatmap of ``stat`` (its colour bar beside the row) and the
    ``marks`` ((method, key) pairs) as labelled crosses."""
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
    d = {layer: _separation(proj[proj["layer"] == layer], labels) for layer in layers}
    best = max(layers, key=lambda layer: d[layer])
    fig = make_subplots(
        rows=main, cols=1, shared_xaxes=True, row_heights=[0.18, 0.82] if strip else None, vertical_spacing=0.03
    )
    per_layer = 2 * len(labels) if strip else len(labels)
    for layer in layers:
        _add_layer(fig, proj[proj["layer"] == layer], labels, nbins, visible=layer == best, strip=strip)
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


def _separation(df: pd.DataFrame, labels: list[str]) -> float:
    """|Cohen's d| between the projections of the first two ``labels`` (0 without two labels of ≥ 2 rows)."""
    g = [df.loc[df["label"] == lab, "projection"].to_numpy(float) for lab in labels[:2]]
    pooled = np.sqrt((g[0].var(ddof=1) + g[1].var(ddof=1)) / 2) if len(g) == 2 and min(map(len, g)) > 1 else 0
    return float(abs(g[0].mean() - g[1].mean()) / pooled) if pooled > 0 else 0.0


def _add_layer(fig: go.Figure, df: pd.DataFrame, labels: list[str], nbins: int, *, visible: bool, strip: bool) -> None:
    """One layer's frame: per label a histogram (bins shared by the labels) in the main row and, with
    ``strip``, a hoverable per-prompt strip in the row above."""
    main = 2 if strip else 1
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
                visible=visible,
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
                    visible=visible,
                    marker={"size": 4, "color": color},
                    showlegend=False,
                    legendgroup=lab,
                    text=[_wrap(p, limit=200) for p in rows["prompt"]],
                    hovertemplate="%{x:.3g}<br>%{text}<extra></extra>",
                ),
                1,
                1,
            )
