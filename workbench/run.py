"""The main job: every analysis, intervention experiment and figure for one model, as resumable stages.

Stages (each saved in the run folder, skipped when done, so an interrupted run resumes):
organism/model → activations → candidates & statistics → Arditi scores → selection → plane →
location comparison → layer subsets → angle sweep → figures (HTML + PNG) and ``figures/README.md``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from . import data
from .artifacts import Manifest, atomic_write_text, library_versions, sha256_text

__all__ = ["RunConfig", "load_configs", "run_main"]


@dataclass(frozen=True)
class RunConfig:
    """Sizes of the main job's experiments (chosen so a cold CPU run of the organism fits minutes)."""

    n_eval: int = 54                 # test prompts per split for the location comparison
    n_sweep: int = 24                # test prompts per split for the angle and layer-subset sweeps
    max_new_tokens: int = 24
    angle_step: float = 30.0
    adaptive: bool = False
    batch_size: int = 64
    subset_sizes: tuple[int, ...] = (6, 12, 18, 24)
    seed: int = 0                    # torch seed (decoding is greedy; recorded in the manifest)

    @classmethod
    def from_file(cls, path: str | Path | None) -> RunConfig:
        return load_configs(path)[0]


def _fields(cls, fields: dict, where: str):
    unknown = set(fields) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)} in {where}; "
                         f"known: {sorted(cls.__dataclass_fields__)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def load_configs(path: str | Path | None):
    """``(RunConfig, AnalysisConfig)`` from a JSON object: RunConfig fields at the top level (sizes of
    the experiments), AnalysisConfig fields under ``"analysis"`` (sites, Arditi scoring sizes,
    selection and plane methods). Missing fields keep their defaults; ``None`` means all defaults."""
    from .pipeline import AnalysisConfig

    if path is None:
        return RunConfig(), AnalysisConfig()
    fields = json.loads(Path(path).read_text())
    if not isinstance(fields, dict):
        raise ValueError(f"{path} must hold a JSON object of RunConfig fields (and an \"analysis\" object)")
    analysis = fields.pop("analysis", {})
    if not isinstance(analysis, dict):
        raise ValueError(f"\"analysis\" in {path} must be an object of AnalysisConfig fields")
    return _fields(RunConfig, fields, str(path)), _fields(AnalysisConfig, analysis, f'"analysis" of {path}')


def _stage(folder: Path, name: str, compute) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Load ``name`` summary (and per-prompt) CSVs if present, else compute and save them."""
    summary, detail = folder / f"{name}.csv", folder / f"{name}_per_prompt.csv"
    if summary.exists():
        return pd.read_csv(summary), (pd.read_csv(detail) if detail.exists() else None)
    result = compute()
    table, per_prompt = result if isinstance(result, tuple) else (result, None)
    if per_prompt is not None:
        atomic_write_text(detail, per_prompt.to_csv(index=False))
    atomic_write_text(summary, table.to_csv(index=False))  # summary last: it marks the stage done
    return table, per_prompt


def _subsets(n_layers: int, sizes: tuple[int, ...]) -> dict[str, list[int]]:
    from .interventions import first_k, last_k, window

    out = {}
    for k in sizes:
        if k >= n_layers:
            continue
        out[f"first:{k}"] = first_k(n_layers, k)
        out[f"last:{k}"] = last_k(n_layers, k)
        start = (n_layers - k) // 2
        out[f"window:{start}-{start + k - 1}"] = window(start, start + k)
    out[f"all:{n_layers}"] = list(range(n_layers))
    return out


def _projections(analysis, direction) -> pd.DataFrame:
    acts = {"harmful": analysis.activations["harmful_val"], "harmless": analysis.activations["harmless_val"]}
    rows = []
    unit = direction.unit
    for label, a in acts.items():
        for layer in a.layers:
            proj = (a.get(direction.site, layer, direction.pos).float().cpu() @ unit).tolist()
            rows += [{"layer": layer, "label": label, "projection": p, "prompt": q} for p, q in zip(proj, a.prompts)]
    return pd.DataFrame(rows)


def _model_source(spec: str) -> dict:
    if spec != "organism":
        return {"spec": spec}
    from .artifacts import sha256_file
    from .organism import Recipe, organism_dir

    folder = organism_dir(Recipe(), build=False)
    return {"spec": spec, "organism_dir": str(folder), "recipe_key": Recipe().key(),
            "organism_manifest_sha256": sha256_file(folder / "manifest.json"), "organism_seed": Recipe().seed}


def _manifest(folder: Path, analysis, spec: str, config: RunConfig) -> Manifest:
    """The run's manifest: what produced it (model, configs, versions, seeds, prompt hashes)."""
    model, prompts = analysis.model, analysis.prompts
    shipped = prompts.source == "shipped"
    return Manifest(folder / "manifest.json", root=analysis.dir, model=_model_source(spec),
                    device=str(model.cfg.device), dtype=str(model.cfg.dtype), run_config=asdict(config),
                    analysis_config=json.loads((analysis.dir / "config.json").read_text()),
                    analysis_dir=str(analysis.dir),
                    prompts={"source": prompts.source, "sets": prompts.fingerprints()},
                    seeds={"torch": config.seed, "splits": data.SPLIT_SEEDS if shipped else prompts.seed},
                    versions=library_versions())


def run_main(spec: str = "organism", *, device=None, dtype=None, config: RunConfig = RunConfig(),
             analysis_config=None, prompts: data.PromptSplits | None = None,
             figures_dir: str | Path = "figures", progress: bool = True) -> dict:
    """Run everything for ``spec`` and write the figures; returns the key numbers.

    ``analysis_config``: a :class:`workbench.pipeline.AnalysisConfig` (default: its defaults); each
    distinct one gets its own run folder.

    ``prompts``: your own harmful/harmless sets (``data.PromptSplits.from_files``); default the
    shipped splits. Every stage is recorded in ``<run dir>/experiments/<config>/manifest.json``.
    """
    import torch

    from . import experiments as ex
    from . import figures as fg
    from .directions import cosine_matrix
    from .models import load_model
    from .pipeline import Analysis, AnalysisConfig
    from .steering_math import special_cases

    t0, timings = time.perf_counter(), {}
    torch.manual_seed(config.seed)
    model = load_model(spec, device=device, dtype=dtype)
    analysis = Analysis(model, analysis_config or AnalysisConfig(), prompts=prompts, progress=progress)
    prompts = analysis.prompts
    run_key = sha256_text(json.dumps(asdict(config), sort_keys=True))[:8]
    folder = analysis.dir / "experiments" / run_key  # a changed RunConfig never reuses stale tables
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.json", json.dumps(asdict(config), indent=2))
    manifest = _manifest(folder, analysis, spec, config)

    def tick(name: str, files=(), existed: bool = False) -> None:
        timings[name] = max(0.0, round(time.perf_counter() - t0 - sum(timings.values()), 1))  # no "-0.0"
        manifest.stage(name, timings[name], list(files), reused=existed)
        if progress:
            print(f"[workbench run] {name} {'reused' if existed else 'done'} ({timings[name]} s)", flush=True)

    def analysis_stage(name: str, compute):
        files = analysis.stage_files(name)
        existed = all(f.exists() for f in files)
        result = compute()
        tick(name, files, existed)
        return result

    tick("model")
    analysis_stage("activations", lambda: analysis.activations)
    direction = analysis_stage("selection", analysis.direction)
    selection = analysis.selection
    plane = analysis_stage("plane", analysis.plane)
    ids, cfg = analysis.refusal_ids, config
    test = {kind: prompts.get(kind, "test") for kind in ("harmful", "harmless")}

    def stage(name: str, compute):
        existed = (folder / f"{name}.csv").exists()
        result = _stage(folder, name, compute)
        tick(name, [folder / f"{name}.csv", folder / f"{name}_per_prompt.csv"], existed)
        return result

    locations, loc_prompts = stage("locations", lambda: ex.compare_locations(
        model, direction, {k: v[:cfg.n_eval] for k, v in test.items()}, layer=direction.layer,
        refusal_ids=ids, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=progress))
    subsets, _ = stage("layer_subsets", lambda: ex.layer_subset_sweep(
        model, direction, test["harmful"][:cfg.n_sweep], subsets=_subsets(model.cfg.n_layers, cfg.subset_sizes),
        refusal_ids=ids, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=progress))
    angles = [a * cfg.angle_step for a in range(int(round(360 / cfg.angle_step)))]
    sweep, _ = stage("angle_sweep", lambda: ex.angle_sweep(
        model, plane, {k: v[:cfg.n_sweep] for k, v in test.items()}, angles, refusal_ids=ids,
        adaptive=cfg.adaptive, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=progress))

    name = spec
    unit_last = analysis.unit_candidates.subset(positions=list(analysis.config.plane_positions))
    resid_layer = analysis.activations["harmful_val"].get(direction.site, direction.layer, direction.pos)
    baseline = locations[locations.condition == "none"].set_index("split")["refusal_rate"].to_dict()
    figs = {
        "01_location_comparison": (fg.location_comparison(locations, loc_prompts, model=name),
                                   "refusal rate (harmful, harmless) and KL for ablation at each location, and addition"),
        "02_selection_heatmaps": (fg.selection_heatmaps(selection.table, choices=selection.choices, model=name),
                                  "layer × position maps of bypass, induce, KL, AUC and norm of every resid_pre candidate"),
        "03_cosine_matrix": (fg.cosine_matrix_figure(cosine_matrix(analysis.candidates.subset(positions=[-1])),
                                                     analysis.candidates.subset(positions=[-1]).keys, model=name),
                             "cosine similarity of the last-token candidates across layers and sites"),
        "04_plane_projection": (fg.plane_projection(plane.candidate_coords(unit_last), model=name),
                                "every candidate's angle and radius in the steering plane, coloured by depth"),
        "05_angle_sweep": (fg.angle_sweep_polar(sweep, baseline=baseline, model=name),
                           "refusal rate per steering angle (harmful, harmless) and the four response labels"),
        "06_projection_histograms": (fg.projection_histograms(_projections(analysis, direction), model=name),
                                     "harmful vs harmless projections on the chosen direction, per layer (slider)"),
        "07_layer_subsets": (fg.layer_subset_figure(subsets, model=name),
                             "harmful refusal when ablating only the first / last / middle k blocks"),
        "08_special_cases": (fg.special_cases_figure(special_cases(resid_layer, direction.vector,
                                                                   [-80.0, -40.0, -10.0, 10.0, 40.0, 80.0]), model=name),
                             "ablation is rotation to 90° and addition a rotation by < 180° in each token's own plane"),
    }
    out = Path(figures_dir)
    written = {key: fg.save_figure(fig, key, out) for key, (fig, _) in figs.items()}
    tick("figures", [p for paths in written.values() for p in paths if p.suffix == ".png"])

    loc = locations.set_index(["split", "condition"])["refusal_rate"].to_dict()
    harmful_sweep = sweep[sweep.split == "harmful"].sort_values("angle")
    summary = {
        "model": spec, "direction": {"site": direction.site, "layer": direction.layer, "pos": direction.pos,
                                     "method": analysis.config.direction_method, "notes": selection.notes.get("arditi", "")},
        "choices": {m: str(k) for m, k in selection.choices.items()},
        "plane": {"b1": str(plane.b1_key), "pc1_explained_variance": round(plane.pc1_explained_variance, 3),
                  "angle_pc1_b1_deg": round(plane.angle_pc1_b1_deg, 1)},
        "refusal_by_location": {f"{s}/{c}": round(v, 3) for (s, c), v in loc.items()},
        "harmful_refusal_by_angle": dict(zip(harmful_sweep.angle.astype(int).astype(str),
                                             harmful_sweep.refusal_rate.round(3))),
        "timings_s": timings, "seconds": round(time.perf_counter() - t0, 1), "run_dir": str(analysis.dir),
        "manifest": str(manifest.path), "prompts": prompts.source,
        "versions": library_versions(),
    }
    _write_index(out, figs, written, summary)
    for where in (folder, analysis.dir):  # the run dir's copy is the latest run's
        atomic_write_text(where / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def _write_index(out: Path, figs: dict, written: dict, summary: dict) -> None:
    lines = [f"# Figures for `{summary['model']}`", "",
             "Regenerate with `workbench run` (see the top-level README). Each figure is an interactive "
             "HTML file; PNGs are written when a Chromium is available.", "",
             f"Direction: `{summary['direction']['site']}` layer {summary['direction']['layer']}, position "
             f"{summary['direction']['pos']} ({summary['direction']['method']}). Plane: b1 = `{summary['plane']['b1']}`, "
             f"PC1 explains {summary['plane']['pc1_explained_variance']:.0%} of the candidates' variance, "
             f"{summary['plane']['angle_pc1_b1_deg']}° from b1.", "",
             "| figure | what it shows |", "|---|---|"]
    for key, (_, what) in figs.items():
        files = " · ".join(f"[{p.suffix[1:]}]({p.name})" for p in written[key])
        lines.append(f"| {key} ({files}) | {what} |")
    lines += ["", "Key numbers (refusal rate, greedy, test split):", ""]
    lines += [f"- {k}: {v}" for k, v in summary["refusal_by_location"].items()]
    lines += ["", "Harmful refusal by angle: " + ", ".join(f"{a}°: {v}" for a, v in summary["harmful_refusal_by_angle"].items())]
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")
