"""Figures of the steering plane and rotation in it: where the candidates lie on the plane
(:func:`plane_projection`), refusal and labels by steering angle (:func:`angle_sweep_polar`) and the
rotation variants side by side (:func:`rotation_variants_figure`). Polar plots use the plane
convention: 0° = b1 (refusal) points east, angles grow counter-clockwise toward b2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import (
    _OTHER,
    RATE_POLAR,
    SITE_SYMBOLS,
    SPLIT_COLORS,
    TEMPLATE,
    _bar_polar,
    _color,
    _fig,
    _interval_text,
    _label_bars,
    _require,
    _splits,
    _title,
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


def angle_sweep_polar(
    summary: pd.DataFrame,
    *,
    baseline: dict | None = None,
    model: str | None = None,
    control: pd.DataFrame | None = None,
) -> go.Figure:
    """Angular steering sweep. (a) ``refusal_rate`` per angle and split (closed curves; 0° = b1
    east, counter-clockwise; r ∈ [0, 1]; dotted circles = ``baseline: {split: unsteered rate}``).
    (b) stacked polar bars of the label shares (``share_<label>``) per angle on the harmful split.
    Needs columns split, angle, refusal_rate (:func:`~workbench.experiments.angle_sweep`); with
    ``refusal_ci_lo`` / ``_hi`` a light band per split spans each angle's 95 % Wilson interval.
    ``control`` (:func:`~workbench.experiments.control_sweep`: split, angle, refusal_rate, plane)
    adds the random plane's refusal per split in (a) as grey markers, each with its interval as a
    radial segment."""
    _require(summary, ["split", "angle", "refusal_rate"], "summary", "use angle_sweep()")
    share_split = "harmful" if "harmful" in set(summary["split"]) else _splits(summary)[0]
    fig = make_subplots(
        rows=1,
        cols=2,
        specs=[[{"type": "polar"}, {"type": "polar"}]],
        horizontal_spacing=0.15,
        subplot_titles=(
            "(a) refusal rate by steering angle",
            f"(b) response labels ({share_split}; each bar stacks to 100 %)",
        ),
    )
    fig.update_layout(template=TEMPLATE, polar=RATE_POLAR, polar2=_bar_polar(), height=650)
    _add_refusal_curves(fig, summary, baseline)
    if control is not None:
        _add_plane_control(fig, control)
    _add_label_shares(fig, summary[summary["split"] == share_split].sort_values("angle"))
    return fig.update_layout(
        title=_title(
            f"Angular steering ({_sweep_mode(summary)}rotation to θ in the plane)",
            model,
            "0° = b1 (refusal direction), counter-clockwise toward b2; radius = fraction of prompts"
            + ("; grey: the same rotation in a random plane (causal control)" if control is not None else ""),
        )
    )


def _add_refusal_curves(fig: go.Figure, summary: pd.DataFrame, baseline: dict | None) -> None:
    """Panel (a): refusal rate by angle, one curve per split (closed when the angles go all the way
    round), and a dotted circle per ``baseline`` split at its unsteered rate."""
    for i, split in enumerate(_splits(summary)):
        rows = summary[summary["split"] == split].sort_values("angle")
        theta, r = list(rows["angle"]), list(rows["refusal_rate"])
        if len(theta) > 2 and 360 - (theta[-1] - theta[0]) <= 1.01 * max(np.diff(theta)):  # full circle: close it
            theta, r = theta + theta[:1], r + r[:1]
        color = _color(SPLIT_COLORS, split, i)
        if "refusal_ci_lo" in rows:
            fig.add_trace(_interval_band(rows, theta, split, color), 1, 1)
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


_CONTROL_GREY = "#626567"
_CONTROL_SYMBOLS = {"harmful": "diamond", "harmless": "square"}


def _add_plane_control(fig: go.Figure, control: pd.DataFrame) -> None:
    """Panel (a): the random plane's refusal rate per split at its angles, grey markers outlined in
    the split's colour, and (with ``refusal_ci_lo`` / ``_hi``) each 95 % interval as a grey radial
    segment (``random plane (seed S)`` in the legend, from the ``plane`` column)."""
    _require(control, ["split", "angle", "refusal_rate"], "control", "use control_sweep()")
    plane = str(control["plane"].iloc[0]) if "plane" in control and len(control) else "random"
    kind, _, seed = plane.partition(":")
    name = f"{kind} plane" + (f" (seed {seed})" if seed else "")
    for i, split in enumerate(_splits(control)):
        rows = control[control["split"] == split].sort_values("angle")
        if "refusal_ci_lo" in rows:
            fig.add_trace(
                go.Scatterpolar(  # one radial segment per angle, broken by gaps
                    theta=[t for a in rows["angle"] for t in (a, a, None)],
                    r=[v for lo, hi in zip(rows["refusal_ci_lo"], rows["refusal_ci_hi"]) for v in (lo, hi, None)],
                    mode="lines",
                    line={"color": _CONTROL_GREY, "width": 2},
                    legendgroup=f"{name} {split}",
                    showlegend=False,
                    hoverinfo="skip",
                ),
                1,
                1,
            )
        fig.add_trace(
            go.Scatterpolar(
                theta=rows["angle"],
                r=rows["refusal_rate"],
                mode="markers",
                name=f"{name}: {split}",
                legendgroup=f"{name} {split}",
                marker={
                    "color": _CONTROL_GREY,
                    "size": 10,
                    "symbol": _CONTROL_SYMBOLS.get(split, "circle"),
                    "line": {"color": _color(SPLIT_COLORS, split, i), "width": 2},
                },
                hovertext=_interval_text(rows),
                hovertemplate="%{theta:.0f}°: %{r:.0%}<br>%{hovertext}<extra>" + f"{name}, {split}" + "</extra>",
            ),
            1,
            1,
        )


def _interval_band(rows: pd.DataFrame, theta: list, split: str, color: str) -> go.Scatterpolar:
    """A light band between the 95 % Wilson bounds of one split's refusal curve (``theta``: the
    curve's angles, closed like it)."""
    lo, hi = list(rows["refusal_ci_lo"]), list(rows["refusal_ci_hi"])
    if len(theta) > len(lo):  # the curve was closed: close the bounds too
        lo, hi = lo + lo[:1], hi + hi[:1]
    n = int(rows["n"].iloc[0]) if "n" in rows else None
    return go.Scatterpolar(
        theta=theta + theta[::-1],
        r=hi + lo[::-1],
        mode="lines",
        fill="toself",
        fillcolor=color,
        opacity=0.18,
        line={"width": 0, "color": color},
        name=f"{split}: 95 % interval" + (f" (n = {n})" if n else ""),
        legendgroup=split,
        hoverinfo="name",
    )


def _add_label_shares(fig: go.Figure, rows: pd.DataFrame) -> None:
    """Panel (b): stacked polar bars of the label shares (``share_<label>``) of ``rows``, one split's."""

    def per_label(lab: str) -> dict:
        hover = "%{theta:.0f}°: %{r:.0%}<extra>" + lab + "</extra>"
        return {"legendgroup": "labels", "legendgrouptitle_text": "labels", "hovertemplate": hover}

    for trace in _label_bars(rows, per_label):
        fig.add_trace(trace, 1, 2)


def _sweep_mode(summary: pd.DataFrame) -> str:
    """The title's description of the sweep, when the table has one: "adaptive: gate on b1, " or
    "non-adaptive ", then the site ("resid-pre ")."""
    mode = ""
    if "adaptive" in summary and summary["adaptive"].nunique() == 1:
        gate = {"True": "b1", "False": "off"}.get(str(summary["adaptive"].iloc[0]), str(summary["adaptive"].iloc[0]))
        mode = "non-adaptive " if gate == "off" else f"adaptive: gate on {gate}, "
    if "site" in summary and summary["site"].nunique() == 1:
        mode += f"{str(summary['site'].iloc[0]).replace('_', '-')} "
    return mode


def rotation_variants_figure(table: pd.DataFrame, *, model: str | None = None) -> go.Figure:
    """Mean first-token refusal log-odds (top) and KL to the unsteered model (bottom) vs the steering
    angle, one line per way to rotate (``variant``: rotation site × plane candidates), harmful and
    harmless test prompts side by side. Needs columns variant, split, angle, logodds, kl
    (:func:`~workbench.experiments.rotation_variant_sweep`). With ``n`` the subtitle says how many
    prompts each mean is over; with ``logodds_ci_lo`` / ``_hi`` and ``kl_ci_lo`` / ``_hi``
    (:func:`~workbench.experiments.mean_intervals`) a light band per variant spans each angle's 95 %
    bootstrap interval of the mean. A table without them (an older run's) draws the lines alone."""
    _require(table, ["variant", "split", "angle", "logodds", "kl"], "table", "use rotation_variant_sweep()")
    splits = _splits(table)
    intervals = all(f"{c}_ci_{end}" in table for c in ("logodds", "kl") for end in ("lo", "hi"))
    fig = make_subplots(
        rows=2,
        cols=len(splits),
        shared_xaxes=True,
        subplot_titles=[f"{s}: refusal log-odds" for s in splits] + [f"{s}: KL to unsteered (nats)" for s in splits],
        vertical_spacing=0.12,
    )
    fig.update_layout(
        template=TEMPLATE,
        title=_title(
            "What the rotation variants change: the same angles, four ways to rotate",
            model,
            _variants_note(table, splits, intervals),
        ),
    )
    for i, (variant, rows) in enumerate(table.groupby("variant", sort=False)):
        color, dash = _OTHER[i % len(_OTHER)], "solid" if i == 0 else ("dash", "dot", "dashdot")[(i - 1) % 3]
        for j, split in enumerate(splits):
            part = rows[rows.split == split].sort_values("angle")
            for row, column in ((1, "logodds"), (2, "kl")):
                if intervals:
                    fig.add_trace(_mean_band(part, column, str(variant), color), row=row, col=j + 1)
                fig.add_trace(_mean_line(part, column, str(variant), color, dash, row == 1 and j == 0), row, j + 1)
    fig.update_xaxes(title_text="angle (degrees, 0° = b1, toward b2)", tickvals=list(range(0, 360, 30)), row=2)
    fig.add_hline(y=0, line={"color": "#888", "width": 1}, row=1)
    return fig


def _variants_note(table: pd.DataFrame, splits: list[str], intervals: bool) -> str:
    """The subtitle: how many prompts each mean is over (per split when they differ) and what the bands are."""
    counts = "the split's"
    if "n" in table:
        ns = {s: _span(table.loc[table.split == s, "n"]) for s in splits}
        same = len(set(ns.values())) == 1
        counts = f"n = {ns[splits[0]]}" if same else ", ".join(f"n = {v} {s}" for s, v in ns.items())
    return f"each point: mean over {counts} prompts" + (
        "; bands: 95 % bootstrap interval of the mean" if intervals else ""
    )


def _span(ns: pd.Series) -> str:
    """``24``, or ``20–24`` when the counts differ (e.g. a set with fewer prompts at some angles)."""
    lo, hi = int(ns.min()), int(ns.max())
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _mean_band(part: pd.DataFrame, column: str, variant: str, color: str) -> go.Scatter:
    """A light band between one variant's 95 % bootstrap bounds of ``column`` over the angles."""
    x = list(part["angle"])
    return go.Scatter(
        x=x + x[::-1],
        y=list(part[f"{column}_ci_hi"]) + list(part[f"{column}_ci_lo"])[::-1],
        mode="lines",
        fill="toself",
        fillcolor=color,
        opacity=0.15,
        line={"width": 0, "color": color},
        name=f"{variant}: 95 % interval",
        legendgroup=variant,
        showlegend=False,
        hoverinfo="skip",
    )


def _mean_line(part: pd.DataFrame, column: str, variant: str, color: str, dash: str, legend: bool) -> go.Scatter:
    """One variant's mean ``column`` per angle; the hover adds its interval and n when the table has them."""
    extra = [""] * len(part)
    if f"{column}_ci_lo" in part:
        extra = [f" [{lo:.2f}, {hi:.2f}]" for lo, hi in zip(part[f"{column}_ci_lo"], part[f"{column}_ci_hi"])]
    if "n" in part:
        extra = [f"{e} (n = {int(n)})" for e, n in zip(extra, part["n"])]
    return go.Scatter(
        x=part["angle"],
        y=part[column],
        mode="lines+markers",
        name=variant,
        legendgroup=variant,
        showlegend=legend,
        line={"color": color, "dash": dash},
        text=extra,
        hovertemplate=f"{variant}<br>%{{x}}°: %{{y:.2f}}%{{text}}<extra></extra>",
    )
