"""The main job: every analysis, intervention experiment and figure for one model, as resumable stages.

Stages (:mod:`workbench.stages`; each saved in the run folder and skipped when done, so an
interrupted run resumes): model → activations → refusal tokens → selection (prompt filter, Arditi scores) → plane →
location comparison → layer subsets → angle sweep → rotation variants → causal controls (``RunConfig.controls``:
random / null direction, random plane) → damage (CE of held-out harmless answers under each location, angle and
control) → stability → figures (HTML + PNG) and ``figures/README.md``.
A model that refuses nothing (no refusal tokens given or found) still gets the generation-free
path: activations, selection without Arditi's scores, plane, stability and the analysis figures; the run's
``skipped`` says what was left out and why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from . import controls as cx
from . import damage as dm
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
from .stability import Stability
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


def _angle_names(angles: Sequence[float]) -> tuple[str, ...]:
    """Angles as the damage tables name them: ``180.0`` → ``"180"``."""
    return tuple(f"{float(a):g}" for a in angles)


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

    def stability(self) -> Stability:
        """The direction's bootstrap stability (generation-free: runs for every model)."""
        return self.analysis.stability(self.config.stability_resamples, self.config.stability_seed)

    def experiments(self) -> MainTables | None:
        """Every experiment's tables; None when they cannot score refusal (``analysis.arditi_skipped``)."""
        if self.analysis.arditi_skipped:
            return None
        locations, location_prompts = self.locations()
        subsets, sweep = self.subsets(), self.sweep()
        tables = MainTables(
            locations, location_prompts, subsets, sweep, self.variants(self.sweep_per_prompt), self.behaviours()
        )
        if self.config.controls:
            tables = replace(tables, **self.controls())
        return replace(tables, damage=self.damage(self.damage_experiments(tables)))

    def controls(self) -> dict[str, pd.DataFrame]:
        """The causal controls (stages ``controls`` and ``plane_control``) as :class:`MainTables`
        fields: the location comparison's ``all`` and ``addition`` with a random and a null direction
        on its own prompts (:func:`~workbench.experiments.control_locations`), and the angle sweep
        in a random plane at ``control_angles`` on the harmful and harmless sweep prompts, at the
        real sweep's site and gate (:func:`~workbench.experiments.control_sweep`)."""
        config, where = self.config, self.direction.where()
        prompts = {k: v[: config.n_eval] for k, v in self.test.items()}

        def locations():  # the harmless activations are read only when the stage is computed
            harmless = self.analysis.activations["harmless_train"].get(*where)
            return ex.control_locations(
                self.model, self.direction, harmless, prompts, layer=where[1], ctx=self.ctx, seed=config.control_seed
            )

        sweep = partial(
            ex.control_sweep,
            self.model,
            self.plane,
            {k: v for k, v in self.sweep_prompts.items() if k in self.test},
            config.control_angles,
            ctx=self.ctx,
            seed=config.control_seed,
            adaptive=config.adaptive,
            site=config.rotation_site,
        )
        controls, control_prompts = self.tables("controls", ["split", "condition"], locations)
        plane_control, plane_control_prompts = self.tables("plane_control", ["split", "angle"], sweep)
        return {
            "controls": controls,
            "control_prompts": control_prompts,
            "plane_control": plane_control,
            "plane_control_prompts": plane_control_prompts,
        }

    def damage_experiments(self, tables: MainTables) -> list[dm.DamageExperiment]:
        """What the damage stage prices: each condition of the location comparison (its layer and α),
        each swept angle (its plane, site, adaptive) and, with ``controls``, each control, each with its
        own responses. The unsteered rows of each are the location comparison's ``none`` rows of the
        same prompts (the sweeps' prompts are a prefix of the same test splits, checked by
        :func:`~workbench.damage.prefix_rows`)."""
        conditions, config = tuple(ex.CONDITIONS), self.config
        locations = dm.setting_rows(tables.location_prompts, "condition")
        none = locations[locations["setting"] == "none"]
        sweep = dm.setting_rows(self.sweep_per_prompt, "angle")
        location_hooks = ex.location_hooks_for(self.model, self.direction, conditions, layer=self.direction.where()[1])
        rotate = partial(ex.angle_hooks_for, self.model, site=config.rotation_site, adaptive=config.adaptive)
        experiments = [
            dm.DamageExperiment("locations", conditions, location_hooks, locations, none),
            dm.DamageExperiment(
                "angle_sweep",
                _angle_names(self.angles),
                rotate(self.plane, self.angles),
                sweep,
                dm.prefix_rows(none, sweep),
            ),
        ]
        if tables.control_prompts is not None and tables.plane_control_prompts is not None:
            experiments += self._control_damage(tables.control_prompts, tables.plane_control_prompts, none, rotate)
        return experiments

    def _control_damage(
        self, control_prompts: pd.DataFrame, plane_prompts: pd.DataFrame, none: pd.DataFrame, rotate
    ) -> list[dm.DamageExperiment]:
        """The controls' damage experiments: the random / null direction beside ``all`` and
        ``addition`` (the control directions are built only when the stage computes), and the random
        plane at ``control_angles``."""
        config, where = self.config, self.direction.where()
        seed, angles = config.control_seed, list(config.control_angles)

        def control_hooks(setting):  # the harmless activations are read only when the CE is computed
            harmless = self.analysis.activations["harmless_train"].get(*where)
            return ex.control_hooks_for(self.model, self.direction, harmless, layer=where[1], seed=seed)[2](setting)

        names = tuple(f"{kind}:{seed}/{base}" for kind, base in ex.CONTROL_SETTINGS)
        controls = dm.setting_rows(control_prompts, "condition")
        plane = dm.setting_rows(plane_prompts, "angle")
        random_plane = cx.random_plane(self.plane, seed)
        return [
            dm.DamageExperiment("controls", names, control_hooks, controls, none),
            dm.DamageExperiment(
                "plane_control", _angle_names(angles), rotate(random_plane, angles), plane, dm.prefix_rows(none, plane)
            ),
        ]

    def damage(self, experiments: Sequence[dm.DamageExperiment]) -> pd.DataFrame:
        """The ``damage`` stage: the CE of the first ``n_damage`` shipped held-out harmless answers (each
        cut to ``damage_tokens`` tokens) under every setting of
        ``experiments`` (cached: ``damage_per_prompt.csv``, one row per experiment, setting and text),
        and :func:`~workbench.damage.damage_summary` of it beside the experiments' own tables
        (``damage.csv``; computed again on load, so it follows the current tables and labeller)."""
        files = table_files(self.folder, "damage")
        prompts, answers = dm.load_heldout_answers()
        prompts, answers = prompts[: self.config.n_damage], answers[: self.config.n_damage]
        answers = dm.truncate_answers(self.model.tokenizer, answers, self.config.damage_tokens)
        specs = [(e.name, e.settings, e.hooks_for) for e in experiments]

        def compute() -> tuple[pd.DataFrame, pd.DataFrame]:
            ce = dm.cross_entropy_table(self.model, prompts, answers, specs, batch_size=self.ctx.batch_size)
            return save_tables(files, (ce, dm.damage_summary(ce, experiments)))  # type: ignore[return-value]

        def load() -> tuple[pd.DataFrame, pd.DataFrame]:
            ce = dm.load_cross_entropy(files[0], specs, len(prompts))  # lacking a setting: computed again
            return ce, dm.damage_summary(ce, experiments)

        summary = self.stages.run("damage", files, compute, load)[1]
        return summary.assign(answer_tokens=self.config.damage_tokens)  # for the key numbers

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
    stability = job.stability()

    t_fig = time.perf_counter()
    figs = main_figures(analysis, job.direction, job.plane, tables, model=spec, stability=stability)
    written = {key: save_figure(fig, key, figures_dir) for key, (fig, _) in figs.items()}
    pngs = [f for paths in written.values() for f in paths if f.suffix == ".png"]
    stages.record("figures", time.perf_counter() - t_fig, pngs)

    summary = {**job.summary(spec, tables, t0), "stability": stability.summary, "inputs": inputs}
    write_index(Path(figures_dir), figs, written, summary)
    for where in (folder, analysis.dir):  # the run dir's copy is the latest run's
        atomic_write_text(where / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary
