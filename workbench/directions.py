"""Candidate refusal directions (one per site, layer and position) and the :class:`Direction` value.

A *candidate* is a difference of class means at one (site, layer, pos): Arditi et al.'s raw
``μ_harmful − μ_harmless`` (``kind="raw"``), or angular steering's difference of renormalised
means of per-sample unit vectors (``kind="unit"``). Scoring and choosing among them is
:mod:`workbench.selection`. A chosen vector is a :class:`Direction`, an immutable vector with
provenance (in the style of repeng's ControlVector).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import einops
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from .activations import Activations, int_span
from .artifacts import library_versions, load_tensors, save_tensors, sha256_text
from .sites import SITES

__all__ = [
    "CandidateKey",
    "Candidates",
    "Direction",
    "diff_in_means",
    "per_sample_candidates",
    "projection_table",
    "cosine_matrix",
    "unit_rows",
    "check_d_model",
]


def unit_rows(x: Float[Tensor, "... d_model"], dtype: torch.dtype = torch.float32) -> Float[Tensor, "... d_model"]:
    """Normalise the last axis in float64 and return ``dtype``; zero rows stay zero (no NaN)."""
    x64 = x.double()
    norm = torch.linalg.vector_norm(x64, dim=-1, keepdim=True)
    return (x64 / torch.where(norm > 0, norm, torch.ones_like(norm))).to(dtype)


def check_d_model(what: str, have: int, want: int | None) -> None:
    """ValueError naming both sizes when ``want`` is given and differs from ``have``."""
    if want is not None and have != want:
        raise ValueError(
            f"{what} has d_model={have} but the model has d_model={want}: it was computed on another model"
        )


@dataclass(frozen=True, eq=False)
class Direction:
    """An immutable float32 direction in the residual basis, with optional provenance.

    Arithmetic returns new Directions (``d * 2.0``, ``2.0 * d``, ``-d``, ``d + e``, ``d - e``).
    Scaling and negation keep the provenance; a sum keeps only the fields both operands share.
    ``vector`` keeps its units (raw candidates are in activation units; use ``normalized()``).
    """

    vector: Float[Tensor, " d_model"]
    site: str | None = None
    layer: int | None = None
    pos: int | None = None
    method: str | None = None
    model: str | None = None
    prompt_hash: str | None = None
    seed: int | None = None
    versions: dict[str, str] | None = None

    _PROVENANCE = ("site", "layer", "pos", "method", "model", "prompt_hash", "seed", "versions")

    def __post_init__(self) -> None:
        if not isinstance(self.vector, Tensor) or self.vector.ndim != 1:
            raise ValueError(
                f"Direction.vector must be a 1-D tensor [d_model], got "
                f"{getattr(self.vector, 'shape', type(self.vector))}"
            )
        if not torch.isfinite(self.vector).all():
            raise ValueError("Direction.vector contains NaN/inf")
        object.__setattr__(self, "vector", self.vector.detach().float())

    @property
    def d_model(self) -> int:
        return self.vector.shape[0]

    def __repr__(self) -> str:
        # what it is and where it came from, not the d_model numbers of its vector
        parts = (("", self.site), ("L", self.layer), ("pos ", self.pos))
        where = " ".join(f"{p}{v}" for p, v in parts if v is not None) or "not from a candidate"
        facts = [where, f"norm={self.norm:.4g}", f"d_model={self.d_model}"]
        facts += [
            f"{f}={getattr(self, f)}"
            for f in ("method", "model", "prompt_hash", "seed")
            if getattr(self, f) is not None
        ]
        return f"Direction({', '.join(facts)})"

    def where(self) -> tuple[str, int, int]:
        """``(site, layer, pos)`` of the candidate this direction was taken from."""
        if self.site is None or self.layer is None or self.pos is None:
            raise ValueError(
                "this direction has no site/layer/position (it was not taken from a candidate); "
                "pass one from Analysis.direction() or Selection.direction()"
            )
        return self.site, self.layer, self.pos

    @property
    def norm(self) -> float:
        return float(torch.linalg.vector_norm(self.vector.double()))

    @property
    def unit(self) -> Float[Tensor, " d_model"]:
        return self.normalized().vector

    def normalized(self) -> Direction:
        if self.norm == 0:
            raise ValueError(
                "zero-norm direction (e.g. a layer-0 template-position candidate) "
                "cannot be normalised; choose another candidate"
            )
        return replace(self, vector=unit_rows(self.vector))

    def _other(self, other: Direction) -> Direction:
        if other.d_model != self.d_model:
            raise ValueError(
                f"cannot combine directions with d_model={self.d_model} and "
                f"d_model={other.d_model}: they come from different models"
            )
        return other

    def _combine(self, other: Direction, vector: Tensor) -> Direction:
        shared = {f: getattr(self, f) for f in self._PROVENANCE if getattr(self, f) == getattr(other, f)}
        return Direction(vector, **shared)

    def __mul__(self, scale: float) -> Direction:
        if not isinstance(scale, numbers.Real):
            return NotImplemented
        return replace(self, vector=self.vector * scale)

    __rmul__ = __mul__

    def __truediv__(self, scale: float) -> Direction:
        if not isinstance(scale, numbers.Real):
            return NotImplemented
        return replace(self, vector=self.vector / scale)

    def __neg__(self) -> Direction:
        return replace(self, vector=-self.vector)

    def __add__(self, other: Direction) -> Direction:
        if not isinstance(other, Direction):
            return NotImplemented
        return self._combine(other, self.vector + self._other(other).vector)

    def __sub__(self, other: Direction) -> Direction:
        if not isinstance(other, Direction):
            return NotImplemented
        return self._combine(other, self.vector - self._other(other).vector)

    def cosine(self, other: Direction) -> float:
        """Cosine similarity; ValueError if either has zero norm."""
        return float(self.normalized().vector.double() @ self._other(other).normalized().vector.double())

    def metadata(self) -> dict[str, Any]:
        return {
            "type": "Direction",
            "d_model": self.d_model,
            "norm": self.norm,
            **{f: getattr(self, f) for f in self._PROVENANCE},
            "saved_with": library_versions(),
        }

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (``.safetensors`` added if missing) and its ``.json`` provenance sidecar."""
        path = _safetensors_path(path)
        save_tensors(path, {"vector": self.vector}, self.metadata())
        return path

    @classmethod
    def load(cls, path: str | Path, *, d_model: int | None = None) -> Direction:
        """Inverse of :meth:`save`; ``d_model`` (the model's) is checked if given."""
        tensors, meta = load_tensors(_safetensors_path(path))
        if meta.get("type") != "Direction":
            raise ValueError(f"{path} holds a {meta.get('type')!r}, not a Direction")
        check_d_model("direction", tensors["vector"].shape[0], d_model)
        return cls(tensors["vector"], **{f: meta.get(f) for f in cls._PROVENANCE})


def _safetensors_path(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")


@dataclass(frozen=True)
class CandidateKey:
    """Where a candidate was read: ``site`` at block ``layer``, ``pos`` tokens from the end (< 0)."""

    site: str
    layer: int
    pos: int

    def __str__(self) -> str:
        return f"{self.site}/L{self.layer}/pos{self.pos}"


@dataclass(frozen=True, eq=False)
class Candidates:
    """``vectors[i]`` (float32, activation units) is the candidate read at ``keys[i]``.

    ``kind`` is ``"raw"`` (Arditi μ_harm − μ_harmless) or ``"unit"`` (difference of unit means);
    ``prompt_hash`` identifies the training prompts.
    """

    vectors: Float[Tensor, "cand d_model"]
    keys: list[CandidateKey]
    kind: str
    prompt_hash: str

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.keys):
            raise ValueError(
                f"vectors must be [cand, d_model] with one row per key; got shape "
                f"{tuple(self.vectors.shape)} for {len(self.keys)} keys"
            )
        if not self.keys:
            raise ValueError("empty candidate set; cache at least one site/layer/position")
        if self.kind not in ("raw", "unit"):
            raise ValueError(f"kind must be 'raw' or 'unit', got {self.kind!r}")
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("duplicate candidate keys; each (site, layer, pos) must appear once")
        object.__setattr__(self, "vectors", self.vectors.detach().float())

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return (
            f"Candidates({len(self)} {self.kind}, sites {list(dict.fromkeys(k.site for k in self.keys))}, "
            f"layers {int_span([k.layer for k in self.keys])}, positions {sorted({k.pos for k in self.keys})}, "
            f"d_model={self.d_model}, prompt_hash={self.prompt_hash})"
        )

    @property
    def d_model(self) -> int:
        return self.vectors.shape[1]

    def index(self, site: str, layer: int, pos: int) -> int:
        """Row of the candidate at (site, layer, pos); KeyError listing what exists."""
        try:
            return self.keys.index(CandidateKey(site, layer, pos))
        except ValueError:
            sites = sorted({k.site for k in self.keys})
            layers = sorted({k.layer for k in self.keys})
            positions = sorted({k.pos for k in self.keys})
            raise KeyError(
                f"no candidate at {site}/L{layer}/pos{pos}; sites {sites}, layers {layers}, positions {positions}"
            ) from None

    def subset(
        self, sites: list[str] | None = None, layers: list[int] | None = None, positions: list[int] | None = None
    ) -> Candidates:
        """The candidates whose site, layer and pos are in the given lists (``None`` = any)."""
        rows = [
            i
            for i, k in enumerate(self.keys)
            if (sites is None or k.site in sites)
            and (layers is None or k.layer in layers)
            and (positions is None or k.pos in positions)
        ]
        if not rows:
            raise ValueError(
                f"subset(sites={sites}, layers={layers}, positions={positions}) is "
                f"empty; widen the filters (see to_frame() for what exists)"
            )
        return Candidates(self.vectors[rows], [self.keys[i] for i in rows], self.kind, self.prompt_hash)

    def norms(self) -> Float[Tensor, " cand"]:
        return torch.linalg.vector_norm(self.vectors.double(), dim=1).float()

    def unit(self) -> Float[Tensor, "cand d_model"]:
        """Row-normalised candidates (float32); zero rows stay zero."""
        return unit_rows(self.vectors)

    def to_frame(self) -> pd.DataFrame:
        """One row per candidate: site, layer, pos, norm (L2, activation units)."""
        return pd.DataFrame(
            {
                "site": [k.site for k in self.keys],
                "layer": [k.layer for k in self.keys],
                "pos": [k.pos for k in self.keys],
                "norm": self.norms().cpu().numpy(),
            }
        )

    def direction(
        self, i_or_key: int | CandidateKey, *, method: str | None = None, model: str | None = None
    ) -> Direction:
        """Candidate ``i_or_key`` (row index or key) as a :class:`Direction`, vector unchanged."""
        i = (
            self.index(i_or_key.site, i_or_key.layer, i_or_key.pos)
            if isinstance(i_or_key, CandidateKey)
            else int(i_or_key)
        )
        k = self.keys[i]
        return Direction(
            self.vectors[i],
            site=k.site,
            layer=k.layer,
            pos=k.pos,
            method=method or f"candidate:{self.kind}",
            model=model,
            prompt_hash=self.prompt_hash,
            versions=library_versions(),
        )


def _check_pair(a: Activations, b: Activations, what: str) -> None:
    """Both caches must be non-empty and share sites, layers, positions and d_model."""
    for acts, name in ((a, "first"), (b, "second")):
        if not acts.acts or acts.n_prompts == 0 or any(t.shape[1] == 0 for t in acts.acts.values()):
            raise ValueError(f"{what}: the {name} Activations are empty; cache at least one prompt")
    if (
        set(a.sites) != set(b.sites)
        or sorted(a.layers) != sorted(b.layers)
        or sorted(a.positions) != sorted(b.positions)
    ):
        raise ValueError(
            f"{what}: the two caches differ (sites {a.sites} vs {b.sites}, layers "
            f"{a.layers} vs {b.layers}, positions {a.positions} vs {b.positions}); "
            f"cache both classes with the same sites/layers/positions"
        )
    if a.d_model != b.d_model:
        raise ValueError(f"{what}: d_model {a.d_model} vs {b.d_model}: the caches come from different models")


def _class_mean(
    acts: Activations, site: str, layers: list[int], positions: list[int], unit: bool
) -> Float[Tensor, "layer pos d_model"]:
    """Mean over prompts in float64, axes ordered as ``layers``/``positions``; ``unit`` normalises
    each sample first and the mean after (zero vectors stay zero). Loops over layers to bound memory."""
    pos_idx = [acts.positions.index(p) for p in positions]
    means = []
    for layer in layers:
        x = acts.acts[site][acts.layers.index(layer)][:, pos_idx].double()  # [prompt, pos, d]
        means.append(unit_rows(x, dtype=torch.float64).mean(0) if unit else x.mean(0))
    mean = torch.stack(means)
    return unit_rows(mean, dtype=torch.float64) if unit else mean


def _prompt_hash(harmful: Activations, harmless: Activations) -> str:
    return sha256_text("\n".join(harmful.prompts) + "\n\x00\n" + "\n".join(harmless.prompts))


def diff_in_means(harmful: Activations, harmless: Activations, *, kind: str = "raw") -> Candidates:
    """One candidate per cached (site, layer, pos), site-major (canonical site order), then layer
    (ascending), then pos (ascending, e.g. -5 … -1).

    ``kind="raw"``: μ_harmful − μ_harmless (Arditi et al.), float64 means.
    ``kind="unit"``: normalise every sample, average, renormalise each mean, subtract
    (angular steering); entries are then at most 2 in norm and unitless.
    """
    if kind not in ("raw", "unit"):
        raise ValueError(f"kind must be 'raw' (Arditi) or 'unit' (angular steering), got {kind!r}")
    _check_pair(harmful, harmless, "diff_in_means")
    sites = [s for s in SITES if s in harmful.acts] + [s for s in harmful.sites if s not in SITES]
    layers, positions = sorted(harmful.layers), sorted(harmful.positions)
    blocks, keys = [], []
    for site in sites:
        diff = _class_mean(harmful, site, layers, positions, kind == "unit") - _class_mean(
            harmless, site, layers, positions, kind == "unit"
        )
        blocks.append(einops.rearrange(diff, "layer pos d -> (layer pos) d"))
        keys += [CandidateKey(site, layer, pos) for layer in layers for pos in positions]
    vectors = torch.cat(blocks).float()
    if not torch.isfinite(vectors).all():
        raise ValueError("diff_in_means produced NaN/inf; check the cached activations for overflow")
    return Candidates(vectors, keys, kind, _prompt_hash(harmful, harmless))


def per_sample_candidates(
    harmful: Activations, harmless: Activations, site: str, layer: int, pos: int
) -> Float[Tensor, "prompt d_model"]:
    """Each harmful sample minus the harmless mean at (site, layer, pos), float32 (for planes)."""
    _check_pair(harmful, harmless, "per_sample_candidates")
    x = harmful.get(site, layer, pos).double()
    return (x - harmless.get(site, layer, pos).double().mean(0)).float()


def projection_table(acts: dict[str, Activations], direction: Direction) -> pd.DataFrame:
    """Every prompt's projection on ``direction``'s unit vector at its site and position, per layer.

    ``acts`` maps a label (``"harmful"``, ``"harmless"``) to its activations. Columns: ``layer``,
    ``label``, ``projection`` (activation units), ``prompt``; one row per label × layer × prompt.
    """
    rows = []
    unit = direction.unit
    site, _, pos = direction.where()
    for label, a in acts.items():
        for layer in a.layers:
            proj = (a.get(site, layer, pos).float().cpu() @ unit).tolist()
            rows += [{"layer": layer, "label": label, "projection": p, "prompt": q} for p, q in zip(proj, a.prompts)]
    return pd.DataFrame(rows)


def cosine_matrix(cands: Candidates) -> Float[Tensor, "cand cand"]:
    """Pairwise cosine similarity; a zero-norm candidate has cosine 0 with everything (itself too)."""
    unit = cands.unit()
    return unit @ unit.T
