"""Direction stability: how far the chosen direction, each selection method's choice and the plane
move when the direction_train prompts are resampled (bootstrap).

Each resample draws, per class, as many direction_train prompts as the class has, with replacement
(:func:`resample_indices`: a seeded CPU ``torch.Generator``, so the draws are the same on every
machine), and repeats the generation-free part of the analysis on them: the raw difference-in-means
candidates (from the drawn prompts the prompt filter kept, as the analysis does), their statistics
on the fixed validation activations and every generation-free method's choice
(:func:`~workbench.selection.select`), and the plane (b1 = the plane method's choice among the unit
plane candidates, b2 = PC1 of those candidates, from every drawn prompt, as the analysis does).
A resample is an ``index_select`` of the cached activations: no forward pass. Arditi's model-based
scores are not recomputed (forward passes per candidate); the chosen direction is instead compared
with the resampled candidate at its own (site, layer, pos).

Signs: every cosine is signed. The candidates' sign is fixed by their definition (harmful minus
harmless); b2's by :data:`~workbench.planes.SIGN_RULE` (``build_plane`` flips it so the deep
candidates sit at positive angles), so a b2 cosine near −1 means the rule flipped, a real change.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .activations import Activations
from .artifacts import atomic_write_text
from .directions import CandidateKey, Candidates, Direction, diff_in_means
from .planes import Plane, build_plane
from .selection import METHODS, Selection, candidate_stats, select

__all__ = [
    "GENERATION_FREE_METHODS",
    "StabilityInputs",
    "Stability",
    "resample_indices",
    "class_resamples",
    "resampled_candidates",
    "direction_stability",
    "cosine_stats",
    "summarise",
]

GENERATION_FREE_METHODS = tuple(m for m in METHODS if m != "arditi")
ARDITI_NOTE = (
    "not rescored per resample: Arditi's scores run the model on every candidate (minutes on a CPU); "
    "the cosine of the chosen key's resampled direction is reported instead"
)
B2_SIGN = (
    "signed: build_plane fixes b2's sign by its sign rule (the deepest candidates at positive angles), "
    "so a cosine near -1 would mean the rule flipped"
)
SPAN = (
    "the cosine of the largest principal angle between the resampled plane and the full sample's "
    "(1: the same plane, however b1 and b2 turn within it)"
)
TABLE_COLUMNS = ["resample", "quantity", "key", "full_key", "cosine"]


def resample_indices(n: int, n_resamples: int, seed: int | torch.Generator) -> Int[Tensor, "resample n"]:
    """Bootstrap rows: ``n_resamples`` rows of ``n`` indices in ``0..n-1`` drawn with replacement
    (int64, CPU) from a CPU ``torch.Generator`` seeded with ``seed`` (or the generator given, which
    continues), so the same seed gives the same draws on every machine."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"resample_indices needs n ≥ 1 prompts to draw from, got {n!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer (e.g. 20), got {n_resamples!r}")
    if not isinstance(seed, torch.Generator):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"the resampling seed must be a non-negative integer, got {seed!r}")
        seed = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(0, n, (n_resamples, n), generator=seed)


def class_resamples(
    n_harmful: int, n_harmless: int, n_resamples: int, seed: int
) -> tuple[Int[Tensor, "resample n_harmful"], Int[Tensor, "resample n_harmless"]]:
    """The harmful and then the harmless draws of :func:`resample_indices`, from one generator."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"the resampling seed must be a non-negative integer, got {seed!r}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return (
        resample_indices(n_harmful, n_resamples, generator),
        resample_indices(n_harmless, n_resamples, generator),
    )


@dataclass(frozen=True, eq=False)
class StabilityInputs:
    """What the bootstrap resamples and what it compares with (``Analysis._stability_inputs``).

    ``harmful`` / ``harmless``: every direction_train prompt's activations; ``harmful_val`` /
    ``harmless_val``: the fixed validation activations the statistics use. ``direction``: the
    full-sample chosen direction (a raw candidate, or the unit mean of ``mean_of_candidates``);
    ``plane``: the full-sample ``pc1`` plane. ``kept``: the direction_train rows (harmful, harmless)
    the prompt filter kept (None: every prompt). ``plane_sites`` / ``plane_positions`` /
    ``plane_b1_method``: how the plane's candidates and b1 are chosen (``arditi``: b1 stays at the
    plane's own key, not rescored).
    """

    harmful: Activations
    harmless: Activations
    harmful_val: Activations
    harmless_val: Activations
    direction: Direction
    plane: Plane
    kept: tuple[Sequence[int], Sequence[int]] | None = None
    plane_sites: tuple[str, ...] = ("resid_mid", "resid_post")
    plane_positions: tuple[int, ...] = (-1,)
    plane_b1_method: str = "max_sim"

    def __post_init__(self) -> None:
        if self.plane.variant != "pc1":
            raise ValueError(f"direction stability resamples the pc1 plane; got a {self.plane.variant!r} plane")
        if self.plane_b1_method not in METHODS:
            raise ValueError(f"plane_b1_method {self.plane_b1_method!r}: choose one of {', '.join(METHODS)}")
        if self.plane_b1_method == "arditi" and self.plane.b1_key is None:
            raise ValueError("plane_b1_method 'arditi' needs a plane whose b1 is a candidate (plane.b1_key)")

    @property
    def b1_sites(self) -> list[str]:
        """The sites the unit candidates are needed at: the plane's, and a fixed b1's own."""
        key = self.plane.b1_key if self.plane_b1_method == "arditi" else None
        extra = [key.site] if key is not None and key.site not in self.plane_sites else []
        return [*self.plane_sites, *extra]


def _kept_rows(rows: Int[Tensor, " n"], kept: Sequence[int] | None, n: int, kind: str) -> list[int]:
    """The drawn ``rows`` (in draw order, repeats kept) that the prompt filter kept."""
    if kept is None:
        return rows.tolist()
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.as_tensor(list(kept), dtype=torch.long)] = True
    out = rows[mask[rows]].tolist()
    if not out:
        raise ValueError(
            f"a resample drew none of the {len(kept)} {kind} direction_train prompts the prompt filter kept; "
            "use more direction_train prompts"
        )
    return out


def _at_sites(acts: Activations, sites: Sequence[str]) -> Activations:
    """``acts`` at ``sites`` only (no copy)."""
    return Activations({s: acts.acts[s] for s in sites}, acts.layers, acts.positions, acts.tokens, acts.prompts)


def resampled_candidates(
    inputs: StabilityInputs, harmful_rows: Int[Tensor, " n_harmful"], harmless_rows: Int[Tensor, " n_harmless"]
) -> tuple[Candidates, Candidates, Candidates]:
    """``(raw, unit, plane)`` candidates of the drawn direction_train rows: ``raw`` (every cached
    site) from the drawn rows the prompt filter kept, ``unit`` at :attr:`StabilityInputs.b1_sites`
    (every position) from every drawn row, and ``plane`` = ``unit`` at the plane's sites and
    positions. With ``arange`` rows they are the analysis' own candidates, bit for bit."""
    kept_h, kept_s = inputs.kept or (None, None)
    raw = diff_in_means(
        inputs.harmful.select_prompts(_kept_rows(harmful_rows, kept_h, inputs.harmful.n_prompts, "harmful")),
        inputs.harmless.select_prompts(_kept_rows(harmless_rows, kept_s, inputs.harmless.n_prompts, "harmless")),
        kind="raw",
    )
    sites = inputs.b1_sites
    unit = diff_in_means(
        _at_sites(inputs.harmful, sites).select_prompts(harmful_rows.tolist()),
        _at_sites(inputs.harmless, sites).select_prompts(harmless_rows.tolist()),
        kind="unit",
    )
    plane = unit.subset(sites=list(inputs.plane_sites), positions=list(inputs.plane_positions))
    return raw, unit, plane


@dataclass(frozen=True, eq=False)
class _Sample:
    """One (re)sample's choices: the raw candidates and their selection, b1's key and the plane's basis."""

    raw: Candidates
    selection: Selection
    b1_key: CandidateKey | None
    basis: Float[Tensor, "2 d_model"]


def _sample(inputs: StabilityInputs, harmful_rows: Tensor, harmless_rows: Tensor) -> _Sample:
    """The generation-free analysis of one draw (see the module docs)."""
    raw, unit, plane_cands = resampled_candidates(inputs, harmful_rows, harmless_rows)
    selection = select(raw, candidate_stats(raw, inputs.harmful_val, inputs.harmless_val))
    method = inputs.plane_b1_method
    b1: CandidateKey | Direction
    key: CandidateKey | None
    if method == "arditi":  # Arditi's choice is not rescored: b1 stays at its key
        key = inputs.plane.b1_key
        assert key is not None  # StabilityInputs checks it
        b1 = key if key in plane_cands.keys else unit.direction(key)
    else:
        chosen = select(plane_cands, candidate_stats(plane_cands, inputs.harmful_val, inputs.harmless_val))
        key = chosen.choices[method]
        b1 = chosen.direction(method, plane_cands) if method == "mean_of_candidates" else key
    norm = inputs.plane.report.get("candidate_norm", "raw")
    plane = build_plane(plane_cands, b1, candidate_norm=norm)
    return _Sample(raw, selection, key, plane.basis)


def _cosine(a: Tensor, b: Tensor) -> float:
    """Cosine of two vectors in float64 (NaN when either is zero)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    norms = float(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return float(a @ b) / norms if norms > 0 else float("nan")


def _span_cosine(basis: Float[Tensor, "2 d_model"], other: Float[Tensor, "2 d_model"]) -> float:
    """Cosine of the largest principal angle between two planes (orthonormal bases): 1 for the same
    plane, whatever b1 and b2 within it; 0 when a direction of one is orthogonal to the other."""
    overlap = basis.detach().double().cpu() @ other.detach().double().cpu().T  # [2, 2]
    return float(torch.linalg.svdvals(overlap).min())


def _direction_row(inputs: StabilityInputs, sample: _Sample) -> tuple[str, float]:
    """The chosen direction's key and the cosine of the resampled candidate there to it (for a
    direction that is no candidate, the unit mean of ``mean_of_candidates``: the resampled mean)."""
    d = inputs.direction
    if d.site is None or d.layer is None or d.pos is None:
        return "mean_of_candidates", _cosine(sample.selection.mean_direction, d.vector)
    key = CandidateKey(d.site, d.layer, d.pos)
    return str(key), _cosine(sample.raw.direction(key).vector, d.vector)


def _compare(inputs: StabilityInputs, reference: _Sample, sample: _Sample, resample: int) -> list[dict]:
    """One resample's rows of the stability table (:data:`TABLE_COLUMNS`)."""
    key, cos = _direction_row(inputs, sample)
    rows = [("direction", key, key, cos)]
    for method in GENERATION_FREE_METHODS:
        full = reference.selection.direction(method, reference.raw).vector
        mine = sample.selection.direction(method, sample.raw).vector
        chosen = (sample.selection.choices[method], reference.selection.choices[method])
        rows.append((method, str(chosen[0]), str(chosen[1]), _cosine(mine, full)))
    rows.append(("b1", str(sample.b1_key), str(reference.b1_key), _cosine(sample.basis[0], inputs.plane.b1)))
    rows.append(("b2", "", "", _cosine(sample.basis[1], inputs.plane.b2)))
    rows.append(("span", "", "", _span_cosine(sample.basis, inputs.plane.basis)))
    return [dict(zip(TABLE_COLUMNS, (resample, *row))) for row in rows]


def _check_reference(inputs: StabilityInputs, reference: _Sample) -> None:
    """The full sample, analysed here, must give the plane it is compared with."""
    for axis, name in ((0, "b1"), (1, "b2")):
        cos = _cosine(reference.basis[axis], inputs.plane.basis[axis])
        if not cos > 1 - 1e-4:
            raise ValueError(
                f"the plane given is not the one these activations and settings give (its {name} has cosine "
                f"{cos:.4f} to the rebuilt one); pass the analysis' own plane, plane_sites and plane_b1_method"
            )


def cosine_stats(cosines: Sequence[float] | np.ndarray | pd.Series) -> dict:
    """``{"mean", "min", "ci95": [2.5th, 97.5th percentile]}`` of the cosines (4 decimals)."""
    values = np.asarray(cosines, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no cosines to summarise")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return {
        "mean": round(float(values.mean()), 4),
        "min": round(float(values.min()), 4),
        "ci95": [round(float(lo), 4), round(float(hi), 4)],
    }


def _choices(rows: pd.DataFrame) -> dict:
    """The full-sample key, the share of resamples that chose it and the count of every key chosen."""
    full = str(rows["full_key"].iloc[0])
    counts = Counter(str(k) for k in rows["key"])
    return {
        "chosen": full,
        "chosen_frequency": round(counts.get(full, 0) / len(rows), 4),
        "counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def summarise(table: pd.DataFrame, plane_b1_method: str = "max_sim") -> dict:
    """``{"direction", "methods", "plane"}`` of a stability table (:data:`TABLE_COLUMNS`): the
    cosine statistics (:func:`cosine_stats`) of each quantity (``plane``: ``b1``, ``b2``, ``span``)
    and, per method and for b1, how often each key was chosen (``chosen_frequency``: the share
    choosing the full-sample key)."""
    missing = set(TABLE_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"the stability table lacks columns {sorted(missing)}; build it with direction_stability()")
    by = {name: rows for name, rows in table.groupby("quantity", sort=False)}
    direction = by["direction"]
    methods = {
        m: {**_choices(by[m]), "cosine_to_chosen": cosine_stats(by[m]["cosine"])}
        for m in GENERATION_FREE_METHODS
        if m in by
    }
    plane = {
        "b1": {"method": plane_b1_method, **_choices(by["b1"]), "cosine": cosine_stats(by["b1"]["cosine"])},
        "b2": {"cosine": cosine_stats(by["b2"]["cosine"]), "sign": B2_SIGN},
        "span": {"cosine": cosine_stats(by["span"]["cosine"]), "what": SPAN},
    }
    return {
        "direction": {"key": str(direction["key"].iloc[0]), "cosine": cosine_stats(direction["cosine"])},
        "methods": methods,
        "plane": plane,
    }


@dataclass(frozen=True, eq=False)
class Stability:
    """The JSON-ready ``summary`` (see :func:`direction_stability`) and the per-resample ``table``
    (:data:`TABLE_COLUMNS`: one row per resample and quantity: ``direction``, each generation-free
    method, ``b1``, ``b2``, ``span`` (the plane's principal angle); ``key`` the resample's choice,
    ``full_key`` the full sample's)."""

    summary: dict
    table: pd.DataFrame

    def save(self, csv_path: str | Path, json_path: str | Path) -> Stability:
        """Write the table, then the summary (whose file marks the stage done), atomically."""
        atomic_write_text(csv_path, self.table.to_csv(index=False))
        atomic_write_text(json_path, json.dumps(self.summary, indent=1))
        return self

    @classmethod
    def load(cls, csv_path: str | Path, json_path: str | Path) -> Stability:
        # keys stay strings (b2's is empty), an empty cosine is NaN
        table = pd.read_csv(
            csv_path, keep_default_na=False, na_values={"cosine": [""]}, dtype={"key": str, "full_key": str}
        )
        return cls(json.loads(Path(json_path).read_text()), table)


def _resampled_text(inputs: StabilityInputs) -> str:
    n_h, n_s = inputs.harmful.n_prompts, inputs.harmless.n_prompts
    text = f"direction_train (harmful n={n_h}, harmless n={n_s}), with replacement, n per class"
    if inputs.kept is None:
        return text
    k_h, k_s = (len(rows) for rows in inputs.kept)
    return (
        f"{text}; the raw candidates average the drawn prompts the prompt filter kept ({k_h}/{n_h} harmful, "
        f"{k_s}/{n_s} harmless kept in the full sample), the plane's unit candidates every drawn prompt"
    )


def direction_stability(
    inputs: StabilityInputs, *, n_resamples: int = 20, seed: int = 0, arditi_note: str = ARDITI_NOTE
) -> Stability:
    """Resample direction_train ``n_resamples`` times (:func:`class_resamples` with ``seed``) and
    compare each resample's generation-free analysis with the full sample's.

    ``summary``: ``n_resamples``, ``seed``, ``resampled`` (what was drawn), ``arditi`` (why Arditi's
    scores are not rescored), ``direction`` (``key`` and the ``cosine`` statistics of the resampled
    candidate at the chosen direction's own key to it), ``methods`` (per generation-free method: the
    full-sample ``chosen`` key, ``chosen_frequency``, ``counts`` of every key chosen and
    ``cosine_to_chosen``: the resampled choice's vector to the full-sample choice's) and ``plane``
    (``b1``: as a method, with ``cosine`` to the plane's b1; ``b2``: ``cosine`` to the plane's b2,
    and its ``sign`` convention; ``span``: the cosine of the largest principal angle between the
    resampled plane and the plane). Cosine statistics: :func:`cosine_stats`.
    """
    n_h, n_s = inputs.harmful.n_prompts, inputs.harmless.n_prompts
    draws_h, draws_s = class_resamples(n_h, n_s, n_resamples, seed)
    reference = _sample(inputs, torch.arange(n_h), torch.arange(n_s))
    _check_reference(inputs, reference)
    rows: list[dict] = []
    for r in range(n_resamples):
        rows += _compare(inputs, reference, _sample(inputs, draws_h[r], draws_s[r]), r)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    head = {"n_resamples": n_resamples, "seed": seed, "resampled": _resampled_text(inputs), "arditi": arditi_note}
    return Stability({**head, **summarise(table, inputs.plane_b1_method)}, table)
