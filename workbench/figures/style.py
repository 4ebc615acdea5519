"""The figures' one shared style: colours, display names and orders, the ``workbench`` plotly template
(registered at import), the notebook renderer choice, and the small helpers every builder uses
(column checks, titles, hover text)."""

from __future__ import annotations

import html
import os
import textwrap

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from ..experiments import CONDITIONS, condition
from ..labels import ALL_LABELS

# The location comparison's conditions: order, names and colours are those of their interventions
# (workbench.intervention), so a new kind brings its own.
CONDITION_ORDER = tuple(CONDITIONS)
CONDITION_COLORS = {name: value.color for name, value in CONDITIONS.items()}
CONDITION_NAMES = {name: value.label for name, value in CONDITIONS.items()}
LABEL_ORDER = ALL_LABELS
SPLIT_COLORS = {"harmful": "#c0392b", "harmless": "#2874a6", "warning": "#d68910", "redirect": "#7d3c98"}
LABEL_COLORS = {
    "refusal": "#c0392b",
    "comply_with_warning": "#f39c12",
    "ethical_redirect": "#8e44ad",
    "comply": "#27ae60",
    "empty": "#bdc3c7",
    "degenerate": "#566573",
}
# A measure of other prompts than the bars beside it (KL on harmless prompts) in no split's colour
NEUTRAL = "#7f8c8d"
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
# ``workbench_png`` is registered by :mod:`.export`, which importing the package loads.
STATIC_RENDERER = "plotly_mimetype+workbench_png"
STATIC_ENV = "WORKBENCH_STATIC_FIGURES"


def condition_name(name: str) -> str:
    """A condition's display name: its intervention's label (a spec string's too), else ``name``."""
    try:
        return condition(name).label
    except ValueError:
        return str(name)


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


# Polar panels of a rate (0–100 %), 0° = b1 east, counter-clockwise. The radial tick labels ride the
# spoke half-way between the 0° and 45° angle labels, so neither covers the other, and the centre
# (0 %) is left unlabelled, where the curves meet.
RATE_POLAR = {
    "angularaxis": {"rotation": 0, "direction": "counterclockwise", "dtick": 45},
    "radialaxis": {
        "range": [0, 1],
        "tickformat": ".0%",
        "tickvals": [0.25, 0.5, 0.75, 1.0],
        "angle": 22.5,
        "tickangle": 22.5,
        "tickfont": {"size": 10, "color": "#566573"},
    },
}

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


def _bar_polar() -> dict:
    """:data:`RATE_POLAR` for stacked polar bars of label shares: no radial tick labels (they would
    sit on a bar, unreadable; each bar stacks to 100 %, which the titles say), the bars stacked."""
    radial = {**RATE_POLAR["radialaxis"], "showticklabels": False, "showline": False}
    return {**RATE_POLAR, "radialaxis": radial, "barmode": "stack"}


def _label_bars(rows: pd.DataFrame, per_label) -> list[go.Barpolar]:
    """Stacked polar bars of one swept set's label shares (``share_<label>`` per angle), one trace
    per label present, 90 % of the angle step wide; ``per_label(label)`` gives each trace's legend
    and hover settings."""
    gaps = np.diff(np.unique(rows["angle"]))
    width = 0.9 * float(gaps.min()) if len(gaps) else 20.0
    return [
        go.Barpolar(
            theta=rows["angle"],
            r=rows[f"share_{lab}"].fillna(0),
            width=width,
            name=lab,
            marker_color=LABEL_COLORS[lab],
            **per_label(lab),
        )
        for lab in LABEL_ORDER
        if f"share_{lab}" in rows
    ]


def _rate_error(
    rows: pd.DataFrame, stem: str = "refusal", rate: str = "refusal_rate", color: str = "#2c3e50"
) -> dict | None:
    """Plotly ``error_y`` for a rate's asymmetric 95 % interval (``<stem>_ci_lo`` / ``_hi``, from
    :func:`~workbench.experiments.rate_intervals`); None when the table has no interval."""
    if f"{stem}_ci_lo" not in rows or f"{stem}_ci_hi" not in rows:
        return None
    return {
        "type": "data",
        "symmetric": False,
        "array": (rows[f"{stem}_ci_hi"] - rows[rate]).clip(lower=0).to_numpy(),
        "arrayminus": (rows[rate] - rows[f"{stem}_ci_lo"]).clip(lower=0).to_numpy(),
        "thickness": 1.2,
        "width": 3,
        "color": color,
    }


def _interval_text(rows: pd.DataFrame, stem: str = "refusal") -> list[str]:
    """Per row, ``95 % CI 72–96 % (n = 54)`` for hovers; empty strings without an interval."""
    if f"{stem}_ci_lo" not in rows or "n" not in rows:
        return [""] * len(rows)
    return [
        f"95 % CI {lo:.0%}–{hi:.0%} (n = {int(n)})" if lo == lo else ""
        for lo, hi, n in zip(rows[f"{stem}_ci_lo"], rows[f"{stem}_ci_hi"], rows["n"])
    ]


def _fig(**layout) -> go.Figure:
    return go.Figure(layout={"template": TEMPLATE, **layout})
