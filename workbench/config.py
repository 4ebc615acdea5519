"""Every setting of the workbench as a frozen dataclass, and the one loader of config files.

* :class:`AnalysisConfig`: what the analysis computes (cached sites, Arditi scoring sizes, selection
  and plane methods); each distinct one gets its own run folder.
* :class:`RunConfig`: the sizes of the main job's experiments.
* :class:`BenchSizes`: the problem sizes of ``benchmarks/run.py`` (quick, full GPU, full CPU).
* :class:`Recipe`: everything that determines the refusal organism's weights (its hash, computed by
  :func:`workbench.organism.recipe_key`, names the cached organism).

:func:`load_configs` reads a JSON file: ``RunConfig`` fields at the top level and ``AnalysisConfig``
fields under ``"analysis"``. Unknown keys and values of the wrong type are rejected, naming the field.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "AnalysisConfig",
    "RunConfig",
    "Recipe",
    "BenchSizes",
    "BENCH_QUICK",
    "BENCH_FULL",
    "BENCH_FULL_CPU",
    "load_configs",
    "from_dict",
]

T = TypeVar("T")


@dataclass(frozen=True)
class AnalysisConfig:
    """What the analysis computes. Arditi scoring runs the model once per candidate × prompt, so on a
    CPU it is restricted (positions, layer stride, prompts); statistics cover every candidate."""

    sites: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post")
    arditi_site: str = "resid_pre"
    arditi_positions: tuple[int, ...] = (-1,)
    arditi_layer_stride: int = 1
    arditi_prompts: int = 32  # the paper's n_val; 12 prompts gave a noisier choice on the organism
    kl_max: float = 0.1
    fallback_rank: str = "balance"  # when Arditi's filters reject all: "balance" or "bypass" (see select)
    direction_method: str = "arditi"
    plane_b1_method: str = "max_sim"
    plane_positions: tuple[int, ...] = (-1,)
    batch_size: int = 64


@dataclass(frozen=True)
class RunConfig:
    """Sizes of the main job's experiments (chosen so a cold CPU run of the organism fits minutes)."""

    n_eval: int = 54  # test prompts per split for the location comparison
    n_sweep: int = 24  # test prompts per split for the angle and layer-subset sweeps
    max_new_tokens: int = 24
    angle_step: float = 30.0
    adaptive: bool = False
    batch_size: int = 64
    subset_sizes: tuple[int, ...] = (6, 12, 18, 24)
    seed: int = 0  # torch seed (decoding is greedy; recorded in the manifest)

    @classmethod
    def from_file(cls, path: str | Path | None) -> RunConfig:
        return load_configs(path)[0]


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


def _check_value(cls: type, name: str, hint: Any, value: Any, where: str) -> Any:
    """``value`` converted to the field's type (lists → tuples, ints → floats), or a ValueError."""

    def bad(expected: str) -> ValueError:
        return ValueError(f"{cls.__name__}.{name} in {where} must be {expected}, got {value!r}")

    origin = typing.get_origin(hint)
    if origin is tuple:
        (item, _) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list of {item.__name__}")
        return tuple(_check_value(cls, name, item, v, where) for v in value)
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


def from_dict(cls: type[T], values: dict[str, Any], where: str = "the config") -> T:
    """``cls(**values)`` with every key and value checked (unknown keys name the known ones)."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a JSON object of {cls.__name__} fields, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)} in {where}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _check_value(cls, k, hints[k], v, where) for k, v in values.items()})


def load_configs(path: str | Path | None) -> tuple[RunConfig, AnalysisConfig]:
    """``(RunConfig, AnalysisConfig)`` from a JSON object: RunConfig fields at the top level (sizes of
    the experiments), AnalysisConfig fields under ``"analysis"`` (sites, Arditi scoring sizes,
    selection and plane methods). Missing fields keep their defaults; ``None`` means all defaults."""
    if path is None:
        return RunConfig(), AnalysisConfig()
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read config file {path}: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f'{path} must hold a JSON object of RunConfig fields (and an "analysis" object)')
    analysis = values.pop("analysis", {})
    return (from_dict(RunConfig, values, str(path)), from_dict(AnalysisConfig, analysis, f'"analysis" of {path}'))
