"""Figures of the interventions: where to ablate (:func:`location_comparison`), in how many blocks
(:func:`layer_subset_figure`), ablation and addition as rotations (:func:`special_cases_figure`), and
what each intervention costs on harmless text against the refusal it removes (:func:`damage_vs_effect`)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..experiments import mean_intervals
from .style import (
    _OTHER,
    CONDITION_COLORS,
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
    summary: pd.DataFrame,
    per_prompt: pd.DataFrame | None = None,
    *,
    model: str | None = None,
    controls: pd.DataFrame | None = None,
    control_prompts: pd.DataFrame | None = None,
) -> go.Figure:
    """Refusal rate under ablation at each location, harmful and harmless side by side.

    Left: grouped bars of ``refusal_rate`` per condition (none / resid / attn / mlp / all /
    addition, present ones in that order, unknown ones after), one bar per split, with
    ``empty_rate`` as ✕ markers when present, and 95 % Wilson intervals as error bars when the
    summary has ``refusal_ci_lo`` / ``refusal_ci_hi``. Right: mean first-token ``kl`` per condition on the
    harmless split (the first split if there is none), in a neutral colour, not the split's. Needs
    ``summary`` columns split, condition, refusal_rate, kl (from
    :func:`~workbench.experiments.compare_locations`); ``per_prompt`` (split, condition, prompt,
    response, kl) adds example responses to the bar hover, per-prompt KL points and their mean's
    95 % CI. ``controls`` (:func:`~workbench.experiments.control_locations`) adds hatched bars with
    their intervals right after the condition each controls, in both panels; ``control_prompts``
    (its per-prompt table) the controls' KL intervals.
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
    categories = names if controls is None else _add_controls(fig, controls, order, kl_split, control_prompts)
    fig.update_xaxes(title_text="intervention", categoryorder="array", categoryarray=categories)
    if controls is not None:  # more, longer names: slanted, not stood on end
        fig.update_xaxes(tickangle=-35)
    fig.update_xaxes(title_text=_kl_axis_title(summary, per_prompt, kl_split), col=2)
    return fig.update_layout(
        yaxis={"title": {"text": "refusal rate (fraction of prompts)"}, "range": [0, 1.05], "tickformat": ".0%"},
        yaxis2={"title": {"text": f"mean KL on {kl_split} prompts (nats)"}, "rangemode": "tozero"},
        title=_title(
            "Refusal vs ablation location",
            model,
            "ablation location: residual only, attention output "
            "only, MLP output only, everywhere; plus none and activation addition"
            + (
                "; hatched: the same edit with a random or a null direction (causal controls)"
                if controls is not None
                else ""
            ),
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
            offsetgroup="kl",  # one slot: the controls' KL bars sit in their own categories, full width
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


_CONTROL_PATTERNS = {"random": "/", "null": "x"}


def _control_name(control) -> str:
    """``random:0`` → ``random direction (seed 0)``."""
    kind, _, seed = str(control).partition(":")
    return f"{kind} direction (seed {seed})" if seed else f"{kind} direction"


def _control_category(row) -> str:
    """A control's x category: its base condition's name, then the control's kind."""
    return f"{condition_name(row['base'])}: {str(row['control']).partition(':')[0]} dir."


def _with_kl_intervals(rows: pd.DataFrame, per_prompt: pd.DataFrame | None, split: str) -> pd.DataFrame:
    """``rows`` (one per condition) with ``kl_ci_lo`` / ``_hi``: each mean KL's 95 % bootstrap
    interval over ``per_prompt``'s prompts of ``split`` (:func:`~workbench.experiments.mean_intervals`);
    unchanged without a per-prompt table."""
    if per_prompt is None or not len(pp := per_prompt[per_prompt["split"] == split]):
        return rows
    ci = mean_intervals(pp, ["condition"], ["kl"]).set_index("condition")
    return rows.assign(kl_ci_lo=rows["condition"].map(ci["kl_ci_lo"]), kl_ci_hi=rows["condition"].map(ci["kl_ci_hi"]))


def _add_controls(
    fig: go.Figure, controls: pd.DataFrame, order: list, kl_split: str, control_prompts: pd.DataFrame | None = None
) -> list[str]:
    """Both panels: one hatched bar trace per (control, split) of refusal rates with their 95 %
    intervals (offset like the split's real bars), and the controls' KL on ``kl_split``. Returns
    every x category, each control's right after the condition it controls."""
    _require(controls, ["split", "condition", "control", "base", "refusal_rate", "kl"], "controls")
    controls = controls.assign(category=[_control_category(r) for _, r in controls.iterrows()])
    for i, split in enumerate(_splits(controls)):
        color = _color(SPLIT_COLORS, split, i)
        for control, rows in controls[controls["split"] == split].groupby("control", sort=False):
            shape = _CONTROL_PATTERNS.get(str(control).partition(":")[0], ".")
            fig.add_trace(
                go.Bar(
                    x=rows["category"],
                    y=rows["refusal_rate"],
                    name=f"{split}, {_control_name(control)}",
                    offsetgroup=split,
                    legendgroup=f"control {control}",
                    marker={
                        "color": "white",
                        "line": {"color": color, "width": 1.5},
                        "pattern": {"shape": shape, "fgcolor": color},
                    },
                    error_y=_rate_error(rows),
                    hovertext=_interval_text(rows),
                    hovertemplate="%{x}: %{y:.0%}<br>%{hovertext}<extra>" + _control_name(control) + "</extra>",
                ),
                1,
                1,
            )
    kl = _with_kl_intervals(controls[controls["split"] == kl_split], control_prompts, kl_split)
    fig.add_trace(
        go.Bar(
            x=kl["category"],
            y=kl["kl"],
            name=f"KL on {kl_split} prompts, controls",
            legendgroup="kl",
            offsetgroup="kl",
            marker={
                "color": "white",
                "line": {"color": NEUTRAL, "width": 1.5},
                "pattern": {"shape": "/", "fgcolor": NEUTRAL},
            },
            error_y=_rate_error(kl, "kl", "kl"),
            hovertemplate="%{x}: mean KL %{y:.3g} nats<extra></extra>",
        ),
        1,
        2,
    )
    after = {c: list(dict.fromkeys(controls.loc[controls["base"] == c, "category"])) for c in order}
    unplaced = [c for c in dict.fromkeys(controls["category"]) if not any(c in v for v in after.values())]
    return [x for c in order for x in (condition_name(c), *after[c])] + unplaced


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


# the damage panels: (y column, its interval's stem, axis title, tick format)
_DAMAGE_PANELS = (
    ("ce_delta", "ce_delta", "ΔCE on held-out harmless answers (nats)", None),
    ("degenerate_rate", "degenerate", "degenerate harmless responses (fraction)", ".0%"),
)
_ANGLE_COLOR = "#2c3e50"


def _error(rows: pd.DataFrame, value: str, stem: str, color: str) -> dict | None:
    """An asymmetric error bar from ``<stem>_ci_lo`` / ``_hi`` around ``value``; None without them."""
    if f"{stem}_ci_lo" not in rows:
        return None
    lo, hi = rows[f"{stem}_ci_lo"], rows[f"{stem}_ci_hi"]
    return {
        "type": "data",
        "symmetric": False,
        "array": (hi - rows[value]).clip(lower=0).to_numpy(),
        "arrayminus": (rows[value] - lo).clip(lower=0).to_numpy(),
        "thickness": 1,
        "width": 2,
        "color": color,
    }


def _damage_hover(rows: pd.DataFrame, names: list[str]) -> list[str]:
    """Per point: the setting, refusal removed, ΔCE (and CE), degenerate rate, each with its interval, and KL."""

    def ci(row: dict, stem: str, fmt: str) -> str:
        lo, hi = row.get(f"{stem}_ci_lo"), row.get(f"{stem}_ci_hi")
        return f" [{lo:{fmt}}, {hi:{fmt}}]" if lo is not None and lo == lo else ""

    return [
        f"<b>{name}</b><br>refusal removed {r['refusal_removed']:.0%}{ci(r, 'refusal_removed', '.0%')}"
        f"<br>ΔCE {r['ce_delta']:+.3f}{ci(r, 'ce_delta', '+.3f')} nats (CE {r['ce_loss']:.3f})"
        f"<br>degenerate {r['degenerate_rate']:.0%}{ci(r, 'degenerate', '.0%')} (n = {int(r['n_harmless'])})"
        f"<br>first-token KL {r['kl']:.3g} nats (harmless prompts)"
        for name, r in zip(names, rows.to_dict("records"))
    ]


def _numeric(settings: pd.Series) -> bool:
    return bool(pd.to_numeric(settings, errors="coerce").notna().all())


_CONTROL_NAMES = {"controls": "control", "plane_control": "control: random plane"}
_CONTROL_GREYS = ("#7f8c8d", "#95a5a6", "#566573")


def _control_groups(experiment: str, rows: pd.DataFrame) -> list[tuple[pd.DataFrame, str, str, bool, int]]:
    """The causal controls' traces (grey, open markers; names start with ``control``): the random
    plane's angles joined in order, each control direction (``random:0/all``) on its own."""
    if experiment == "plane_control":
        ordered = rows.iloc[np.argsort(pd.to_numeric(rows["setting"]).to_numpy(), kind="stable")]
        return [(ordered, "control: random plane, steering angle", _CONTROL_GREYS[0], True, 9)]
    out = []
    for j, setting in enumerate(dict.fromkeys(rows["setting"])):
        control, _, base = str(setting).partition("/")
        name = f"control: {control.split(':')[0]} direction, {condition_name(base)}"
        out.append((rows[rows["setting"] == setting], name, _CONTROL_GREYS[j % len(_CONTROL_GREYS)], False, 11))
    return out


def _damage_groups(summary: pd.DataFrame) -> list[tuple[pd.DataFrame, str, str, bool, int]]:
    """``(rows, legend name, colour, angles?, marker size)``, one per trace: one per location
    condition (its name and colour, in the comparison's order; each smaller than the one before, so
    conditions at the same point show as concentric rings), one per other experiment: an angle
    sweep's angles in order (joined by a line, labelled ``180°``), other settings labelled by name."""
    groups: list[tuple[pd.DataFrame, str, str, bool, int]] = []
    for i, (experiment, rows) in enumerate(summary.groupby("experiment", sort=False)):
        if experiment == "locations":
            present = list(dict.fromkeys(rows["setting"]))
            order = [c for c in CONDITION_ORDER if c in present] + [c for c in present if c not in CONDITION_ORDER]
            for j, c in enumerate(order):
                color = _color(CONDITION_COLORS, c, j)
                groups.append((rows[rows["setting"] == c], condition_name(c), color, False, max(8, 20 - 2 * j)))
        elif experiment in _CONTROL_NAMES:
            groups += _control_groups(str(experiment), rows)
        elif _numeric(rows["setting"]):
            ordered = rows.iloc[np.argsort(pd.to_numeric(rows["setting"]).to_numpy(), kind="stable")]
            color = _ANGLE_COLOR if experiment == "angle_sweep" else _OTHER[i % len(_OTHER)]
            name = "steering angle (refusal plane)" if experiment == "angle_sweep" else f"{experiment}: steering angle"
            groups.append((ordered, name, color, True, 8))
        else:
            groups.append((rows, str(experiment), _OTHER[i % len(_OTHER)], False, 10))
    return groups


def damage_vs_effect(summary: pd.DataFrame, *, model: str | None = None) -> go.Figure:
    """The trade-off users tune: what each intervention costs on harmless text against the harmful
    refusal it removes. Left: ΔCE (nats) of the held-out harmless answers; right: the degenerate
    rate of the harmless responses; x: refusal removed on harmful prompts (unsteered − steered).
    One marker per location condition (its name) and per swept angle (labelled ``180°``, a line
    through the angles in order); 95 % intervals as error bars (bootstrap for ΔCE, Wilson for the
    degenerate rate, Newcombe's paired interval for refusal removed); KL in the hover. Needs the
    columns of :func:`~workbench.damage.damage_summary`; rows without refusal removed (the
    unsteered CE) are left out."""
    cols = ["experiment", "setting", "refusal_removed", "ce_delta", "ce_loss", "degenerate_rate", "kl", "n_harmless"]
    _require(summary, cols, "summary", "use workbench.damage.damage_summary()")
    rows = summary[summary["refusal_removed"].notna()].assign(setting=lambda d: d["setting"].astype(str))
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.1,
        subplot_titles=("CE increase on held-out harmless answers", "degenerate harmless responses"),
    )
    fig.update_layout(template=TEMPLATE)
    for group, name, color, angles, size in _damage_groups(rows):
        _add_damage_points(fig, group, name, color, angles, size)
    fig.update_xaxes(title_text="harmful refusal removed (unsteered − steered)", tickformat=".0%", zeroline=True)
    for col, (_, _, title, fmt) in enumerate(_DAMAGE_PANELS, start=1):
        fig.update_yaxes(title_text=title, tickformat=fmt, zeroline=True, row=1, col=col)
    top = rows.get("degenerate_ci_hi", rows["degenerate_rate"]).max()
    top = float(top) if top == top else 0.0
    fig.update_yaxes(range=[-0.03, max(0.1, top) * 1.05], row=1, col=2)  # points at 0 stay whole
    return fig.update_layout(
        title=_title(
            "Damage vs effect",
            model,
            "each intervention of the location comparison and each steering angle, and their causal controls "
            "(open grey); 95 % intervals; KL in the hover",
        ),
        legend={"itemsizing": "constant"},
    )


def _add_damage_points(fig: go.Figure, rows: pd.DataFrame, name: str, color: str, angles: bool, size: int) -> None:
    """One group's points in both panels (legend once): markers with x and y error bars. An angle
    sweep's points are labelled with their angle and, on the left, joined in angle order; on the
    right (most angles at a degenerate rate of 0) only the points above 0 are labelled, unjoined."""
    control = name.startswith("control")  # causal controls: open grey markers
    labels = [f"{float(s):g}°" for s in rows["setting"]] if angles else list(rows["setting"])
    hover = _damage_hover(rows, [f"{name} {label}" if angles else name for label in labels])
    for col, (value, stem, _, _) in enumerate(_DAMAGE_PANELS, start=1):
        text = labels if col == 1 else [t if y > 0 else "" for t, y in zip(labels, rows[value])]
        fig.add_trace(
            go.Scatter(
                x=rows["refusal_removed"],
                y=rows[value],
                mode=("lines+markers+text" if col == 1 else "markers+text") if angles else "markers",
                name=name,
                legendgroup=name,
                showlegend=col == 1,
                text=text if angles else None,
                textposition="top right",
                textfont={"size": 10, "color": color},
                marker={
                    "size": size,
                    "color": color,
                    "symbol": ("diamond" if angles else "circle") + ("-open" if control else ""),
                    "line": {"width": 2 if control else 1, "color": color if control else "white"},
                },
                line={"color": color, "width": 1, "dash": "dot"},
                error_x=_error(rows, "refusal_removed", "refusal_removed", color),
                error_y=_error(rows, value, stem, color),
                hovertext=hover,
                hovertemplate="%{hovertext}<extra></extra>",
            ),
            1,
            col,
        )
