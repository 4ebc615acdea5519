"""The direction-stability figure (:func:`stability_figure`): over bootstrap resamples of the
direction_train prompts, how often each selection method chose which candidate, and how close each
resampled direction stays to the full sample's (:mod:`workbench.stability`)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import _OTHER, NEUTRAL, TEMPLATE, _require, _title

_CHOSEN = "#2c3e50"  # the full sample's own choice
_OTHERS = ("#aab7b8", "#d5dbdb", "#bfc9ca", "#e5e8e8")  # other keys: light greys, told apart by their edges


def _rows(table: pd.DataFrame) -> list[str]:
    """The quantities in display order: the chosen direction, the methods, b1, b2."""
    present = list(dict.fromkeys(table["quantity"]))
    first = [q for q in ("direction",) if q in present]
    last = [q for q in ("b1", "b2", "span") if q in present]
    return first + [q for q in present if q not in (*first, *last)] + last


def _label(quantity: str, table: pd.DataFrame) -> str:
    rows = table[table["quantity"] == quantity]
    if quantity == "direction":
        return f"direction at {rows['key'].iloc[0]}"
    return {"b1": "plane b1", "b2": "plane b2", "span": "plane (span)"}.get(quantity, quantity)


def _add_choice_bars(fig: go.Figure, table: pd.DataFrame, quantities: list[str]) -> None:
    """Left panel: per method (and b1), stacked horizontal bars of how many resamples chose each
    key: the full sample's key first (dark, labelled), then the others by count (greys)."""
    segments: list[tuple[str, int, str, bool, bool]] = []  # (row, count, key, the full sample's?, wide?)
    for q in quantities:
        rows = table[table["quantity"] == q]
        counts = rows["key"].astype(str).value_counts()
        full = str(rows["full_key"].iloc[0])
        label = _label(q, table)
        segments.append((label, int(counts.get(full, 0)), full, True, True))
        segments += [(label, int(n), str(k), False, n >= 0.15 * len(rows)) for k, n in counts.items() if k != full]
    rank: dict[str, int] = {}
    legend: set[str] = set()  # one legend entry per kind of segment
    for label, n, key, is_full, wide in segments:
        i = rank[label] = rank.get(label, -1) + 1
        group = "full" if is_full else "other"
        fig.add_trace(
            go.Bar(
                x=[n],
                y=[label],
                orientation="h",
                marker_color=_CHOSEN if is_full else _OTHERS[(i - 1) % len(_OTHERS)],
                marker_line={"width": 1, "color": "white"},
                text=[f"{key} ({n})" if is_full else (key if wide else "")],  # narrower ones: the hover
                textposition="inside",
                textangle=0,
                insidetextanchor="middle",
                name="the full sample's choice" if is_full else "another candidate",
                legendgroup=group,
                showlegend=group not in legend,
                hovertemplate=f"{label}: {key} chosen in %{{x}} resamples<extra></extra>",
            ),
            1,
            1,
        )
        legend.add(group)


def _add_cosine_boxes(fig: go.Figure, table: pd.DataFrame, quantities: list[str]) -> None:
    """Right panel: per quantity, a box of the resampled cosines with every resample as a point."""
    for i, q in enumerate(quantities):
        rows = table[table["quantity"] == q]
        fig.add_trace(
            go.Box(
                x=rows["cosine"],
                y=[_label(q, table)] * len(rows),
                orientation="h",
                name=_label(q, table),
                boxpoints="all",
                jitter=0.5,
                pointpos=0,
                marker={"size": 5, "color": NEUTRAL if q in ("b1", "b2", "span") else _OTHER[i % len(_OTHER)]},
                line={"width": 1.5},
                fillcolor="rgba(0,0,0,0)",
                showlegend=False,
                text=[f"resample {r}: {k}" for r, k in zip(rows["resample"], rows["key"])],
                hovertemplate="%{text}<br>cos = %{x:.4f}<extra></extra>",
            ),
            1,
            2,
        )


def stability_figure(table: pd.DataFrame, *, model: str | None = None) -> go.Figure:
    """Two panels from a stability table (:attr:`workbench.stability.Stability.table`): left, per
    selection method and for the plane's b1, how many bootstrap resamples chose each candidate
    (the full sample's choice dark and first); right, the cosine of each resampled direction to the
    full sample's (the chosen direction at its own key, each method's choice, b1, b2; and the
    plane's span: the cosine of its largest principal angle), one point per resample over a box."""
    _require(table, ["resample", "quantity", "key", "full_key", "cosine"], "table", "direction_stability()")
    if table.empty:
        raise ValueError("the stability table is empty; run at least one resample")
    quantities = _rows(table)
    chosen = [q for q in quantities if q not in ("direction", "b2", "span")]
    n = table["resample"].nunique()
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.55, 0.45],
        horizontal_spacing=0.2,
        subplot_titles=["candidate chosen, per method (resamples)", "cosine to the full sample's direction"],
    )
    _add_choice_bars(fig, table, chosen)
    _add_cosine_boxes(fig, table, quantities)
    fig.update_xaxes(title_text=f"resamples (of {n})", range=[0, n], row=1, col=1)
    fig.update_xaxes(title_text="cosine (signed)", row=1, col=2)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    return fig.update_layout(
        template=TEMPLATE,
        barmode="stack",
        height=max(420, 60 * len(quantities) + 200),
        legend={"orientation": "h", "y": -0.18, "x": 0},
        title=_title(
            "Direction stability over bootstrap resamples of direction_train",
            model,
            f"{n} resamples; generation-free selection (Arditi's scores not rescored); "
            "b2's sign fixed by the plane's sign rule",
        ),
    )
