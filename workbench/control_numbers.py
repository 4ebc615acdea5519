"""The causal controls' key numbers and their sentences in the figure index.

Each control (:mod:`workbench.controls`) stands beside a real intervention of the main job: the
location comparison's ablation everywhere (``all``) with a random and with a null direction, its
addition with the random direction, and the angle sweep in a random plane at the control angles.
:func:`control_numbers` puts each control's refusal rate per split beside the real intervention's,
each with its 95 % Wilson interval and n, and says whether the effect lies outside the control's
interval (:func:`effect_outside_control`); :func:`control_lines` writes one sentence per control.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from .experiments import condition
from .stats import format_rate

__all__ = ["RULE", "effect_outside_control", "control_numbers", "control_lines"]

RULE = (
    "an effect lies outside its control's interval when the real intervention's 95 % Wilson interval "
    "and the control's do not overlap"
)


def effect_outside_control(
    real_ci: tuple[float, float] | list[float], control_ci: tuple[float, float] | list[float]
) -> bool:
    """Whether the real intervention's effect lies outside its control's interval: True when the
    real intervention's 95 % Wilson interval ``real_ci`` = ``[lo, hi]`` and the control's
    ``control_ci`` do not overlap (real hi < control lo, or real lo > control hi). Intervals that
    overlap or touch give False: at these n the control's edit alone could give the real rate."""
    (real_lo, real_hi), (control_lo, control_hi) = real_ci, control_ci
    return bool(real_hi < control_lo or real_lo > control_hi)


def _rate(row: Mapping) -> dict:
    lo, hi = float(row["refusal_ci_lo"]), float(row["refusal_ci_hi"])
    return {
        "refusal_rate": round(float(row["refusal_rate"]), 3),
        "ci95": [round(lo, 4), round(hi, 4)],
        "n": int(row["n"]),
    }


def _comparison(control: Mapping, real: Mapping | None) -> dict:
    """The control's rate beside the real one's, and the verdict (None without a real rate)."""
    if real is None:
        return {**_rate(control), "real": None, "effect_outside_control": None}
    verdict = effect_outside_control(
        (real["refusal_ci_lo"], real["refusal_ci_hi"]), (control["refusal_ci_lo"], control["refusal_ci_hi"])
    )
    return {**_rate(control), "real": _rate(real), "effect_outside_control": verdict}


def _direction_controls(controls: pd.DataFrame, locations: pd.DataFrame) -> dict:
    """``{condition: {control, base, intervention, <split>: comparison}}``, e.g. ``random:0/all``."""
    real = {(r["split"], r["condition"]): r for r in locations.to_dict("records")}
    out: dict[str, dict] = {}
    for row in controls.to_dict("records"):
        entry = out.setdefault(
            str(row["condition"]),
            {"control": str(row["control"]), "base": str(row["base"]), "intervention": str(condition(row["base"]))},
        )
        entry[str(row["split"])] = _comparison(row, real.get((row["split"], row["base"])))
    return out


def _plane_controls(control: pd.DataFrame, sweep: pd.DataFrame) -> dict:
    """``{plane: {angle: {split: comparison}}}`` against the real sweep at the same angle."""
    real = {(r["split"], float(r["angle"])): r for r in sweep.to_dict("records")}
    out: dict[str, dict] = {}
    for row in control.sort_values("angle").to_dict("records"):
        by_angle = out.setdefault(str(row.get("plane", "random")), {}).setdefault(f"{float(row['angle']):g}", {})
        by_angle[str(row["split"])] = _comparison(row, real.get((row["split"], float(row["angle"]))))
    return out


def control_numbers(tables) -> dict:
    """The ``controls`` key numbers of a run's :class:`~workbench.report.MainTables`: ``rule`` (the
    verdict's rule, :data:`RULE`), ``directions`` (``{condition: {control, base, intervention,
    harmful: {refusal_rate, ci95, n, real: {refusal_rate, ci95, n}, effect_outside_control},
    harmless: ...}}``) and ``plane`` (``{plane: {angle: {split: the same}}}``, against the real
    sweep at that angle; ``real`` None where it did not sweep the angle). Empty without ``tables``
    (a model that refuses nothing) or without controls (``RunConfig.controls`` false)."""
    if tables is None or tables.controls is None:
        return {}
    out = {"rule": RULE, "directions": _direction_controls(tables.controls, tables.locations)}
    if tables.plane_control is not None:
        out["plane"] = _plane_controls(tables.plane_control, tables.sweep)
    return out


# how the index names the real conditions the controls stand beside (the main job adds at α = 1)
_BASE_WORDS = {"all": "ablate:all", "addition": "add:1 (α = 1 at the direction's layer)"}


def _control_words(control: str, what: str) -> str:
    kind, _, seed = control.partition(":")
    return f"a {kind} {what}" + (f" (seed {seed})" if seed else "")


def _clauses(entry: Mapping, real_words: str) -> str:
    """Per split: the control's rate against the real one's and whether the effect lies outside."""
    clauses = []
    for split in ("harmful", "harmless"):
        if split not in entry:
            continue
        c, r = entry[split], entry[split]["real"]
        text = f"{split} refusal {format_rate(c['refusal_rate'], c['ci95'][0], c['ci95'][1], c['n'])}"
        if r is None:
            clauses.append(f"{text} (no real intervention to compare with)")
            continue
        verdict = "outside" if entry[split]["effect_outside_control"] else "within"
        clauses.append(
            f"{text} against {r['refusal_rate']:.3f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] {real_words}: "
            f"the effect lies {verdict} the control's interval"
        )
    return "; ".join(clauses)


def control_lines(summary: Mapping) -> list[str]:
    """The figure index's "Controls" block: one sentence per control (both splits), saying plainly
    whether each effect lies outside its control's interval; nothing without controls."""
    numbers = summary.get("controls") or {}
    if not numbers:
        return []
    lines = ["", f"Controls (the same edit with a direction or plane that carries no refusal; {RULE}):", ""]
    for entry in numbers.get("directions", {}).values():
        how = _BASE_WORDS.get(entry["base"], entry["intervention"])
        who = f"{how} with {_control_words(entry['control'], 'direction')}"
        lines.append(f"- {who}: {_clauses(entry, 'with the refusal direction')}.")
    for plane, by_angle in numbers.get("plane", {}).items():
        for angle, entry in by_angle.items():
            who = f"rotation to {angle}° in {_control_words(plane, 'plane')}"
            lines.append(f"- {who}: {_clauses(entry, 'in the refusal plane')}.")
    return lines
