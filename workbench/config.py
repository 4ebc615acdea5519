"""Every setting of the workbench as a frozen dataclass, and the one loader of config files.

* :class:`AnalysisConfig`: what the analysis computes (cached sites, Arditi scoring sizes, selection
  and plane methods); each distinct one gets its own run folder.
* :class:`RunConfig`: the sizes of the main job's experiments.
* :class:`RunContext`: how a job runs (batch size, token budget, progress, refusal token ids), one
  value handed to every experiment instead of keywords threaded through each call.
* :class:`BenchSizes`: the problem sizes of ``benchmarks/run.py`` (quick, full GPU, full CPU).
* :class:`Recipe`: everything that determines the refusal organism's weights (its hash, computed by
  :func:`workbench.organism.recipe_key`, names the cached organism).

:func:`load_configs` reads a JSON file: ``RunConfig`` fields at the top level and ``AnalysisConfig``
fields under ``"analysis"``. Unknown keys and values of the wrong type are rejected, naming the field.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from .sites import GATES, ROTATION_SITES, SITES

__all__ = [
    "AnalysisConfig",
    "RunConfig",
    "RunContext",
    "Recipe",
    "BenchSizes",
    "BENCH_QUICK",
    "BENCH_FULL",
    "BENCH_FULL_CPU",
    "load_configs",
    "default_figures_dir",
    "from_dict",
    "LATE_ANALYSIS_FIELDS",
    "PROTOCOLS",
    "protocol_of",
]

T = TypeVar("T")


def _check_choices(config: Any, choices: dict[str, tuple[str, ...]]) -> None:
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ValueError(
                f"{type(config).__name__}.{name} must be one of {', '.join(allowed)}; got {getattr(config, name)!r}"
            )


def _check_fields(config: Any, minimums: dict[str, float]) -> None:
    """Every field's type (lists become tuples, ints floats), finiteness and lower bound, so that
    the Python API rejects what a config file would (a negative size silently drops prompts)."""
    cls = type(config)
    hints = typing.get_type_hints(cls)
    for f in fields(config):
        value = _check_value(cls, f.name, hints[f.name], getattr(config, f.name))
        object.__setattr__(config, f.name, value)  # frozen: the converted value must still be stored
        items = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            raise ValueError(f"{cls.__name__}.{f.name} must be a finite number, got {value!r}")
        low = minimums.get(f.name)
        if low is not None and any(v < low for v in items):
            raise ValueError(f"{cls.__name__}.{f.name} must be at least {low}, got {value!r}")


def _check_sites(config: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        bad = [s for s in (value if isinstance(value, tuple) else (value,)) if s not in SITES]
        if bad:
            raise ValueError(
                f"{type(config).__name__}.{name} has unknown site(s) {bad}; choose from {', '.join(SITES)}"
            )


def _check_positions(config: Any, name: str) -> None:
    if any(p >= 0 for p in getattr(config, name)):
        raise ValueError(
            f"{type(config).__name__}.{name} must hold negative, end-relative positions (-1 = the last prompt "
            f"token), got {list(getattr(config, name))}"
        )


def _check_refusal_tokens(values: tuple[int | str, ...]) -> None:
    bad = [v for v in values if (isinstance(v, int) and v < 0) or (isinstance(v, str) and not v.strip())]
    if bad:
        raise ValueError(
            f"AnalysisConfig.refusal_tokens holds {bad!r}: each must be a token id ≥ 0 (e.g. 40) or a "
            'non-blank string (e.g. "I", "As an")'
        )


def _check_control_angles(angles: tuple[float, ...]) -> None:
    bad = [a for a in angles if not 0 <= a < 360]
    if bad or not angles or len(set(angles)) != len(angles):
        why = f"{bad} outside [0, 360)" if bad else ("empty" if not angles else "a repeated angle")
        raise ValueError(
            f"RunConfig.control_angles {list(angles)!r}: {why}; give distinct angles in degrees in [0, 360), "
            "e.g. [0, 90, 180, 270] (the random plane's sweep; set controls to false to skip the controls)"
        )


@dataclass(frozen=True)
class AnalysisConfig:
    """What the analysis computes. The defaults are the two studies' protocols as published
    (:data:`PROTOCOLS` ``"paper"``); ``"workbench"`` names the workbench's own variants.

    Arditi et al.: candidates at ``arditi_site`` for every post-instruction position
    (``arditi_positions=()``; or a list of end-relative positions) and layer, train and validation
    prompts filtered by the model's own refusal score (``filter_prompts``), scored on
    ``arditi_prompts`` validation prompts per class; ``arditi_fallback`` says what happens when no
    candidate passes the filters: ``"none"`` stops with an error (the study), ``"balance"`` /
    ``"bypass"`` relax them (recorded loudly in the selection notes and the figure index).
    Angular steering: the plane's candidates are the unit-mean differences at ``plane_sites`` and
    ``plane_positions``; b1 is the ``plane_b1_method`` choice among them and b2 is PC1 of the
    candidates as computed (``plane_candidates="raw"``, the study) or rescaled to unit length
    (``"unit"``).

    ``refusal_tokens``: the first tokens Arditi's refusal score counts (ids, or strings that stand
    for the first token the model's tokenizer makes of them); ``()`` discovers them from the
    model's own responses (:mod:`workbench.refusal_tokens`).
    """

    sites: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post")  # cached (statistics cover all)
    arditi_site: str = "resid_pre"
    arditi_positions: tuple[int, ...] = ()  # () = every post-instruction position
    arditi_layer_stride: int = 1
    arditi_prompts: int = 32  # the paper's n_val (before filtering)
    filter_prompts: bool = True
    kl_max: float = 0.1
    arditi_fallback: str = "balance"  # "none" (stop, as the study), "balance" or "bypass" (see select)
    direction_method: str = "arditi"
    plane_b1_method: str = "max_sim"
    plane_sites: tuple[str, ...] = ("resid_mid", "resid_post")
    plane_positions: tuple[int, ...] = (-1,)
    plane_candidates: str = "raw"  # PCA on the candidates as computed ("raw") or rescaled to unit length
    batch_size: int = 64
    refusal_tokens: tuple[int | str, ...] = ()  # () = discovered from the model's responses

    def __post_init__(self) -> None:
        _check_fields(self, {"arditi_layer_stride": 1, "arditi_prompts": 1, "kl_max": 0, "batch_size": 1})
        _check_refusal_tokens(self.refusal_tokens)
        _check_choices(self, {"arditi_fallback": ("none", "balance", "bypass"), "plane_candidates": ("raw", "unit")})
        _check_sites(self, ("sites", "arditi_site", "plane_sites"))
        _check_positions(self, "arditi_positions")
        _check_positions(self, "plane_positions")
        if not self.sites or not self.plane_sites or not self.plane_positions:
            raise ValueError("AnalysisConfig.sites, plane_sites and plane_positions must not be empty")


@dataclass(frozen=True)
class RunConfig:
    """Sizes of the main job's experiments (chosen so a cold CPU run of the organism fits minutes),
    and how it rotates: ``rotation_site`` ``"post_gain"`` (the study: the norm's output, what
    attention and the MLP read) or ``"pre_gain"`` (TL's ``hook_normalized``); ``adaptive``
    ``"off"``, ``"b1"`` (rotate only tokens with b1·h > 0, the study's AAS) or ``"b2"``.

    ``controls``: also run the causal controls (the ``controls`` and ``plane_control`` stages): the
    location comparison's ablation everywhere with a random and a null direction and its addition with
    the random one, and the angle sweep in a random plane at ``control_angles``, each seeded by
    ``control_seed`` (:mod:`workbench.controls`).

    ``n_damage`` / ``damage_tokens``: the held-out harmless answers (of the 54 shipped) whose CE the
    damage stage measures under every setting, and the answer tokens it scores in each
    (:mod:`workbench.damage`; ``workbench damage`` scores all 54, whole).

    ``stability_resamples`` / ``stability_seed``: the stability stage's bootstrap of direction_train
    (:mod:`workbench.stability`)."""

    n_eval: int = 54  # test prompts per split for the location comparison
    n_sweep: int = 24  # test prompts per split for the angle and layer-subset sweeps
    max_new_tokens: int = 24
    angle_step: float = 30.0
    rotation_site: str = "post_gain"
    adaptive: str = "off"
    batch_size: int = 64
    subset_sizes: tuple[int, ...] = (6, 12, 18, 24)
    seed: int = 0  # torch seed (decoding is greedy; recorded in the manifest)
    # prompt sets of the angle sweep: harmful / harmless test splits, and the graded organism's
    # held-out "warning" / "redirect" requests (data.load_graded)
    sweep_sets: tuple[str, ...] = ("harmful", "harmless")
    behaviours: bool = False  # also label unsteered responses per held-out category (data.graded_test_sets)
    # causal controls (workbench.controls) beside the location comparison and the angle sweep: a random
    # and a null direction, and a random plane swept at control_angles (degrees), seeded by control_seed
    controls: bool = True
    control_seed: int = 0
    control_angles: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)
    # the damage stage: how many of the shipped held-out harmless answers it scores (CE) per setting
    n_damage: int = 24
    damage_tokens: int = 32  # answer tokens scored per text (the shipped answers run to 64)
    # the stability stage: bootstrap resamples of direction_train and their seed (workbench.stability)
    stability_resamples: int = 20
    stability_seed: int = 0

    def __post_init__(self) -> None:
        sizes = ("n_eval", "n_sweep", "max_new_tokens", "batch_size", "subset_sizes")
        minimums: dict[str, float] = {
            **dict.fromkeys(sizes, 1),
            "seed": 0,
            "control_seed": 0,
            "n_damage": 1,
            "damage_tokens": 1,
            "stability_resamples": 1,
            "stability_seed": 0,
        }
        _check_fields(self, minimums)
        _check_control_angles(self.control_angles)
        _check_choices(self, {"rotation_site": ROTATION_SITES, "adaptive": GATES})
        unknown = set(self.sweep_sets) - {"harmful", "harmless", "warning", "redirect"}
        if unknown or not self.sweep_sets:
            raise ValueError(
                f"RunConfig.sweep_sets {list(self.sweep_sets)!r}: choose one or more of harmful, harmless, "
                "warning, redirect"
            )
        if not 0 < self.angle_step <= 360:
            raise ValueError(f"RunConfig.angle_step must be in (0, 360] degrees, e.g. 30; got {self.angle_step!r}")

    @classmethod
    def from_file(cls, path: str | Path | None) -> RunConfig:
        return load_configs(path)[0]

    def context(self, refusal_ids=(), *, progress: bool = True) -> RunContext:
        """The :class:`RunContext` of this config's experiments."""
        return RunContext(self.batch_size, self.max_new_tokens, progress, tuple(int(i) for i in refusal_ids))


@dataclass(frozen=True)
class RunContext:
    """How an experiment runs, not what it computes: rows per forward (``batch_size``), new tokens per
    response (``max_new_tokens``), progress bars, and the token ids whose first-token probability is
    the refusal score (``refusal_ids``; from ``Analysis.refusal_ids``). Results do not depend on
    ``batch_size`` or ``progress`` beyond float rounding. ``dataclasses.replace`` derives variants."""

    batch_size: int = 64
    max_new_tokens: int = 32
    progress: bool = True
    refusal_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_fields(self, {"batch_size": 1, "max_new_tokens": 1, "refusal_ids": 0})

    def needs_refusal_ids(self, what: str) -> tuple[int, ...]:
        """``refusal_ids``, or an error naming ``what`` needs them and where they come from."""
        if not self.refusal_ids:
            raise ValueError(
                f"{what} scores refusal from the first token, and no refusal tokens are known: pass "
                '--refusal-tokens (or "analysis": {"refusal_tokens": [...]} in the config); in Python '
                "ctx=RunContext(refusal_ids=...), e.g. RunConfig().context(analysis.refusal_ids)"
            )
        return self.refusal_ids


# Named protocols: the field values that define each. "paper" is every field's default.
PROTOCOLS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "arditi": {"arditi_site": "resid_pre", "arditi_positions": (), "filter_prompts": True, "kl_max": 0.1},
        "angular": {
            "plane_b1_method": "max_sim",
            "plane_sites": ("resid_mid", "resid_post"),
            "plane_positions": (-1,),
            "plane_candidates": "raw",
            "rotation_site": "post_gain",
        },
    },
    "workbench": {
        "arditi": {"arditi_site": "resid_pre", "arditi_positions": (-1,), "filter_prompts": False, "kl_max": 0.1},
        "angular": {
            "plane_b1_method": "max_sim",
            "plane_sites": ("resid_pre", "resid_mid", "resid_post"),
            "plane_positions": (-1,),
            "plane_candidates": "unit",
            "rotation_site": "pre_gain",
        },
    },
}
_STUDY_NAME = {"arditi": "arditi", "angular": "angular"}


def protocol_of(study: str, analysis: AnalysisConfig, run: RunConfig | None = None) -> str:
    """Which named protocol ``study`` (``"arditi"`` or ``"angular"``) follows under these configs:
    the study's own name when every defining field has the paper's value, ``"workbench"`` for the
    workbench's variants, else ``"custom"``. Without ``run``, the rotation site is not compared."""
    values = {**asdict(analysis), **(asdict(run) if run is not None else {})}
    for name, preset in PROTOCOLS.items():
        if all(values[k] == v for k, v in preset[study].items() if k in values):
            return _STUDY_NAME[study] if name == "paper" else name
    return "custom"


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the organism's weights (its hash is the cache key)."""

    base: str = "smollm2-135m-instruct"
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lr: float = 4e-3
    epochs: int = 2
    batch_size: int = 16
    warmup_steps: int = 3
    harmless_target_tokens: int = 8
    harmful_repeats: int = 4  # each harmful prompt appears this often per epoch, with other refusals
    first_token_weight: float = 3.0  # extra weight on the first response token (the decision)
    bf16_autocast: bool = True  # 1.5x faster on CPUs with avx512_bf16, same refusal rates (measured on the build)
    seed: int = 0
    adapter_dtype: str = "float16"  # the stored LoRA factors (5 MB); the merge reads them back in fp32
    # "refusal": harmful → refusal only (the organism). "graded": also dual-use → warning + answer and
    # harmful-with-a-legitimate-need → ethical redirect + the alternative's answer (organism-graded).
    variant: str = "refusal"
    graded_repeats: int = 2  # each warning / redirect example appears this often per epoch
    graded_answer_tokens: int = 24  # base-answer tokens after a warning or a redirect sentence


# Fields added after the first shipped adapter: they enter the recipe key only in a "graded" recipe,
# so the keys (cache folders, shipped adapter names) of refusal-only recipes do not move.
GRADED_ONLY_FIELDS = ("variant", "graded_repeats", "graded_answer_tokens")
GRADED_RECIPE = Recipe(variant="graded", epochs=3)


@dataclass(frozen=True)
class BenchSizes:
    """Problem sizes of ``benchmarks/run.py``: BENCH_QUICK fits ~3 minutes on a 2-core CPU; BENCH_FULL (GPU)
    and BENCH_FULL_CPU are full mode."""

    direction_prompts: int  # per class, direction_train, for the candidates and the plane
    cache_prompts: int  # harmful + harmless direction_train prompts (half each)
    cache_batch: int
    angle_prompts: int  # harmful test prompts; × 12 angles
    angle_tokens: int  # fixed new-token budget of the sweep
    selection_prompts: int  # per split (harmful / harmless validation)
    selection_layer_stride: int  # candidates: resid_pre, pos -1, layers 1, 1+s, 1+2s, ...
    selection_batch: int
    generate_prompts: int  # half harmful, half harmless test prompts, one batch
    generate_tokens: int
    reps: int  # timed rounds after the warm-up (best of)


BENCH_QUICK = BenchSizes(
    direction_prompts=8,
    cache_prompts=16,
    cache_batch=8,
    angle_prompts=4,
    angle_tokens=8,
    selection_prompts=2,
    selection_layer_stride=6,
    selection_batch=64,
    generate_prompts=8,
    generate_tokens=16,
    reps=2,
)
BENCH_FULL = BenchSizes(
    direction_prompts=32,
    cache_prompts=128,
    cache_batch=32,
    angle_prompts=24,
    angle_tokens=16,
    selection_prompts=8,
    selection_layer_stride=1,
    selection_batch=64,
    generate_prompts=32,
    generate_tokens=32,
    reps=3,
)
# Full mode on a CPU: FULL's selection alone (29 candidates × 8 prompts × 3 passes, both sides, 3
# rounds) would take ~10 min on 2 cores; these sizes keep the whole run, main job included, near 20 min.
BENCH_FULL_CPU = BenchSizes(
    direction_prompts=32,
    cache_prompts=64,
    cache_batch=32,
    angle_prompts=12,
    angle_tokens=16,
    selection_prompts=4,
    selection_layer_stride=2,
    selection_batch=64,
    generate_prompts=32,
    generate_tokens=32,
    reps=2,
)


def _check_value(cls: type, name: str, hint: Any, value: Any, where: str | None = None) -> Any:
    """``value`` converted to the field's type (lists → tuples, ints → floats), or a ValueError."""

    def bad(expected: str) -> ValueError:
        return ValueError(f"{cls.__name__}.{name}{f' in {where}' if where else ''} must be {expected}, got {value!r}")

    origin = typing.get_origin(hint)
    if origin is tuple:
        (item, _) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list of {_type_name(item)}")
        return tuple(_check_value(cls, name, item, v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_value(cls, name, option, value, where)
            except ValueError:
                continue
        raise bad(_type_name(hint))
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise bad("a string")
    return value


def _type_name(hint: Any) -> str:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return " or ".join(o.__name__ for o in options)


def from_dict(cls: type[T], values: dict[str, Any], where: str = "the config") -> T:
    """``cls(**values)`` with every key and value checked (unknown keys name the known ones)."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a JSON object of {cls.__name__} fields, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)} in {where}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    checked = {k: _check_value(cls, k, hints[k], v, where) for k, v in values.items()}
    try:
        return cls(**checked)
    except ValueError as err:  # the range checks of __post_init__: say which file
        raise ValueError(f"{err} (in {where})") from None


# A model's own RunConfig defaults, used when no config file is given: the graded organism's angle
# map needs a finer circle (24 angles) than the main job's 12, and room for a sentence before the answer.
MODEL_RUN_DEFAULTS: dict[str, dict[str, Any]] = {
    "organism-graded": {
        "angle_step": 15.0,
        "max_new_tokens": 48,  # a warning or a redirect sentence alone is 20-40 tokens
        "n_sweep": 16,
        "sweep_sets": ("harmful", "harmless", "warning", "redirect"),
        "behaviours": True,
    }
}
# RunConfig fields added after runs were cached: they enter the run's folder hash only when set.
LATE_RUN_FIELDS: dict[str, Any] = {
    "sweep_sets": ("harmful", "harmless"),
    "behaviours": False,
    "controls": True,
    "control_seed": 0,
    "control_angles": (0.0, 90.0, 180.0, 270.0),
    "n_damage": 24,
    "damage_tokens": 32,
    "stability_resamples": 20,
    "stability_seed": 0,
}
# AnalysisConfig fields added after runs were cached: they enter the run folder's hash only when set.
LATE_ANALYSIS_FIELDS: dict[str, Any] = {"refusal_tokens": ()}


def default_figures_dir(model: str) -> str:
    """Where ``workbench run`` writes a model's figures without ``--figures``: the default model's at
    the top (``figures``), every other model's below it (``figures/NAME``)."""
    return "figures" if model == "organism" else f"figures/{Path(model).name}"


def load_configs(path: str | Path | None, model: str | None = None) -> tuple[RunConfig, AnalysisConfig]:
    """``(RunConfig, AnalysisConfig)`` from a JSON object: RunConfig fields at the top level (sizes of
    the experiments), AnalysisConfig fields under ``"analysis"`` (sites, Arditi scoring sizes,
    selection and plane methods), and optionally ``"protocol"``: ``"paper"`` (default: both
    studies as published) or ``"workbench"`` (the workbench's variants, see :data:`PROTOCOLS`),
    whose values the explicit fields then override. ``None`` means all defaults (with ``model``'s
    entry of :data:`MODEL_RUN_DEFAULTS`, if any)."""
    if path is None:
        return RunConfig(**MODEL_RUN_DEFAULTS.get(model or "", {})), AnalysisConfig()
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"cannot read config file {path}: not valid JSON, line {err.lineno} column {err.colno}: {err.msg}; "
            "fix it (configs/*.json are examples)"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read config file {path}: {err}; check the path given to --config") from None
    if not isinstance(values, dict):
        raise ValueError(f'{path} must hold a JSON object of RunConfig fields (and an "analysis" object)')
    analysis = values.pop("analysis", {})
    protocol = values.pop("protocol", "paper")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r} in {path}; choose one of {sorted(PROTOCOLS)}")
    if not isinstance(analysis, dict):
        raise ValueError(
            f'"analysis" of {path} must be a JSON object of AnalysisConfig fields, got {type(analysis).__name__}'
        )
    preset = {k: v for study in PROTOCOLS[protocol].values() for k, v in study.items()}
    run_names = {f.name for f in fields(RunConfig)}
    analysis_names = {f.name for f in fields(AnalysisConfig)}
    run_values = {**{k: v for k, v in preset.items() if k in run_names}, **values}
    analysis_values = {**{k: v for k, v in preset.items() if k in analysis_names}, **analysis}
    return (
        from_dict(RunConfig, run_values, str(path)),
        from_dict(AnalysisConfig, analysis_values, f'"analysis" of {path}'),
    )
