"""The analysis of one model as resumable stages: activations → candidates → selection → plane.

Each stage (:mod:`workbench.stages`) saves its artifacts atomically in the run folder
(``<cache>/runs/<model>/<config>/``) and is skipped when they exist, so an interrupted run resumes
from the last finished stage and the CLI's "default direction/plane for that model" is computed once
and reused.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from functools import cached_property
from pathlib import Path

import pandas as pd

from . import data
from .activations import Activations, cache_activations
from .artifacts import Manifest, atomic_write_text, cache_dir, library_versions, load_tensors, save_tensors, sha256_text
from .config import LATE_ANALYSIS_FIELDS, AnalysisConfig, protocol_of
from .directions import CandidateKey, Candidates, Direction, diff_in_means, per_sample_candidates
from .planes import Plane, build_plane, plane_report
from .refusal_tokens import FIX, RefusalTokens, discover_refusal_tokens, resolve_refusal_tokens, with_separation
from .selection import Selection, arditi_scores, candidate_stats, filter_prompts, select
from .stability import Stability, StabilityInputs, direction_stability
from .stages import Stages

__all__ = ["AnalysisConfig", "Analysis", "model_key", "GENERATION_FREE"]

# The direction's method when the config asks for Arditi's but the model refuses nothing: the
# angular-steering study's b1 rule (the candidate most similar to the others), which needs no generation.
GENERATION_FREE = "max_sim"

SETS = {
    "harmful_train": ("harmful", "direction_train"),
    "harmless_train": ("harmless", "direction_train"),
    "harmful_val": ("harmful", "validation"),
    "harmless_val": ("harmless", "validation"),
}


def model_key(model) -> str:
    """A folder-safe name for the model's run folder (the organism's includes its recipe hash; a
    dtype other than float32 is appended, so bf16 and fp32 stages never mix)."""
    name = getattr(model, "workbench_key", None) or getattr(model, "workbench_name", None) or model.cfg.model_name
    dtype = str(model.cfg.dtype).removeprefix("torch.")
    if dtype != "float32":
        name = f"{name}-{dtype}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_")


class Analysis:
    """Lazy, cached stages for one model. ``Analysis(model).direction()`` is the default direction."""

    def __init__(
        self,
        model,
        config: AnalysisConfig = AnalysisConfig(),
        *,
        prompts: data.PromptSplits | None = None,
        run_dir: str | Path | None = None,
        progress: bool = True,
        stages: Stages | None = None,
    ):
        self.model, self.config, self.progress = model, config, progress
        self.prompts = prompts or data.PromptSplits.shipped()
        # one folder per (model, config, prompts): a changed config never reuses stale stages
        salt = "" if self.prompts.source == "shipped" else self.prompts.key()
        config_key = sha256_text(json.dumps(_jsonable(config), sort_keys=True) + salt)[:8]
        self.dir = Path(run_dir) if run_dir else cache_dir("runs", model_key(model), config_key)
        self.dir.mkdir(parents=True, exist_ok=True)
        config_file = self.dir / "config.json"
        if config_file.exists() and json.loads(config_file.read_text()) != _jsonable(config):
            raise ValueError(f"{self.dir} holds a run made with another config; use another run_dir")
        atomic_write_text(config_file, json.dumps(_jsonable(config), indent=2))
        # without a caller's stages, the folder's own manifest records (and later verifies) the sha256s
        self.stages = stages or Stages(manifest=Manifest(self.dir / "manifest.json", model=model_key(model)))
        atomic_write_text(
            self.dir / "prompts.json",
            json.dumps({"source": self.prompts.source, "sets": self.prompts.fingerprints()}, indent=2),
        )

    def stage_files(self, stage: str) -> list[Path]:
        """The files that hold a stage of the default analysis (``activations``, ``refusal_tokens``,
        ``prompt_filter``, ``arditi_scores``, ``selection``, ``plane``); a stage is done when they all exist."""
        files = {
            "activations": ["activations.safetensors"],
            "refusal_tokens": ["refusal_tokens.json"],
            "prompt_filter": ["prompt_filter.json"],
            "arditi_scores": ["arditi_scores.csv"],
            "selection": [],  # below: its method needs the refusal tokens
        }
        if stage == "plane":
            return [self._plane_path(self._generation_free(self.config.plane_b1_method), "pc1", None)]
        if stage == "selection":
            return [self.dir / f"direction-{self.direction_method}.safetensors"]
        if stage not in files:
            raise ValueError(f"unknown stage {stage!r}; choose {', '.join([*files, 'plane'])}")
        return [self.dir / name for name in files[stage]]

    def _plane_path(self, b1_method: str, variant: str, layer_range: tuple[int, int] | None) -> Path:
        tag = f"{b1_method}-{variant}" + (f"-L{layer_range[0]}-{layer_range[1]}" if layer_range else "")
        return self.dir / f"plane-{tag}.safetensors"

    # ------------------------------------------------------------------ stage 1: activations
    @cached_property
    def activations(self) -> dict[str, Activations]:
        """Cached sites × layers × post-instruction positions of the four prompt sets."""
        path = self.stage_files("activations")[0]

        def load() -> dict[str, Activations]:
            tensors, meta = load_tensors(path)
            return {
                name: Activations(
                    {s: tensors[f"{name}.{s}"].to(self.model.cfg.device) for s in meta["sites"]},
                    meta["layers"],
                    meta["positions"],
                    meta["tokens"],
                    meta["prompts"][name],
                )
                for name in SETS
            }

        def compute() -> dict[str, Activations]:
            acts = {
                name: cache_activations(
                    self.model,
                    self.prompts.get(*SETS[name]),
                    sites=self.config.sites,
                    batch_size=self.config.batch_size,
                    progress=self.progress,
                )
                for name in SETS
            }
            first = acts["harmful_train"]
            save_tensors(
                path,
                {f"{n}.{s}": a.acts[s] for n, a in acts.items() for s in a.sites},
                {
                    "sites": list(self.config.sites),
                    "layers": first.layers,
                    "positions": first.positions,
                    "tokens": first.tokens,
                    "prompts": {n: a.prompts for n, a in acts.items()},
                    "versions": library_versions(),
                },
            )
            return acts

        return self.stages.run("activations", [path], compute, load)

    # ------------------------------------------------------------------ candidates (computed, not stored)
    @cached_property
    def candidates(self) -> Candidates:
        """Arditi's raw difference-in-means for every (site, layer, pos), on direction_train (only the
        prompts the filter kept, when ``filter_prompts``)."""
        harmful, harmless = self.activations["harmful_train"], self.activations["harmless_train"]
        if self.config.filter_prompts and self.arditi_skipped is None:
            kept = self.prompt_filter["direction_train"]
            for kind in ("harmful", "harmless"):
                if not kept[kind]:
                    self._filter_kept_nothing(kind, "direction_train")
            harmful, harmless = harmful.select_prompts(kept["harmful"]), harmless.select_prompts(kept["harmless"])
        return diff_in_means(harmful, harmless, kind="raw")

    @cached_property
    def unit_candidates(self) -> Candidates:
        """Angular steering's unit-mean differences on every direction_train prompt, every cached site."""
        return diff_in_means(self.activations["harmful_train"], self.activations["harmless_train"], kind="unit")

    @cached_property
    def plane_candidates(self) -> Candidates:
        """The unit-mean differences the plane is built from (``plane_sites`` × ``plane_positions``)."""
        cfg = self.config
        return self.unit_candidates.subset(sites=list(cfg.plane_sites), positions=list(cfg.plane_positions))

    @cached_property
    def stats(self) -> pd.DataFrame:
        return candidate_stats(self.candidates, self.activations["harmful_val"], self.activations["harmless_val"])

    # ------------------------------------------------------------------ stage 2: selection
    @cached_property
    def refusal_tokens(self) -> RefusalTokens:
        """The first tokens Arditi's refusal score counts: the config's ``refusal_tokens``
        (``source="config"``), else discovered from the model's greedy responses to the
        direction_train prompts (:func:`~workbench.refusal_tokens.discover_refusal_tokens`); no ids
        when the model refuses nothing. Saved, with how they were chosen, in ``refusal_tokens.json``."""
        path = self.stage_files("refusal_tokens")[0]

        def compute() -> RefusalTokens:
            train = [self.prompts.get(kind, "direction_train") for kind in ("harmful", "harmless")]
            if self.config.refusal_tokens:
                found = resolve_refusal_tokens(self.model.tokenizer, self.config.refusal_tokens, self.model.cfg.d_vocab)
                found = with_separation(self.model, found, *train, batch_size=self.config.batch_size)
            else:
                found = discover_refusal_tokens(self.model, *train, batch_size=self.config.batch_size)
            atomic_write_text(path, json.dumps(found.to_json(), indent=1, ensure_ascii=False))
            return found

        def load() -> RefusalTokens:
            return RefusalTokens.from_json(json.loads(path.read_text()))

        return self.stages.run("refusal_tokens", [path], compute, load)

    @property
    def refusal_ids(self) -> list[int]:
        """The ids of :attr:`refusal_tokens`; an error naming the fix when the model refuses nothing."""
        if self.arditi_skipped:
            raise ValueError(self.arditi_skipped)
        return list(self.refusal_tokens.ids)

    @property
    def arditi_skipped(self) -> str | None:
        """Why Arditi's stages (prompt filter, scores) and every refusal-scored experiment are
        skipped, or None when they run: no refusal tokens were given and none were found."""
        if self.refusal_tokens.ids:
            return None
        n = len(self.prompts.get("harmful", "direction_train"))
        return (
            f"the model refused none of the {n} direction_train harmful prompts and no first token separates its "
            f"responses to harmful and harmless ones; pass {FIX}"
        )

    @property
    def direction_method(self) -> str:
        """The config's ``direction_method``, or :data:`GENERATION_FREE` when that is ``"arditi"``
        and Arditi's stages are skipped (:attr:`arditi_skipped`)."""
        return self._generation_free(self.config.direction_method)

    @cached_property
    def prompt_filter(self) -> dict:
        """Arditi et al.'s prompt filter: of the direction_train prompts and the first
        ``arditi_prompts`` validation prompts, keep harmful ones the model refuses (refusal log-odds
        > 0) and harmless ones it does not (< 0). ``{split: {"harmful": rows kept, "harmless": rows
        kept}}`` plus ``"counts"`` (kept/dropped per split and class)."""
        path = self.stage_files("prompt_filter")[0]

        def compute() -> dict:
            out: dict = {"counts": {}}
            for split, n in (("direction_train", None), ("validation", self.config.arditi_prompts)):
                harmful = self.prompts.get("harmful", split)[:n]
                harmless = self.prompts.get("harmless", split)[:n]
                kept = filter_prompts(
                    self.model, harmful, harmless, refusal_ids=self.refusal_ids, batch_size=self.config.batch_size
                )
                out[split] = {"harmful": kept.harmful_rows, "harmless": kept.harmless_rows}
                out["counts"][split] = kept.counts
            atomic_write_text(path, json.dumps(out, indent=1))
            return out

        return self.stages.run("prompt_filter", [path], compute, lambda: json.loads(path.read_text()))

    def validation_prompts(self, kind: str) -> list[str]:
        """The validation prompts Arditi's scores use: the first ``arditi_prompts``, then only those
        the prompt filter kept (when ``filter_prompts``)."""
        prompts = self.prompts.get(kind, "validation")[: self.config.arditi_prompts]
        if not self.config.filter_prompts:
            return prompts
        kept = [prompts[i] for i in self.prompt_filter["validation"][kind]]
        if not kept:
            self._filter_kept_nothing(kind, "validation")
        return kept

    def _filter_kept_nothing(self, kind: str, split: str) -> None:
        sign = ">" if kind == "harmful" else "<"
        raise ValueError(
            f"the prompt filter kept no {kind} {split} prompt (refusal log-odds {sign} 0 with refusal tokens "
            f'{list(self.refusal_tokens.strings)}); set "analysis": {{"filter_prompts": false}} in --config, '
            "or pass other --refusal-tokens"
        )

    @cached_property
    def arditi_candidates(self) -> Candidates:
        """The candidates Arditi's scores cover: ``arditi_site``, every ``arditi_layer_stride``-th
        layer, ``arditi_positions`` (``()`` = every cached post-instruction position)."""
        cfg = self.config
        layers = list(range(0, self.model.cfg.n_layers, cfg.arditi_layer_stride))
        positions = list(cfg.arditi_positions) or None
        return self.candidates.subset(sites=[cfg.arditi_site], layers=layers, positions=positions)

    @cached_property
    def arditi(self) -> pd.DataFrame:
        """Arditi et al.'s bypass / induce / KL scores of :attr:`arditi_candidates` (validation split);
        candidates in the pruned last 20 % of layers are not scored (NaN)."""
        path = self.stage_files("arditi_scores")[0]

        def compute() -> pd.DataFrame:
            table = arditi_scores(
                self.model,
                self.arditi_candidates,
                self.validation_prompts("harmful"),
                self.validation_prompts("harmless"),
                refusal_ids=self.refusal_ids,
                batch_size=self.config.batch_size,
                progress=self.progress,
            )
            atomic_write_text(path, table.to_csv(index=False))
            return table

        return self.stages.run("arditi_scores", [path], compute, lambda: pd.read_csv(path))

    @cached_property
    def selection(self) -> Selection:
        """Every method's choice; Arditi's only when its stages run (see :attr:`arditi_skipped`)."""
        return select(
            self.candidates,
            self.stats,
            arditi=None if self.arditi_skipped else self.arditi,
            n_layers=self.model.cfg.n_layers,
            kl_max=self.config.kl_max,
            fallback=self.config.arditi_fallback,
        )

    def selection_report(self) -> dict:
        """How the direction was selected: protocol, positions scored, prompt-filter counts, the
        fallback used (None when a candidate passed Arditi's filters), the refusal tokens and how
        they were chosen, and ``skipped`` (``{"arditi": why}`` when Arditi's stages did not run)."""
        cfg, notes, skipped = self.config, self.selection.notes, self.arditi_skipped
        scored = [] if skipped else self.arditi_candidates.keys
        return {
            "protocol": protocol_of("arditi", cfg),
            "positions_scored": sorted({k.pos for k in scored}),
            "layers_scored": sorted({k.layer for k in scored}),
            "filtered": self.prompt_filter["counts"] if cfg.filter_prompts and not skipped else None,
            "n_passed": notes.get("n_passed"),
            "layer_cutoff": notes.get("layer_cutoff"),
            "fallback": notes.get("fallback"),
            "method": self.direction_method,
            "refusal_tokens": self.refusal_tokens.to_json(),
            "skipped": {"arditi": skipped} if skipped else {},
        }

    def _kept(self, split: str, kind: str) -> int | None:
        """Prompts of ``split``/``kind`` the prompt filter kept, when it is on and already computed
        or saved (never computed here), else None."""
        if not self.config.filter_prompts:
            return None
        path = self.stage_files("prompt_filter")[0]
        if "prompt_filter" not in self.__dict__ and not path.exists():
            return None
        return int(self.prompt_filter["counts"][split][kind]["kept"])

    def sample_counts(self) -> list[tuple[str, str, int]]:
        """``(minimum, what, n)`` per class for the prompts the direction and the plane are chosen
        from (direction_train, validation), for :func:`workbench.data.sample_warnings`."""
        out = []
        for kind in ("harmful", "harmless"):
            kept = self._kept("direction_train", kind)
            n = len(self.prompts.get(kind, "direction_train")) if kept is None else kept
            what = "" if kept is None else " kept by the prompt filter"
            out.append(("train", f"direction_train {kind} prompts{what}", n))
            n_val = len(self.prompts.get(kind, "validation"))
            out.append(("selection", f"validation {kind} prompts", n_val))
            kept = self._kept("validation", kind)  # Arditi's scores: the first arditi_prompts, filtered
            n = min(n_val, self.config.arditi_prompts) if kept is None else kept
            if n != n_val:
                out.append(("selection", f"validation {kind} prompts scored by Arditi's selection", n))
        return out

    def sample_warnings(self) -> list[str]:
        """A warning per split the direction and plane are chosen from that is below its minimum
        (:data:`workbench.data.SAMPLE_MINIMUMS`)."""
        return data.sample_warnings(self.sample_counts())

    def direction(self, method: str | None = None) -> Direction:
        """The chosen direction (raw, in activation units) of ``method`` (default: the config's)."""
        method = method or self.direction_method
        path = self.dir / f"direction-{method}.safetensors"

        def compute() -> Direction:
            direction = self.selection.direction(method, self.candidates, model=model_key(self.model))
            direction.save(path)
            return direction

        name = "selection" if method == self.direction_method else f"selection-{method}"
        return self.stages.run(name, [path], compute, lambda: Direction.load(path, d_model=self.model.cfg.d_model))

    # ------------------------------------------------------------------ stage 3: plane
    def plane(
        self,
        *,
        b1_method: str | None = None,
        variant: str = "pc1",
        layer_range: tuple[int, int] | None = None,
        candidate_norm: str | None = None,
    ) -> Plane:
        """The steering plane: b1 = the chosen unit candidate, b2 = PC1 of :attr:`plane_candidates`.

        ``b1_method``: any selection method (``mean_of_candidates`` uses the mean direction itself).
        ``variant``: ``pc1``, ``last_two_pcs`` or ``per_sample`` (PCA on each harmful sample minus
        the harmless mean at b1's site, layer and position). ``layer_range=(lo, hi)`` restricts the
        candidates used for the PCA. ``candidate_norm``: ``raw`` or ``unit`` (default: the config's
        ``plane_candidates``).
        """
        b1_method = b1_method or self.config.plane_b1_method
        norm = candidate_norm or self.config.plane_candidates
        default = (b1_method, variant, layer_range, norm) == (
            self.config.plane_b1_method,
            "pc1",
            None,
            self.config.plane_candidates,
        )
        b1_method = self._generation_free(b1_method)
        path = self._plane_path(b1_method, variant, layer_range)
        if norm != self.config.plane_candidates:
            path = path.with_name(f"{path.stem}-{norm}{path.suffix}")
        return self.stages.run(
            "plane" if default else path.stem,
            [path],
            lambda: self._build_plane(path, b1_method, variant, layer_range, norm),
            lambda: Plane.load(path, d_model=self.model.cfg.d_model),
        )

    def _generation_free(self, method: str) -> str:
        """``method``, or :data:`GENERATION_FREE` for ``"arditi"`` when Arditi's stages are skipped."""
        return GENERATION_FREE if method == "arditi" and self.arditi_skipped else method

    def plane_report(self, plane: Plane) -> dict:
        """:func:`workbench.planes.plane_report` plus the protocol the plane follows."""
        return {"protocol": protocol_of("angular", self.config), **plane_report(plane)}

    def _build_plane(
        self, path: Path, b1_method: str, variant: str, layer_range: tuple[int, int] | None, norm: str
    ) -> Plane:
        cands = self.plane_candidates
        stats = candidate_stats(cands, self.activations["harmful_val"], self.activations["harmless_val"])
        b1: CandidateKey | Direction
        if b1_method == "arditi":
            key = b1 = self.selection.choices["arditi"]
        else:
            chosen = select(cands, stats)
            key = chosen.choices[b1_method]
            b1 = chosen.direction(b1_method, cands) if b1_method == "mean_of_candidates" else key
        per_sample = None
        if variant == "per_sample":
            per_sample = per_sample_candidates(
                self.activations["harmful_train"], self.activations["harmless_train"], key.site, key.layer, key.pos
            )
        if isinstance(b1, CandidateKey) and b1 not in cands.keys:  # e.g. Arditi's resid_pre choice
            b1 = self.unit_candidates.direction(b1)
        plane = build_plane(
            cands,
            b1,
            variant=variant,
            layer_range=layer_range,
            per_sample=per_sample,
            model=model_key(self.model),
            candidate_norm=norm,
        )
        plane.save(path)
        return plane

    # ------------------------------------------------------------------ direction stability (bootstrap)
    def stability(self, n_resamples: int = 20, seed: int = 0) -> Stability:
        """How much the direction, every generation-free method's choice and the plane move when the
        direction_train prompts are resampled (:func:`workbench.stability.direction_stability`; no
        forward pass). Saved as ``stability-{n_resamples}-{seed}.csv`` (per resample) and ``.json``
        (the summary) in the run folder."""
        json_path = self.dir / f"stability-{n_resamples}-{seed}.json"
        files = [json_path.with_suffix(".csv"), json_path]  # the summary, written last, marks it done

        def compute() -> Stability:
            inputs = self._stability_inputs()
            note = self._arditi_note()
            return direction_stability(inputs, n_resamples=n_resamples, seed=seed, arditi_note=note).save(*files)

        return self.stages.run("stability", files, compute, lambda: Stability.load(*files))

    def _stability_inputs(self) -> StabilityInputs:
        """The activations, the filter's kept rows, the direction and the plane the bootstrap needs."""
        acts, cfg = self.activations, self.config
        kept = None
        if cfg.filter_prompts and self.arditi_skipped is None:  # as :attr:`candidates` does
            rows = self.prompt_filter["direction_train"]
            kept = (rows["harmful"], rows["harmless"])
        return StabilityInputs(
            acts["harmful_train"],
            acts["harmless_train"],
            acts["harmful_val"],
            acts["harmless_val"],
            self.direction(),
            self.plane(),
            kept=kept,
            plane_sites=tuple(cfg.plane_sites),
            plane_positions=tuple(cfg.plane_positions),
            plane_b1_method=self._generation_free(cfg.plane_b1_method),
        )

    def _arditi_note(self) -> str:
        """Why the stability stage does not rescore Arditi's choice (the same words on every host, so the
        cached stage and the figure index do not depend on the machine's speed)."""
        if self.arditi_skipped:
            return "not run: the model refuses nothing, so every choice here is generation-free"
        n_val = len(self.validation_prompts("harmful")) + len(self.validation_prompts("harmless"))
        return (
            f"not rescored per resample: Arditi's scores ablate and add each of {len(self.arditi_candidates)} "
            f"candidates on {n_val} validation prompts (minutes on a CPU per rescoring; the run's manifest"
            " times its arditi_scores stage); the cosine of the chosen key's "
            "resampled direction is reported instead"
        )


def _jsonable(config: AnalysisConfig) -> dict:
    """The config as its run folder is keyed (late fields only when set, so older keys stay)."""
    values = json.loads(json.dumps(asdict(config)))
    return {k: v for k, v in values.items() if not (k in LATE_ANALYSIS_FIELDS and v == list(LATE_ANALYSIS_FIELDS[k]))}
