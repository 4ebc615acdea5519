"""The main job's presentation: its figures (01-13), its key numbers and the figure index.

:func:`main_figures` draws every figure from the analysis and the experiment tables,
:func:`key_numbers` condenses them into the run's summary, and :func:`write_index` writes
``figures/README.md``: what each figure shows, with the key numbers beside it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from . import figures as fg
from .artifacts import atomic_write_text
from .config import default_figures_dir
from .control_numbers import control_lines, control_numbers
from .damage import HELDOUT_ANSWERS, UNSTEERED
from .directions import Direction, cosine_matrix, projection_table
from .experiments import label_columns
from .labels import ALL_LABELS
from .pipeline import Analysis
from .planes import Plane
from .selection import KL_FALLBACK
from .stability import Stability
from .stats import format_rate, wilson_half_width
from .steering_math import special_cases

__all__ = [
    "MainTables",
    "main_figures",
    "key_numbers",
    "skipped_parts",
    "write_index",
    "run_command",
    "SPECIAL_CASE_ALPHAS",
]

SPECIAL_CASE_ALPHAS = [-80.0, -40.0, -10.0, 10.0, 40.0, 80.0]
# the figures of the refusal-scored experiments, not drawn when a model refuses nothing
EXPERIMENT_FIGURES = (
    "01_location_comparison",
    "05_angle_sweep",
    "07_layer_subsets",
    "09_rotation_variants",
    "12_damage_vs_effect",
)


@dataclass(frozen=True)
class MainTables:
    """The main job's experiment tables (:mod:`workbench.experiments`), as one value: the location
    comparison (summary and per prompt), the layer subsets, the angle sweep, the rotation variants,
    for the graded organism the unsteered behaviours per category, (None when off) the causal
    controls of the location comparison and of the angle sweep, and the damage summary."""

    locations: pd.DataFrame
    location_prompts: pd.DataFrame
    subsets: pd.DataFrame
    sweep: pd.DataFrame
    variants: pd.DataFrame
    behaviours: pd.DataFrame | None = None
    # the causal controls (RunConfig.controls; workbench.experiments.control_locations / control_sweep):
    # summary and per prompt of the location comparison's and of the angle sweep's
    controls: pd.DataFrame | None = None
    control_prompts: pd.DataFrame | None = None
    plane_control: pd.DataFrame | None = None
    plane_control_prompts: pd.DataFrame | None = None
    damage: pd.DataFrame | None = None  # workbench.damage.damage_summary: CE, KL, degeneration vs effect


Figures = dict[str, tuple[go.Figure, str]]  # {file stem: (figure, what it shows)}


def _analysis_figures(analysis: Analysis, direction: Direction, plane: Plane, model: str) -> Figures:
    """Figures 02-04, 06 and 08: drawn from the analysis alone (candidates, selection, plane)."""
    selection, acts = analysis.selection, analysis.activations
    last = analysis.candidates.subset(positions=[-1])
    resid = acts["harmful_val"].get(*direction.where())
    projections = projection_table({"harmful": acts["harmful_val"], "harmless": acts["harmless_val"]}, direction)
    return {
        "02_selection_heatmaps": (
            fg.selection_heatmaps(
                selection.table,
                choices=selection.choices,
                kl_max=analysis.config.kl_max,
                kl_fallback=max(analysis.config.kl_max, KL_FALLBACK) if selection.notes.get("fallback") else None,
                model=model,
            ),
            "layer × position maps of bypass, induce, KL (log scale at the filter threshold, passing "
            "candidates dotted), AUC and norm of every resid_pre candidate",
        ),
        "03_cosine_matrix": (
            fg.cosine_matrix_figure(cosine_matrix(last), last.keys, model=model),
            "cosine similarity of the last-token candidates across layers and sites",
        ),
        "04_plane_projection": (
            fg.plane_projection(plane.candidate_coords(analysis.plane_candidates), model=model),
            "every candidate's angle and radius in the steering plane, coloured by depth",
        ),
        "06_projection_histograms": (
            fg.projection_histograms(projections, layer=direction.layer, model=model),
            "harmful vs harmless projections on the chosen direction, per layer (slider; shown at its own layer)",
        ),
        "08_special_cases": (
            fg.special_cases_figure(special_cases(resid, direction.vector, SPECIAL_CASE_ALPHAS), model=model),
            "ablation is rotation to 90° and addition a rotation by < 180° in each token's own plane",
        ),
    }


def _experiment_figures(tables: MainTables, model: str) -> Figures:
    """Figures 01, 05, 07, 09 and, where their tables exist, 10-12: drawn from the experiments."""
    locations, sweep = tables.locations, tables.sweep
    baseline = locations[locations.condition == "none"].set_index("split")["refusal_rate"].to_dict()
    figs: Figures = {
        "01_location_comparison": (
            fg.location_comparison(
                locations,
                tables.location_prompts,
                model=model,
                controls=tables.controls,
                control_prompts=tables.control_prompts,
            ),
            "refusal rate (harmful, harmless) and KL on harmless prompts for ablation at each location, and addition",
        ),
        "05_angle_sweep": (
            fg.angle_sweep_polar(sweep, baseline=baseline, model=model, control=tables.plane_control),
            "refusal rate per steering angle (harmful, harmless) and the four response labels",
        ),
        "07_layer_subsets": (
            fg.layer_subset_figure(tables.subsets, model=model),
            "harmful refusal when ablating only the first / last / middle k blocks",
        ),
        "09_rotation_variants": (
            fg.rotation_variants_figure(tables.variants, model=model),
            "first-token refusal log-odds and KL per angle when rotating post- vs pre-gain in the raw- vs "
            "unit-candidate plane (the same prompts as 05; means over n prompts with 95 % bootstrap intervals)",
        ),
    }
    if set(sweep["split"]) - {"harmful", "harmless"}:
        figs["10_label_map"] = (
            fg.label_map_polar(sweep, model=model),
            "the angle map: the response labels at each angle on a circle, per swept prompt set",
        )
    if tables.behaviours is not None:
        figs["11_behaviours"] = (
            fg.behaviour_bars(tables.behaviours, model=model),
            "unsteered response labels per held-out prompt category",
        )
    if tables.damage is not None:
        figs["12_damage_vs_effect"] = (
            fg.damage_vs_effect(tables.damage, model=model),
            "the trade-off: CE increase on held-out harmless answers and degenerate rate vs harmful refusal removed, "
            "per location condition and steering angle",
        )
    return figs


def main_figures(
    analysis: Analysis,
    direction: Direction,
    plane: Plane,
    tables: MainTables | None,
    *,
    model: str,
    stability: Stability | None = None,
) -> Figures:
    """``{file stem: (figure, what it shows)}`` for every figure of the main job, in file order; the
    angle map of every swept prompt set when more than harmful/harmless were swept, and the
    unsteered behaviour per category when the tables have ``behaviours``. Without ``tables`` (a
    model that refuses nothing: :func:`skipped_parts`) only the analysis figures; with
    ``stability`` (:meth:`Analysis.stability`) also the direction-stability figure."""
    figs = _analysis_figures(analysis, direction, plane, model)
    if tables is not None:
        figs.update(_experiment_figures(tables, model))
    if stability is not None:
        figs["13_direction_stability"] = (
            fg.stability_figure(stability.table, model=model),
            f"over {stability.summary['n_resamples']} bootstrap resamples of direction_train: how often each "
            "method chose each candidate, and each resampled direction's cosine to the full sample's",
        )
    return dict(sorted(figs.items()))


def skipped_parts(analysis: Analysis) -> dict:
    """What a run skips when the model refuses nothing and no refusal tokens were given: ``{"arditi":
    why, "experiments": which, "figures": {figure: why}}``; empty when nothing is skipped."""
    why = analysis.arditi_skipped
    if why is None:
        return {}
    return {
        "arditi": why,
        "experiments": "not run: the location comparison, layer subsets, angle sweep and rotation variants (each "
        "scores refusal with the refusal tokens) and, with them, the behaviours table",
        "figures": {
            **dict.fromkeys(EXPERIMENT_FIGURES, "not drawn: its experiment was not run"),
            "02_selection_heatmaps": "drawn without the bypass, induce and KL panels: no Arditi scores",
        },
    }


def _labels_by_angle(sweep: pd.DataFrame) -> dict:
    """``{"labels_by_angle": {split: {angle: {n, share_<label>...}}}}`` when more than the harmful
    and harmless sets were swept (the graded organism's angle map); else nothing."""
    if not set(sweep["split"]) - {"harmful", "harmless"}:
        return {}
    cols = ["n"] + label_columns(sweep)
    return {
        "labels_by_angle": {
            split: {
                f"{a:g}°": {c: round(float(v), 3) for c, v in zip(cols, row) if v == v}
                for a, *row in rows.sort_values("angle")[["angle", *cols]].itertuples(index=False)
            }
            for split, rows in sweep.groupby("split", sort=False)
        }
    }


def _rates(rows: pd.DataFrame, keys: list[str]) -> tuple[dict, dict, dict]:
    """``({key: rate}, {key: [lo, hi]}, {key: n})`` of ``refusal_rate`` with its 95 % Wilson interval."""
    rates, ci, n = {}, {}, {}
    for row in rows.to_dict("records"):
        key = "/".join(str(row[k]) for k in keys)
        rates[key] = round(float(row["refusal_rate"]), 3)
        if "refusal_ci_lo" in row:
            ci[key] = [round(float(row["refusal_ci_lo"]), 4), round(float(row["refusal_ci_hi"]), 4)]
        n[key] = int(row["n"])
    return rates, ci, n


def _refusal_numbers(tables: MainTables | None) -> dict:
    """Refusal rates by location and the harmful refusal by angle, each with its 95 % Wilson interval
    (``…_ci95``: ``[lo, hi]``) and its n (``…_n``); none without ``tables``."""
    if tables is None:
        return {"refusal_by_location": {}, "harmful_refusal_by_angle": {}}
    loc, loc_ci, loc_n = _rates(tables.locations, ["split", "condition"])
    harmful = tables.sweep[tables.sweep.split == "harmful"].sort_values("angle")
    angle, angle_ci, angle_n = _rates(harmful.assign(angle=harmful.angle.astype(int)), ["angle"])
    return {
        "refusal_by_location": loc,
        "refusal_by_location_ci95": loc_ci,
        "refusal_by_location_n": loc_n,
        **_labels_by_angle(tables.sweep),
        "harmful_refusal_by_angle": angle,
        "harmful_refusal_by_angle_ci95": angle_ci,
        "harmful_refusal_by_angle_n": angle_n,
    }


def _pair(row: dict, stem: str) -> list[float] | None:
    lo, hi = row.get(f"{stem}_ci_lo"), row.get(f"{stem}_ci_hi")
    return None if lo is None or lo != lo else [round(float(lo), 4), round(float(hi), 4)]  # type: ignore[arg-type]


def _number(value) -> float | None:
    return None if value is None or value != value else round(float(value), 4)


def _damage_numbers(tables: MainTables | None) -> dict:
    """``{"damage": {ce_loss_baseline, n, text, settings: {"locations/all": {...}, "angle_sweep/180":
    {...}}}}`` from the damage summary (each rate and ΔCE with its 95 % interval); none without it."""
    if tables is None or tables.damage is None:
        return {}
    rows = tables.damage.to_dict("records")
    base = next(r for r in rows if r["experiment"] == UNSTEERED)
    settings = {
        f"{r['experiment']}/{r['setting']}": {
            "ce_loss": _number(r["ce_loss"]),
            "ce_loss_ci95": _pair(r, "ce"),
            "ce_loss_delta": _number(r["ce_delta"]),
            "ce_loss_delta_ci95": _pair(r, "ce_delta"),
            "kl": _number(r.get("kl")),
            "degenerate_rate": _number(r.get("degenerate_rate")),
            "degenerate_rate_ci95": _pair(r, "degenerate"),
            "n_degenerate": int(r["n_degenerate"]),
            "n_harmless": int(r["n_harmless"]),
            "refusal_removed": _number(r.get("refusal_removed")),
            "refusal_removed_ci95": _pair(r, "refusal_removed"),
            "refusal_induced": _number(r.get("refusal_induced")),
            "refusal_induced_ci95": _pair(r, "refusal_induced"),
        }
        for r in rows
        if r["experiment"] != UNSTEERED
    }
    return {
        "damage": {
            "ce_loss_baseline": _number(base["ce_loss"]),
            "ce_loss_baseline_ci95": _pair(base, "ce"),
            "n": int(base["n_texts"]),
            "answer_tokens": int(base["answer_tokens"]) if "answer_tokens" in base else None,
            "text": HELDOUT_ANSWERS.name,
            "settings": settings,
        }
    }


def key_numbers(
    analysis: Analysis, direction: Direction, plane: Plane, tables: MainTables | None, rotation: dict | None = None
) -> dict:
    """The run's key numbers: the direction, each method's choice, the plane, refusal rates, the
    causal controls beside the real interventions (:func:`~workbench.control_numbers.control_numbers`)
    and what was skipped (:func:`skipped_parts`; ``tables`` is None then)."""
    selection = analysis.selection
    return {
        "direction": {
            "site": direction.site,
            "layer": direction.layer,
            "pos": direction.pos,
            "method": analysis.direction_method,
            "notes": selection.notes.get("arditi", ""),
        },
        "selection": analysis.selection_report(),
        "choices": {m: str(k) for m, k in selection.choices.items()},
        "plane": {
            "protocol": analysis.plane_report(plane)["protocol"],
            "b1": str(plane.b1_key),
            "candidate_sites": plane.report.get("candidate_sites"),
            "candidate_norm": plane.report.get("candidate_norm"),
            "pc1_explained_variance": round(plane.pc1_explained_variance, 3),
            "angle_pc1_b1_deg": round(plane.angle_pc1_b1_deg, 1),
        },
        "rotation": rotation or {},
        **_refusal_numbers(tables),
        "controls": control_numbers(tables),
        **_damage_numbers(tables),
        "skipped": skipped_parts(analysis),
    }


def _protocol_lines(summary: dict) -> list[str]:
    """The protocols followed, the prompt filter and, loudly, any selection fallback."""
    sel, p, rot = summary["selection"], summary["plane"], summary.get("rotation", {})
    filtered = sel.get("filtered")
    kept = (
        "; ".join(
            f"{split} {kind} {c['kept']}/{c['kept'] + c['dropped']}"
            for split, by_kind in filtered.items()
            for kind, c in by_kind.items()
        )
        if filtered
        else "off"
    )
    how = (
        f"`{sel['protocol']}` (positions scored {sel['positions_scored']}, "
        f"{sel['n_passed']} candidate(s) passed the filters; prompts kept by the refusal-score filter: {kept})"
        if not sel.get("skipped")
        else f"generation-free, `{sel.get('method')}` (Arditi's stages skipped, below)"
    )
    lines = [
        f"Protocols: direction selection {how}; "
        f"plane `{p['protocol']}` (candidates at {', '.join(p['candidate_sites'] or [])}, {p['candidate_norm']}); "
        f"rotation {rot.get('site', '?')}, adaptive {rot.get('adaptive', '?')}.",
    ]
    if sel.get("fallback"):
        lines += ["", f"**Selection fallback: {sel['fallback']}.**"]
    return lines + _refusal_token_lines(sel.get("refusal_tokens"))


def _refusal_token_lines(tokens: dict | None) -> list[str]:
    """Which refusal tokens Arditi's score counts, where they came from and how well they separate."""
    if not tokens:
        return []
    chosen = ", ".join(f"`{t!r}` (id {i})" for t, i in zip(tokens["strings"], tokens["ids"]))
    auc = tokens.get("separation", {}).get("auc")
    said = f"Refusal tokens ({tokens['source']}): {chosen}" if chosen else "Refusal tokens: none found"
    stat = f"; AUC of their refusal log-odds, harmful vs harmless direction_train prompts: {auc}" if auc else ""
    return ["", f"{said}; {tokens['how']}{stat}."]


def _skipped_lines(skipped: dict) -> list[str]:
    """The stages, experiments and figures a run skipped, and why (loudly)."""
    if not skipped:
        return []
    lines = ["", f"**Skipped: Arditi's prompt filter and scores ({skipped['arditi']}).**", ""]
    lines.append(f"Experiments {skipped['experiments']}. Figures:")
    return lines + [f"- {name}: {why}" for name, why in skipped["figures"].items()]


def _share_table(rows: dict[str, dict], first: str) -> list[str]:
    """A markdown table of label shares, one row per ``rows`` key with its n, then a line giving the
    widest 95 % Wilson interval a share on the smallest n has."""
    labels = [lab for lab in ALL_LABELS if any(r.get(f"share_{lab}", 0) for r in rows.values())]
    out = [f"| {first} | n | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for name, r in rows.items():
        out.append(
            f"| {name} | {int(r['n'])} | " + " | ".join(f"{r.get(f'share_{lab}', 0):.0%}" for lab in labels) + " |"
        )
    n = min(int(r["n"]) for r in rows.values()) if rows else 0
    if n:
        out += ["", f"A share's 95 % Wilson interval is at most ±{100 * wilson_half_width(n):.0f} points (n = {n})."]
    return out


def _behaviour_lines(summary: dict) -> list[str]:
    """The unsteered label shares per category, and the labels at each angle per swept set."""
    lines = []
    if summary.get("behaviours"):
        lines += ["", "Unsteered behaviour per held-out category (heuristic labels, greedy):", ""]
        lines += _share_table(summary["behaviours"], "category")
    for split, by_angle in summary.get("labels_by_angle", {}).items():
        lines += ["", f"Labels by steering angle, {split} prompts:", ""]
        lines += _share_table(by_angle, "angle")
    return lines


def run_command(
    model: str,
    *,
    harmful: str | None = None,
    harmless: str | None = None,
    config: str | None = None,
    figures: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
) -> str:
    """The ``workbench run`` command line of a run, with only the options it was given (``figures``
    only when not the model's default folder)."""
    words = ["workbench", "run"] + ([] if model == "organism" else ["--model", model])
    options = {"--harmful": harmful, "--harmless": harmless, "--config": config, "--dtype": dtype, "--device": device}
    if figures is not None and Path(figures) != Path(default_figures_dir(model)):
        options["--figures"] = figures
    words += [w for flag, value in options.items() if value is not None for w in (flag, str(value))]
    return shlex.join(words)


def _input_lines(summary: dict) -> list[str]:
    """The prompt files and the config file the run read (path, sha256; the config's content), and
    any small-sample warnings."""
    inputs = summary.get("inputs") or {}
    lines = []
    for kind, f in (inputs.get("prompt_files") or {}).items():
        lines.append(f"- {kind} prompts: `{f['path']}` (sha256 `{f['sha256']}`)")
    if not inputs.get("prompt_files"):
        lines.append("- prompts: the shipped splits (`workbench/prompts/`)")
    if config := inputs.get("config_file"):
        lines.append(f"- config: `{config['path']}` (sha256 `{config['sha256']}`): `{json.dumps(config['content'])}`")
    else:
        lines.append("- config: the defaults (no `--config`)")
    if summary.get("warnings"):
        lines += ["", '**Small samples** (see the top-level README, "Your own prompts"):', ""]
        lines += [f"- {w}" for w in summary["warnings"]]
    return ["", *lines]


def _with_interval(rate: float, ci: list[float] | None, n: int | None) -> str:
    """``0.963 [0.87, 0.99] (n=54)``, or the bare rate when the summary has no interval."""
    return format_rate(rate, ci[0], ci[1], n) if ci is not None and n is not None else f"{rate}"


def _key_number_lines(summary: dict) -> list[str]:
    """The refusal rates by location and by angle, each with its 95 % Wilson interval and n."""
    if not summary["refusal_by_location"]:
        return []
    ci, n = summary.get("refusal_by_location_ci95", {}), summary.get("refusal_by_location_n", {})
    lines = ["", "Key numbers (refusal rate [95 % Wilson interval] (n prompts), greedy, test split):", ""]
    lines += [f"- {k}: {_with_interval(v, ci.get(k), n.get(k))}" for k, v in summary["refusal_by_location"].items()]
    by_angle = summary["harmful_refusal_by_angle"]
    ci, n = summary.get("harmful_refusal_by_angle_ci95", {}), summary.get("harmful_refusal_by_angle_n", {})
    counts = sorted(set(n.values()))
    each = f" (n={counts[0]} per angle)" if len(counts) == 1 else ""
    text = ", ".join(
        f"{a}°: {v:.3f}"
        + (f" [{ci[a][0]:.2f}, {ci[a][1]:.2f}]" if a in ci else "")
        + ("" if each or a not in n else f" (n={n[a]})")
        for a, v in by_angle.items()
    )
    return lines + ["", f"Harmful refusal by angle [95 % Wilson interval]{each}: {text}"]


def _interval(stats: dict) -> str:
    """``0.990 [0.980, 1.000]``: a cosine's mean and its 2.5th and 97.5th percentiles."""
    lo, hi = stats["ci95"]
    return f"{stats['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def _stability_lines(stability: dict | None) -> list[str]:
    """The "Direction stability" block: plain sentences from the summary's ``stability``."""
    if not stability:
        return []
    n, d, b1 = stability["n_resamples"], stability["direction"], stability["plane"]["b1"]
    lines = [
        "",
        "Direction stability (figure 13; cosines: mean [2.5th, 97.5th percentile] over resamples):",
        "",
        f"- Over {n} bootstrap resamples of direction_train (seed {stability['seed']}), the resampled candidate "
        f"at the chosen direction's own key `{d['key']}` had cosine {_interval(d['cosine'])} "
        f"(min {d['cosine']['min']:.3f}) to it. Arditi's selection is {stability['arditi']}.",
    ]
    for method, m in stability["methods"].items():
        times = round(m["chosen_frequency"] * n)
        what = "the mean direction" if method == "mean_of_candidates" else "its choice"
        lines.append(
            f"- {method} chose `{m['chosen']}` in {times}/{n}; the cosine of {what} to the full sample's "
            f"{_interval(m['cosine_to_chosen'])}."
        )
    b2, span = stability["plane"]["b2"]["cosine"], stability["plane"].get("span", {}).get("cosine")
    times = round(b1["chosen_frequency"] * n)
    lines.append(
        f"- Plane: b1 ({b1['method']}) was `{b1['chosen']}` in {times}/{n}, cosine {_interval(b1['cosine'])}; "
        f"b2 cosine {_interval(b2)} (signed; b2's sign is fixed by the plane's sign rule)"
        + (f"; the plane itself (cosine of the largest principal angle) {_interval(span)}." if span else ".")
    )
    return lines


def _damage_line(name: str, d: dict) -> str:
    """``- locations/all: ΔCE +0.23 [0.18, 0.27] nats, KL 0.01, degenerate 0.00 [0.00, 0.07] (n=54), refusal
    removed 0.94 [0.84, 0.98]`` (the parts a setting has)."""

    def ci(pair) -> str:
        return f" [{pair[0]:.2f}, {pair[1]:.2f}]" if pair else ""

    parts = [f"ΔCE {d['ce_loss_delta']:+.2f}{ci(d['ce_loss_delta_ci95'])} nats"]
    if d.get("kl") is not None:
        parts.append(f"KL {d['kl']:.2f}")
    if d.get("degenerate_rate") is not None:
        parts.append(f"degenerate {d['degenerate_rate']:.2f}{ci(d['degenerate_rate_ci95'])} (n={d['n_harmless']})")
    if d.get("refusal_removed") is not None:
        parts.append(f"refusal removed {d['refusal_removed']:.2f}{ci(d['refusal_removed_ci95'])}")
    return f"- {name}: " + ", ".join(parts)


def _damage_lines(damage: dict | None) -> list[str]:
    """The damage block: each setting's ΔCE, KL, degenerate rate and refusal removed, with intervals."""
    if not damage:
        return []
    head = (
        f"Damage (ΔCE: mean answer-token CE of the base model's answers in `{damage['text']}` (n={damage['n']}"
        + (f", first {damage['answer_tokens']} answer tokens" if damage.get("answer_tokens") else "")
        + ") "
        f"vs unsteered {damage['ce_loss_baseline']:.2f} nats, paired bootstrap; KL: first-token, harmless "
        "prompts; degenerate: greedy harmless responses, Wilson; refusal removed: harmful refusal unsteered − "
        "steered, same prompts, Newcombe's paired interval; all 95 %):"
    )
    return ["", head, "", *(_damage_line(name, d) for name, d in damage["settings"].items())]


def _regenerate(summary: dict) -> str:
    command = (summary.get("inputs") or {}).get("command")
    return command or run_command(summary["model"])


def write_index(out: Path, figs: Figures, written: dict[str, list[Path]], summary: dict) -> Path:
    """Write ``out/README.md``: the direction and plane, a table of the figures, the key numbers."""
    d, p = summary["direction"], summary["plane"]
    lines = [
        f"# Figures for `{summary['model']}`",
        "",
        f"Regenerate with `{_regenerate(summary)}` (see the top-level README). Each figure is an "
        "interactive HTML file; PNGs are written when a Chromium is available.",
        *_input_lines(summary),
        "",
        f"Direction: `{d['site']}` layer {d['layer']}, position {d['pos']} ({d['method']}). "
        f"Plane: b1 = `{p['b1']}`, PC1 explains {p['pc1_explained_variance']:.0%} of the candidates' "
        f"variance, {p['angle_pc1_b1_deg']}° from b1.",
        "",
        *_protocol_lines(summary),
        *_skipped_lines(summary.get("skipped", {})),
        "",
        "| figure | what it shows |",
        "|---|---|",
    ]
    for key, (_, what) in figs.items():
        files = " · ".join(f"[{f.suffix[1:]}]({f.name})" for f in written[key])
        lines.append(f"| {key} ({files}) | {what} |")
    lines += _key_number_lines(summary)
    lines += control_lines(summary)
    lines += _stability_lines(summary.get("stability"))
    lines += _damage_lines(summary.get("damage"))
    lines += _behaviour_lines(summary)
    path = Path(out) / "README.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
