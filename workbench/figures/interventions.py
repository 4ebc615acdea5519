"""Figures of the interventions: where to ablate (:func:`location_comparison`), in how many blocks
(:func:`layer_subset_figure`), and ablation and addition as rotations (:func:`special_cases_figure`)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..experiments import mean_intervals
from .style import (
    _OTHER,
    CONDITION_ORDER,
    NEUTRAL,
    SPLIT_COLORS,
    TEMPLATE,
    _color,
    _fig,
    _hover,
    _interval_text,
    _np,
    _rate_error,
    _require,
    _splits,
    _title,
    condition_name,
)


def location_comparison(
    summary: pd.DataFrame, per_prompt: pd.DataFrame | None = None, *, model: str | None = None
) -> go.Figure:
    """Refusal rate under ablation at each location, harmful and harmless side by side.

    Left: grouped bars of ``refusal_rate`` per condition (none / resid / attn / mlp / all /
    addition, present ones in that order, unknown ones after), one bar per split, with
    ``empty_rate`` as ✕ markers when present, and 95 % Wilson intervals as error bars when the
    summary has ``refusal_ci_lo`` / ``refusal_ci_hi``. Right: mean first-token ``kl`` per condition on the
    harmless split (the first split if there is none), in a neutral colour, not the split's. Needs
    ``summary`` columns split, condition, refusal_rate, kl (from
    :func:`~workbench.experiments.compare_locations`); ``per_prompt`` (split, condition, prompt,
    response, kl) adds example responses to the bar hover, per-prompt KL points and their mean's 95 % CI.
    """
    _require(summary, ["split", "condition", "refusal_rate", "kl"], "summary", "use compare_locations()")
    present = list(dict.fromkeys(summary["condition"]))
    order = [c for c in CONDITION_ORDER if c in present] + [c for c in present if c not in CONDITION_ORDER]
    names = [condition_name(c) for c in order]
    if per_prompt is not None:
        _require(per_prompt, ["split", "condition", "prompt", "response", "kl"], "per_prompt")
    kl_split = "harmless" if "harmless" in set(summary["split"]) else _splits(summary)[0]
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.62, 0.38],
        horizontal_spacing=0.1,
        subplot_titles=("refusal rate", f"first-token KL vs unsteered, {kl_split} prompts only"),
    )
    fig.update_layout(template=TEMPLATE, barmode="group", scattermode="group")
    for i, split in enumerate(_splits(summary)):
        _add_refusal_bars(fig, summary, per_prompt, split, i, order, names)
    _add_kl(fig, summary, per_prompt, kl_split, order, names)
    fig.update_xaxes(title_text="intervention", categoryorder="array", categoryarray=names)
    fig.update_xaxes(title_text=_kl_axis_title(summary, per_prompt, kl_split), col=2)
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


def _add_refusal_bars(
    fig: go.Figure,
    summary: pd.DataFrame,
    per_prompt: pd.DataFrame | None,
    split: str,
    i: int,
    order: list,
    names: list,
) -> None:
    """Left panel, one split: its refusal-rate bars (hover: n and up to two example responses) and,
    when the summary has ``empty_rate``, its empty-rate markers."""
    rows = summary[summary["split"] == split].set_index("condition").reindex(order)
    intervals = _interval_text(rows)
    hover = [ci or f"n = {'?' if 'n' not in rows else str(rows.at[c, 'n'])}" for c, ci in zip(order, intervals)]
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
            error_y=_rate_error(rows),
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


def _add_kl(
    fig: go.Figure,
    summary: pd.DataFrame,
    per_prompt: pd.DataFrame | None,
    kl_split: str,
    order: list,
    names: list,
) -> None:
    """Right panel: mean KL per condition on ``kl_split`` as bars, and with ``per_prompt`` each
    prompt's KL as a hoverable point and each mean's 95 % bootstrap interval over the prompts
    (:func:`~workbench.experiments.mean_intervals`) as an error bar."""
    rows = summary[summary["split"] == kl_split].set_index("condition").reindex(order)
    pp = (
        None
        if per_prompt is None
        else per_prompt[(per_prompt["split"] == kl_split) & per_prompt["condition"].isin(order)]
    )
    if pp is not None and len(pp):
        ci = mean_intervals(pp, ["condition"], ["kl"]).set_index("condition").reindex(order)
        rows = rows.assign(kl_ci_lo=ci["kl_ci_lo"], kl_ci_hi=ci["kl_ci_hi"])
    fig.add_trace(
        go.Bar(
            x=names,
            y=rows["kl"],
            name=f"KL on {kl_split} prompts",
            legendgroup="kl",
            marker_color=NEUTRAL,
            error_y=_rate_error(rows, "kl", "kl"),
            hovertemplate="%{x}: mean KL %{y:.3g} nats<extra></extra>",
        ),
        1,
        2,
    )
    if pp is not None:
        fig.add_trace(
            go.Box(
                x=[condition_name(c) for c in pp["condition"]],
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


def _kl_axis_title(summary: pd.DataFrame, per_prompt: pd.DataFrame | None, split: str) -> str:
    """The KL panel's x title: with ``per_prompt`` (so the bars carry bootstrap intervals) it says
    over how many prompts, ``n = 54 prompts`` when every condition of ``split`` has the same n."""
    if per_prompt is None:
        return "intervention"
    ns = set(summary.loc[summary["split"] == split, "n"]) if "n" in summary else set()
    n = f"n = {int(ns.pop())} prompts; " if len(ns) == 1 else ""
    return f"intervention ({n}error bars: 95 % bootstrap CI of the mean)"


def _family(name: str) -> str:
    name = str(name)
    return name.split(":", 1)[0] if ":" in name else (re.match(r"[A-Za-z]+", name) or [name])[0]


# the legend's words for the families of workbench.interventions.layer_subsets
_FAMILY_NAMES = {
    "first": "first k blocks",
    "last": "last k blocks",
    "window": "window: the middle k blocks",
    "all": "all blocks",
}


def _window_note(df: pd.DataFrame) -> str | None:
    """The subtitle that says what ``window`` is, from its rows: the k blocks centred in the stack."""
    rows = df[df["family"] == "window"]
    if rows.empty:
        return None
    spans = ", ".join(
        f"{a}–{b} (k = {n})" for a, b, n in zip(rows["first_layer"], rows["last_layer"], rows["n_blocks"])
    )
    return f"window = the k contiguous blocks in the middle of the stack, from block ⌊(n_layers − k)/2⌋: blocks {spans}"


def layer_subset_figure(summary: pd.DataFrame, *, model: str | None = None) -> go.Figure:
    """Refusal rate vs the number of blocks the direction is ablated in, one line per subset family
    (the name before ':', e.g. ``first:4`` → first, ``window:10-20`` → window; the trace's
    ``legendgroup``), named in words in the legend; the subtitle spells out each window's blocks and
    the window points carry their span. Needs columns subset, n_blocks, first_layer, last_layer,
    refusal_rate (:func:`~workbench.experiments.layer_subset_sweep`); with ``refusal_ci_lo`` / ``_hi``
    each point carries its 95 % Wilson interval as an error bar."""
    cols = ["subset", "n_blocks", "first_layer", "last_layer", "refusal_rate"]
    _require(summary, cols, "summary", "use layer_subset_sweep()")
    df = summary.assign(family=summary["subset"].map(_family)).sort_values(["n_blocks", "first_layer"])
    fig = _fig(
        title=_title("Refusal after ablating the direction in a subset of blocks", model, _window_note(df)),
        xaxis={"title": {"text": "number of intervened blocks (k)"}},
        yaxis={"title": {"text": "refusal rate (fraction of prompts)"}, "range": [0, 1.05], "tickformat": ".0%"},
    )
    for i, (family, rows) in enumerate(df.groupby("family", sort=False)):
        span = [
            f"layers {a}–{b}" + ("" if b - a + 1 == n else f" ({n} blocks, not contiguous)")
            for a, b, n in zip(rows["first_layer"], rows["last_layer"], rows["n_blocks"])
        ]
        window = family == "window"
        fig.add_trace(
            go.Scatter(
                x=rows["n_blocks"],
                y=rows["refusal_rate"],
                mode="lines+markers+text" if window else "lines+markers",
                name=_FAMILY_NAMES.get(str(family), str(family)),
                legendgroup=family,
                line={"color": _OTHER[i % len(_OTHER)]},
                text=[f"{a}–{b}" for a, b in zip(rows["first_layer"], rows["last_layer"])] if window else None,
                textposition="top center",
                customdata=rows["subset"],
                hovertext=[f"{w}<br>{ci}" for w, ci in zip(span, _interval_text(rows))],
                error_y=_rate_error(rows, color=_OTHER[i % len(_OTHER)]),
                hovertemplate="%{customdata}: %{hovertext}<br>refusal %{y:.0%}<extra></extra>",
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
    _add_ablation_angles(fig, before, after)
    _add_addition_angles(fig, alphas, add, max_tokens)
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


def _add_ablation_angles(fig: go.Figure, before: np.ndarray, after: np.ndarray) -> None:
    """Left panel: histograms of the per-token angle before and after ablation."""
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


def _add_addition_angles(fig: go.Figure, alphas: np.ndarray, add: np.ndarray, max_tokens: int) -> None:
    """Right panel: the angle after addition vs α, one thin line per token (the first ``max_tokens``,
    one trace with NaN breaks), their mean in bold, and guides at 0°, 90° and 180°."""
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
