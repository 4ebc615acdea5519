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
    kl_max: float | None = 0.1,
    kl_fallback: float | None = None,
    model: str | None = None,
) -> go.Figure:
    """Layer (x) × position (y) heatmaps of candidate scores at one ``site``, one row per statistic.

    ``table``: columns site (optional), layer, pos and any of ``stats`` — e.g.
    :attr:`~workbench.selection.Selection.table`, :func:`~workbench.selection.candidate_stats` or
    :func:`~workbench.experiments.arditi_scores`. Absent or all-NaN statistics are skipped.
    bypass/induce (and other signed scores) use a diverging scale centred at 0. ``choices``
    (``{method: key with .site/.layer/.pos}``, e.g. ``Selection.choices``) marks the chosen candidates.
    KL, with a filter threshold ``kl_max`` (Arditi's 0.1; None: a plain linear scale), is coloured on
    a log scale diverging at the threshold (blue passes, red fails) and the candidates within it are
    dotted; ``kl_fallback`` (the relaxed threshold a fallback used) rings those within that one.
    With an ``arditi_pass`` column, the bypass row dots the candidates that pass every filter.
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
        subplot_titles=[_row_title(table, s, kl_max, kl_fallback) for s in shown],
    )
    marks = [(m, k) for m, k in (choices or {}).items() if getattr(k, "site", site) == site]
    for i, stat in enumerate(shown, start=1):
        _add_stat_heatmap(fig, table, stat, i, marks, kl_max if stat == "kl" else None)
        _add_passing(fig, table, stat, i, kl_max, kl_fallback)
        fig.update_yaxes(title_text="pos (tokens from end)", dtick=1, row=i, col=1)
    fig.update_xaxes(title_text="layer", row=len(shown), col=1)
    return fig.update_layout(
        template=TEMPLATE,
        height=max(420, 230 * len(shown)),
        title=_title(f"Candidate directions at {site}: scores by layer and position", model),
    )


def _add_stat_heatmap(
    fig: go.Figure, table: pd.DataFrame, stat: str, i: int, marks: list, threshold: float | None
) -> None:
    """Row ``i``: the layer × pos heatmap of ``stat`` (its colour bar beside the row; on a log
    scale diverging at ``threshold`` when one is given) and the ``marks`` ((method, key) pairs) as
    labelled crosses."""
    grid = table.pivot_table(index="pos", columns="layer", values=stat, aggfunc="mean", dropna=False)
    dom = fig.layout[f"yaxis{'' if i == 1 else i}"].domain
    diverging = stat in _DIVERGING
    colour = {"colorscale": "RdBu_r" if diverging else "Viridis", "zmid": 0 if diverging else None}
    bar = {"title": {"text": stat}}
    if threshold is not None:
        colour, bar = _log_threshold_scale(stat, threshold)
    fig.add_trace(
        go.Heatmap(
            z=np.log10(np.clip(grid.values, *_log_range(threshold))) if threshold is not None else grid.values,
            customdata=grid.values,
            x=grid.columns,
            y=grid.index,
            name=stat,
            **colour,
            colorbar={
                **bar,
                "len": dom[1] - dom[0],
                "y": (dom[0] + dom[1]) / 2,
                "yanchor": "middle",
                "thickness": 14,
            },
            hovertemplate="layer %{x}, pos %{y}<br>" + stat + " = %{customdata:.4g}<extra></extra>",
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
                cliponaxis=False,  # the label above a top-row cross stays whole
                marker={"symbol": "x-thin", "size": 13, "line": {"width": 2.5, "color": "black"}},
                hovertemplate="%{text}: layer %{x}, pos %{y}<extra></extra>",
            ),
            i,
            1,
        )


def _row_title(table: pd.DataFrame, stat: str, kl_max: float | None, kl_fallback: float | None) -> str:
    """A row's title: the statistic's, and what its dots and rings mark (see :func:`_add_passing`)."""
    title = STAT_TITLES.get(stat, stat)
    if stat == "kl" and kl_max is not None:
        ring = f", ○ ≤ {kl_fallback:g} (fallback)" if kl_fallback is not None and kl_fallback > kl_max else ""
        return f"{title}; log colour, • ≤ {kl_max:g} passes the KL filter{ring}"
    if stat == "bypass" and "arditi_pass" in table:
        n = int(table["arditi_pass"].fillna(False).astype(bool).sum())
        return f"{title}; • passes every filter ({n or 'none'})"
    return title


def _log_range(threshold: float) -> tuple[float, float]:
    """The values a log colour scale centred at ``threshold`` spans: two decades either side."""
    return threshold / 100, threshold * 100


def _log_threshold_scale(stat: str, threshold: float) -> tuple[dict, dict]:
    """Heatmap colour settings and colour-bar settings for log10 values diverging at ``threshold``:
    blue at or below it (passes the filter), red above, ticks at the decades and the threshold."""
    lo, hi = _log_range(threshold)
    ticks = sorted({*(10.0**k for k in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)), threshold})
    ticks = [t for t in ticks if lo <= t <= hi]
    colour = {"colorscale": "RdBu_r", "zmid": np.log10(threshold), "zmin": np.log10(lo), "zmax": np.log10(hi)}
    bar = {
        "title": {"text": f"{stat} (log)<br>≤ {threshold:g} passes"},
        "tickvals": [float(np.log10(t)) for t in ticks],
        "ticktext": [f"<b>{t:g} ◀</b>" if t == threshold else f"{t:g}" for t in ticks],
    }
    return colour, bar


def _add_passing(
    fig: go.Figure, table: pd.DataFrame, stat: str, i: int, kl_max: float | None, kl_fallback: float | None
) -> None:
    """Row ``i``'s dots on the candidates that pass: on the KL row those with kl ≤ ``kl_max`` (dots)
    and ≤ ``kl_fallback`` (rings); on the bypass row those with ``arditi_pass`` (every filter)."""
    if stat == "kl" and kl_max is not None:
        sets = [(table["kl"] <= kl_max, "circle", f"kl ≤ {kl_max:g}")]
        if kl_fallback is not None and kl_fallback > kl_max:
            within = (table["kl"] > kl_max) & (table["kl"] <= kl_fallback)
            sets.append((within, "circle-open", f"kl ≤ {kl_fallback:g} (the fallback's threshold)"))
    elif stat == "bypass" and "arditi_pass" in table:
        sets = [(table["arditi_pass"].fillna(False).astype(bool), "circle", "passes every filter of Arditi's")]
    else:
        return
    for mask, symbol, what in sets:
        rows = table[mask]
        fig.add_trace(
            go.Scatter(
                x=rows["layer"],
                y=rows["pos"],
                mode="markers",
                name=what,
                showlegend=False,
                # black, a dot with a white rim: visible on the white threshold colour and on both ends
                marker={"symbol": symbol, "size": 7, "color": "black", "line": {"width": 1, "color": "white"}},
                hovertemplate="layer %{x}, pos %{y}: " + what + "<extra></extra>",
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


def projection_histograms(
    proj: pd.DataFrame, *, layer: int | None = None, nbins: int = 40, model: str | None = None
) -> go.Figure:
    """Overlaid histograms of per-prompt projections onto the chosen direction, one frame per layer
    (slider); the frame shown first (the slider's active step, and a static export) is ``layer``
    (the direction's own, e.g. ``direction.layer``), else the layer with the largest separation
    (|Cohen's d|). Needs columns layer, label ("harmful"/"harmless"), projection; a ``prompt``
    column adds a hoverable per-prompt strip above the histograms."""
    _require(proj, ["layer", "label", "projection"], "proj")
    layers = sorted(proj["layer"].unique())
    if layer is not None and layer not in layers:
        raise ValueError(f"layer {layer} has no projections; the table has layers {layers}")
    labels = _splits(proj.rename(columns={"label": "split"}))
    strip = "prompt" in proj
    main = 2 if strip else 1  # the histogram row
    d = {k: _separation(proj[proj["layer"] == k], labels) for k in layers}
    best = max(layers, key=lambda k: d[k]) if layer is None else layer
    own = "" if layer is None else "; the direction's own layer"
    fig = make_subplots(
        rows=main, cols=1, shared_xaxes=True, row_heights=[0.18, 0.82] if strip else None, vertical_spacing=0.03
    )
    per_layer = 2 * len(labels) if strip else len(labels)
    for k in layers:
        _add_layer(fig, proj[proj["layer"] == k], labels, nbins, visible=k == best, strip=strip)
    head = "Projection onto the refusal direction"
    steps: list[dict[str, Any]] = [
        {
            "method": "update",
            "label": str(k),
            "args": [
                {"visible": [j // per_layer == i for j in range(per_layer * len(layers))]},
                {"title": _title(f"{head}, layer {k}", model, f"|Cohen's d| = {d[k]:.2f}{own if k == layer else ''}")},
            ],
        }
        for i, k in enumerate(layers)
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
