"""The main job: every analysis, intervention experiment and figure for one model, as resumable stages.

Stages (:mod:`workbench.stages`; each saved in the run folder and skipped when done, so an
interrupted run resumes): model → activations → refusal tokens → selection (prompt filter, Arditi scores) → plane →
location comparison → layer subsets → angle sweep → figures (HTML + PNG) and ``figures/README.md``.
A model that refuses nothing (no refusal tokens given or found) still gets the generation-free
path: activations, selection without Arditi's scores, plane and the analysis figures; the run's
``skipped`` says what was left out and why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from . import data
from . import experiments as ex
from .artifacts import Manifest, atomic_write_text, library_versions, sha256_file, sha256_text
from .config import LATE_RUN_FIELDS, AnalysisConfig, RunConfig, load_configs
from .figures import save_figure
from .interventions import layer_subsets
from .models import load_model
from .organism import RECIPES, organism_dir
from .pipeline import Analysis
from .report import MainTables, key_numbers, main_figures, run_command, write_index
from .stages import Stages, load_tables, save_tables, table_files

__all__ = ["RunConfig", "load_configs", "run_main"]


def _model_source(model) -> dict:
    """Where the model's weights come from (the organism: its recipe key and build manifest)."""
    spec = model.workbench_name
    if spec not in RECIPES:
        return {"spec": spec}
    folder = organism_dir(RECIPES[spec], build=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    return {
        "spec": spec,
        "organism_dir": str(folder),
        "recipe_key": manifest["recipe_key"],
        "organism_manifest_sha256": sha256_file(folder / "manifest.json"),
        "organism_seed": manifest["recipe"]["seed"],
    }


def _inputs(spec, device, dtype, prompts, config_file, figures_dir) -> dict:
    """What the run was given, as given: the prompt files and the config file (path, sha256 and, for
    the config, its content), and the ``workbench run`` command that repeats the run."""
    config = None
    if config_file is not None:
        text = Path(config_file).read_text(encoding="utf-8")
        config = {"path": str(config_file), "sha256": sha256_text(text), "content": json.loads(text)}
    files = {kind: dict(f) for kind, f in prompts.files.items()} if prompts is not None else {}
    command = run_command(
        spec,
        harmful=files.get("harmful", {}).get("path"),
        harmless=files.get("harmless", {}).get("path"),
        config=None if config_file is None else str(config_file),
        figures=str(figures_dir),
        dtype=dtype,
        device=device,
    )
    return {"prompt_files": files or None, "config_file": config, "command": command}


def _manifest(folder: Path, analysis: Analysis, config: RunConfig, inputs: dict) -> Manifest:
    """The run's manifest: what produced it (model, configs, versions, seeds, prompt hashes, the
    prompt and config files and the command)."""
    model, prompts = analysis.model, analysis.prompts
    shipped = prompts.source == "shipped"
    return Manifest(
        folder / "manifest.json",
        root=analysis.dir,
        model=_model_source(model),
        device=str(model.cfg.device),
        dtype=str(model.cfg.dtype),
        run_config=asdict(config),
        analysis_config=json.loads((analysis.dir / "config.json").read_text()),
        analysis_dir=str(analysis.dir),
        prompts={"source": prompts.source, "sets": prompts.fingerprints()},
        seeds={"torch": config.seed, "splits": data.SPLIT_SEEDS if shipped else prompts.seed},
        versions=library_versions(),
        inputs=inputs,
    )


def _config_fields(config: RunConfig) -> dict:
    """The RunConfig as its experiments folder is keyed (late fields only when set)."""
    return {k: v for k, v in asdict(config).items() if not (k in LATE_RUN_FIELDS and v == LATE_RUN_FIELDS[k])}


def variant_name(site: str, norm: str) -> str:
    return f"{site.replace('_', '-')}, {norm} plane"


class _MainJob:
    """One main job's state (model, analysis, stages, experiments folder, run config and context),
    with one method per experiment stage, so each stage reads what it needs from ``self``."""

    sweep_per_prompt: pd.DataFrame  # the angle sweep's responses, set by sweep(): the damage stage reads them

    def __init__(self, analysis: Analysis, stages: Stages, folder: Path, config: RunConfig, progress: bool):
        self.analysis, self.model, self.stages = analysis, analysis.model, stages
        self.folder, self.config = folder, config
        self.direction, self.plane = analysis.direction(), analysis.plane()
        self.ctx = config.context(analysis.refusal_tokens.ids, progress=progress)
        self.test = {kind: analysis.prompts.get(kind, "test") for kind in ("harmful", "harmless")}
        self.angles = [a * config.angle_step for a in range(int(round(360 / config.angle_step)))]
        available = {**data.graded_test_sets(), **self.test}  # the analysis's own harmful / harmless test splits win
        self.sweep_prompts: dict[str, Sequence[str]] = {k: available[k][: config.n_sweep] for k in config.sweep_sets}

    def _relabelled(self, files, keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        per_prompt, summary = load_tables(files)
        summary, per_prompt = ex.relabel(summary, per_prompt, keys)
        return per_prompt, summary

    def tables(self, name: str, keys: list[str], compute) -> tuple[pd.DataFrame, pd.DataFrame]:
        """A stage whose result is a (summary, per-prompt) pair of tables. Loaded from an earlier
        run, its stored responses are labelled again (``keys``: the summary's grouping), so a
        changed labeller never leaves stale labels in the figures."""
        files = table_files(self.folder, name)
        per_prompt, summary = self.stages.run(
            name, files, lambda: save_tables(files, compute()[::-1]), lambda: self._relabelled(files, keys)
        )
        return summary, per_prompt

    def locations(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        prompts = {k: v[: self.config.n_eval] for k, v in self.test.items()}
        layer = self.direction.where()[1]
        return self.tables(
            "locations",
            ["split", "condition"],
            lambda: ex.compare_locations(self.model, self.direction, prompts, layer=layer, ctx=self.ctx),
        )

    def subsets(self) -> pd.DataFrame:
        subsets = layer_subsets(self.model.cfg.n_layers, self.config.subset_sizes)
        harmful = self.test["harmful"][: self.config.n_sweep]
        compute = partial(ex.layer_subset_sweep, self.model, self.direction, harmful, subsets=subsets, ctx=self.ctx)
        return self.tables("layer_subsets", ["subset"], compute)[0]

    def sweep(self) -> pd.DataFrame:
        config = self.config

        def compute():
            return ex.angle_sweep(
                self.model,
                self.plane,
                self.sweep_prompts,
                self.angles,
                site=config.rotation_site,
                adaptive=config.adaptive,
                ctx=self.ctx,
            )

        summary, self.sweep_per_prompt = self.tables("angle_sweep", ["split", "angle"], compute)
        return summary

    def variants(self, sweep_prompts: pd.DataFrame) -> pd.DataFrame:
        """First-token refusal log-odds per angle when rotating pre- vs post-gain in the raw- vs
        unit-candidate plane, each mean with its 95 % bootstrap interval over the prompts; the main
        sweep's own setting is summarised from the sweep's per-prompt scores (same prompts)."""
        analysis, config = self.analysis, self.config
        prompts = {k: v for k, v in self.sweep_prompts.items() if k in self.test}  # first-token scores: two sets
        main = (config.rotation_site, analysis.config.plane_candidates)
        grid = [(site, norm) for norm in ("raw", "unit") for site in ("post_gain", "pre_gain") if (site, norm) != main]
        files = table_files(self.folder, "rotation_variants")  # a cache with the summary alone recomputes once

        def compute() -> tuple[pd.DataFrame, pd.DataFrame]:
            planes = {variant_name(site, norm): (analysis.plane(candidate_norm=norm), site) for site, norm in grid}
            summary, per_prompt = ex.rotation_variant_sweep(
                self.model, planes, prompts, self.angles, adaptive=config.adaptive, ctx=self.ctx
            )
            save_tables(files, (per_prompt, summary))
            return summary, per_prompt

        table = self.stages.run("rotation_variants", files, compute, lambda: load_tables(files)[::-1])[0]
        own = sweep_prompts[sweep_prompts["split"].isin(list(prompts))]
        own = own.assign(variant=variant_name(*main), site=main[0])
        own = ex.mean_intervals(own, ["variant", "site", "split", "angle"])
        return pd.concat([own[table.columns], table], ignore_index=True)

    def behaviours(self) -> pd.DataFrame | None:
        if not self.config.behaviours:
            return None

        def compute():  # the prompt files are read only when the stage is computed
            return ex.behaviour_table(self.model, data.graded_test_sets(), self.ctx)

        return self.tables("behaviours", ["category"], compute)[0]

    def experiments(self) -> MainTables | None:
        """Every experiment's tables; None when they cannot score refusal (``analysis.arditi_skipped``)."""
        if self.analysis.arditi_skipped:
            return None
        locations, location_prompts = self.locations()
        subsets, sweep = self.subsets(), self.sweep()
        variants = self.variants(self.sweep_per_prompt)
        return MainTables(locations, location_prompts, subsets, sweep, variants, self.behaviours())

    def sample_warnings(self) -> list[str]:
        """The analysis's small splits, and the test prompts behind each reported refusal rate."""
        counts = [
            ("rate", f"test {kind} prompts per location (n_eval)", min(len(p), self.config.n_eval))
            for kind, p in self.test.items()
        ]
        counts += [
            ("rate", f"{kind} prompts per steering angle (n_sweep)", len(p)) for kind, p in self.sweep_prompts.items()
        ]
        harmful = min(len(self.test["harmful"]), self.config.n_sweep)
        counts.append(("rate", "harmful prompts per layer subset (n_sweep)", harmful))
        return self.analysis.sample_warnings() + data.sample_warnings(counts)

    def summary(self, spec: str, tables: MainTables | None, t0: float) -> dict:
        rotation = {"site": self.config.rotation_site, "adaptive": self.config.adaptive}
        summary = {
            "model": spec,
            **key_numbers(self.analysis, self.direction, self.plane, tables, rotation),
            "timings_s": self.stages.top_level(),
            "seconds": round(time.perf_counter() - t0, 1),
            "run_dir": str(self.analysis.dir),
            "manifest": str(self.stages.manifest.path if self.stages.manifest else None),
            "prompts": self.analysis.prompts.source,
            "versions": library_versions(),
            "warnings": self.sample_warnings(),
        }
        if tables is not None and tables.behaviours is not None:
            summary["behaviours"] = tables.behaviours.set_index("category").to_dict("index")
        return summary


def _start(spec, device, dtype, config, analysis_config, prompts, progress, inputs) -> tuple[Analysis, Stages, Path]:
    """Load the model, open the analysis and the experiments folder of this run config, time the load."""
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    model = load_model(spec, device=device, dtype=dtype)
    stages = Stages(progress=progress, label="workbench run")
    analysis = Analysis(model, analysis_config or AnalysisConfig(), prompts=prompts, progress=progress, stages=stages)
    folder = analysis.dir / "experiments" / sha256_text(json.dumps(_config_fields(config), sort_keys=True))[:8]
    folder.mkdir(parents=True, exist_ok=True)  # a changed RunConfig never reuses stale tables
    atomic_write_text(folder / "config.json", json.dumps(asdict(config), indent=2))
    stages.manifest = _manifest(folder, analysis, config, inputs)
    stages.record("model", time.perf_counter() - t0)
    return analysis, stages, folder


def run_main(
    spec: str = "organism",
    *,
    device=None,
    dtype=None,
    config: RunConfig = RunConfig(),
    analysis_config: AnalysisConfig | None = None,
    prompts: data.PromptSplits | None = None,
    figures_dir: str | Path = "figures",
    progress: bool = True,
    config_file: str | Path | None = None,
) -> dict:
    """Run everything for ``spec`` and write the figures; returns the key numbers.

    ``analysis_config``: a :class:`workbench.config.AnalysisConfig` (default: its defaults); each
    distinct one gets its own run folder.

    ``prompts``: your own harmful/harmless sets (``data.PromptSplits.from_files``); default the
    shipped splits. ``config_file``: the file ``config`` and ``analysis_config`` were read from, if
    any. Every stage is recorded in ``<run dir>/experiments/<config>/manifest.json``, with the prompt
    and config files and the command that repeats the run (``inputs``, also in the summary).
    """
    t0 = time.perf_counter()
    inputs = _inputs(spec, device, dtype, prompts, config_file, figures_dir)
    analysis, stages, folder = _start(spec, device, dtype, config, analysis_config, prompts, progress, inputs)
    analysis.activations  # noqa: B018  its own stage, timed apart from the selection that needs it
    job = _MainJob(analysis, stages, folder, config, progress)
    tables = job.experiments()

    t_fig = time.perf_counter()
    figs = main_figures(analysis, job.direction, job.plane, tables, model=spec)
    written = {key: save_figure(fig, key, figures_dir) for key, (fig, _) in figs.items()}
    pngs = [f for paths in written.values() for f in paths if f.suffix == ".png"]
    stages.record("figures", time.perf_counter() - t_fig, pngs)

    summary = {**job.summary(spec, tables, t0), "inputs": inputs}
    write_index(Path(figures_dir), figs, written, summary)
    for where in (folder, analysis.dir):  # the run dir's copy is the latest run's
        atomic_write_text(where / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary
