"""Figures of the response labels: the angle map of label shares at each steering angle
(:func:`label_map_polar`) and the unsteered behaviour per prompt category (:func:`behaviour_bars`)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..stats import wilson_half_width
from .style import LABEL_COLORS, LABEL_ORDER, TEMPLATE, _bar_polar, _fig, _label_bars, _require, _splits, _title


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
        subplot_titles=[_set_title(summary, split) for split in splits],
        horizontal_spacing=0.12,
        vertical_spacing=0.1,
    )
    polar = _bar_polar()
    for i, split in enumerate(splits):
        rows = summary[summary["split"] == split].sort_values("angle")

        def per_label(lab: str, i=i, split=split) -> dict:
            hover = "%{theta:.0f}°: %{r:.0%}<extra>" + f"{split}: {lab}" + "</extra>"
            return {"legendgroup": lab, "showlegend": i == 0, "hovertemplate": hover}

        for trace in _label_bars(rows, per_label):
            fig.add_trace(trace, i // cols + 1, i % cols + 1)
    fig.update_layout(
        template=TEMPLATE,
        height=520 * n_rows,
        **{f"polar{'' if i == 0 else i + 1}": polar for i in range(n_rows * cols)},
        title=_title(
            "The angle map: response labels at each steering angle",
            model,
            "0° = b1 (refusal direction), counter-clockwise toward b2; bar = share of the set's prompts, "
            "the labels stacking to 100 % at each angle",
        ),
    )
    return fig


def _set_title(summary: pd.DataFrame, split: str) -> str:
    """``harmful: n = 16 per angle, 95 % CI ≤ ±22 pts``: the set, its n and the widest Wilson
    interval a share on n prompts has (its half-width at 50 %)."""
    if "n" not in summary:
        return split
    n = int(summary[summary.split == split]["n"].iloc[0])
    return f"{split}: n = {n} per angle, 95 % CI ≤ ±{100 * wilson_half_width(n):.0f} pts"


def behaviour_bars(summary: pd.DataFrame, *, model: str | None = None) -> go.Figure:
    """Unsteered behaviour per held-out prompt category: stacked horizontal bars of the label shares
    (``share_<label>``, one row per ``category``; :func:`~workbench.experiments.behaviour_table`).
    Each row names its n; the subtitle gives the widest 95 % Wilson interval a share on the smallest
    n has, and with ``share_<label>_ci_lo`` / ``_hi`` each bar's hover its own interval."""
    _require(summary, ["category", "n"], "summary", "use behaviour_table()")
    widest = (
        f"; a share's 95 % CI ≤ ±{100 * wilson_half_width(int(summary['n'].min())):.0f} pts" if len(summary) else ""
    )
    fig = _fig(
        barmode="stack",
        height=120 + 60 * len(summary),
        xaxis={"title": "share of the category's prompts", "tickformat": ".0%", "range": [0, 1]},
        yaxis={"autorange": "reversed"},
        title=_title(
            "What the model does unsteered, per prompt category",
            model,
            f"heuristic labels, greedy, test split; n = prompts per category{widest}",
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
                    text=_interval_texts(summary, f"share_{lab}"),
                    textposition="none",
                    hovertemplate="%{y}: %{x:.0%}%{text}<extra>" + lab + "</extra>",
                )
            )
    return fig


def _interval_texts(summary: pd.DataFrame, column: str) -> list[str]:
    """`` [45–77 %]`` per row: the share's 95 % Wilson interval for the hover; empty without one."""
    if f"{column}_ci_lo" not in summary:
        return [""] * len(summary)
    bounds = zip(summary[f"{column}_ci_lo"], summary[f"{column}_ci_hi"])
    return [f" [{lo:.0%}–{hi:.0%}]" if lo == lo else "" for lo, hi in bounds]
