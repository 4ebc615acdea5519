"""The steering plane span(b1, b2) of angular steering, and polar coordinates in it.

Convention (fixed here, used everywhere): **0° points along b1 (the refusal side), angles grow
counter-clockwise toward b2 (b2 is at 90°), in [0, 360)**; ``angle = atan2(b2·x, b1·x)`` and
``radius = √((b1·x)² + (b2·x)²)``.

The default plane (``variant="pc1"``) follows the reference: b1 is a chosen unit candidate and b2
is the first principal component of the candidates (as computed, ``candidate_norm="raw"``; or
rescaled to unit length, ``"unit"``), Gram–Schmidt-ed against b1. PC1 captures how the refusal
direction drifts across depth. ``"last_two_pcs"`` reproduces a failed idea (the plane of the last
two principal components of the unit candidates) for comparison, and ``"per_sample"`` fits
the PCA on per-prompt candidates instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from sklearn.decomposition import PCA
from torch import Tensor

from .artifacts import library_versions, load_tensors, save_tensors
from .directions import CandidateKey, Candidates, Direction, _safetensors_path, check_d_model, unit_rows

__all__ = ["Plane", "build_plane", "plane_report", "principal_components", "VARIANTS", "SIGN_RULE"]

VARIANTS = ("pc1", "last_two_pcs", "per_sample")
SIGN_RULE = (
    "b2 is flipped so that the mean b2-coordinate of the unit candidates in the deepest "
    "third of the layers used is >= 0 (late layers sit at positive angles)"
)
_NONZERO_VARIANCE = 1e-10  # a component 'carries variance' above this fraction of the total


@dataclass(frozen=True, eq=False)
class Plane:
    """An orthonormal basis ``[b1; b2]`` (float32) of a steering plane, with how it was built.

    ``pc1_explained_variance`` is the variance fraction of the component that defines the plane
    (for ``last_two_pcs``: the first of the two); ``angle_pc1_b1_deg`` is the angle between that raw
    component (before Gram–Schmidt, unsigned) and b1, folded to [0, 90]. ``report`` holds the
    spectrum (``explained_variance_ratio``, at most 30 entries) and variant-specific details.
    """

    basis: Float[Tensor, "2 d_model"]
    b1_key: CandidateKey | None
    variant: str
    pc1_explained_variance: float
    angle_pc1_b1_deg: float
    sign_rule: str = SIGN_RULE
    model: str | None = None
    prompt_hash: str | None = None
    versions: dict[str, str] | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.basis.ndim != 2 or self.basis.shape[0] != 2:
            raise ValueError(f"Plane.basis must be [2, d_model], got {tuple(self.basis.shape)}")
        object.__setattr__(self, "basis", self.basis.detach().float())

    @property
    def b1(self) -> Float[Tensor, " d_model"]:
        return self.basis[0]

    @property
    def b2(self) -> Float[Tensor, " d_model"]:
        return self.basis[1]

    @property
    def d_model(self) -> int:
        return self.basis.shape[1]

    def __repr__(self) -> str:
        # what the two axes are and how well PC1 is determined, not the 2 × d_model basis
        r = self.report
        used = f"{r['n_candidates_used']} " if "n_candidates_used" in r else ""
        sites = f" at {', '.join(r['candidate_sites'])}" if r.get("candidate_sites") else ""
        rescaled = " (rescaled to unit length)" if r.get("candidate_norm") == "unit" else ""
        of = f"{used}candidates{sites}{rescaled}"
        if self.variant == "last_two_pcs":
            axes = [f"b1, b2=the last two PCs of {of} carrying variance"]
            pc = f"b1's PC explains {self.pc1_explained_variance:.0%}, {self.angle_pc1_b1_deg:.1f}° from the given b1"
        else:
            fitted = "the per-sample candidates" if self.variant == "per_sample" else of
            axes = [f"b1={self.b1_key}", f"b2=PC1 of {fitted} ⟂ b1"]
            pc = f"PC1 explains {self.pc1_explained_variance:.0%}, {self.angle_pc1_b1_deg:.1f}° from b1"
        facts = [self.variant, *axes, pc, f"d_model={self.d_model}"]
        facts += [f"{f}={getattr(self, f)}" for f in ("model", "prompt_hash") if getattr(self, f) is not None]
        return f"Plane({', '.join(facts)})"

    def coords(self, x: Float[Tensor, "... d_model"]) -> tuple[Float[Tensor, ...], Float[Tensor, ...]]:
        """In-plane polar coordinates of ``x``: (angle in degrees in [0, 360), radius in x's units).

        Computed in float64, returned as float32.
        """
        check_d_model("input", x.shape[-1], self.d_model)
        c = x.double() @ self.basis.to(x.device).double().T  # [..., 2] = (b1·x, b2·x)
        angle = torch.rad2deg(torch.atan2(c[..., 1], c[..., 0])) % 360.0
        angle = torch.where(angle >= 360.0, angle - 360.0, angle)  # -tiny % 360 rounds to 360
        return angle.float(), torch.linalg.vector_norm(c, dim=-1).float()

    def basis_max_abs_gram_error(self) -> float:
        """max |B Bᵀ − I| in float64: 0 for an exactly orthonormal basis."""
        b = self.basis.double()
        return float((b @ b.T - torch.eye(2, dtype=b.dtype, device=b.device)).abs().max())

    def candidate_coords(self, cands: Candidates) -> pd.DataFrame:
        """site, layer, pos, angle_deg, radius of every unit candidate (radius ≤ 1; 0 for zero rows)."""
        check_d_model("candidates", cands.d_model, self.d_model)
        angle, radius = self.coords(cands.unit())
        frame = cands.to_frame().drop(columns=["norm"])
        frame["angle_deg"], frame["radius"] = angle.cpu().numpy(), radius.cpu().numpy()
        return frame

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (``.safetensors`` added if missing) and a ``.json`` sidecar."""
        path = _safetensors_path(path)
        key = None if self.b1_key is None else vars(self.b1_key)
        meta = {
            "type": "Plane",
            "d_model": self.d_model,
            "b1_key": key,
            "variant": self.variant,
            "pc1_explained_variance": self.pc1_explained_variance,
            "angle_pc1_b1_deg": self.angle_pc1_b1_deg,
            "sign_rule": self.sign_rule,
            "model": self.model,
            "prompt_hash": self.prompt_hash,
            "versions": self.versions,
            "report": self.report,
            "saved_with": library_versions(),
        }
        save_tensors(path, {"basis": self.basis}, meta)
        return path

    @classmethod
    def load(cls, path: str | Path, *, d_model: int | None = None) -> Plane:
        """Inverse of :meth:`save`; ``d_model`` (the model's) is checked if given."""
        tensors, meta = load_tensors(_safetensors_path(path))
        if meta.get("type") != "Plane":
            raise ValueError(f"{path} holds a {meta.get('type')!r}, not a Plane")
        check_d_model("plane", tensors["basis"].shape[1], d_model)
        key = meta["b1_key"]
        return cls(
            tensors["basis"],
            None if key is None else CandidateKey(**key),
            meta["variant"],
            meta["pc1_explained_variance"],
            meta["angle_pc1_b1_deg"],
            meta["sign_rule"],
            meta["model"],
            meta["prompt_hash"],
            meta["versions"],
            meta["report"],
        )


def principal_components(rows: Float[Tensor, "n d_model"]) -> tuple[Float[Tensor, "k d_model"], Float[Tensor, " k"]]:
    """``sklearn.decomposition.PCA`` (which **centres** the rows) fit in float64 on the CPU.

    Returns the components (unit rows, sklearn's deterministic ``svd_flip`` sign) on ``rows``'
    device and the explained-variance ratios, both float64, ``k = min(n, d_model)``.
    """
    if rows.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 rows, got {rows.shape[0]}")
    pca = PCA(svd_solver="full").fit(rows.detach().double().cpu().numpy())
    ratio = np.nan_to_num(pca.explained_variance_ratio_)  # all-equal rows → 0/0
    return (torch.from_numpy(pca.components_).to(rows.device), torch.from_numpy(ratio).to(rows.device))


def _resolve_b1(cands: Candidates, b1: Direction | Tensor | CandidateKey) -> tuple[Tensor, CandidateKey | None]:
    if isinstance(b1, CandidateKey):
        return cands.vectors[cands.index(b1.site, b1.layer, b1.pos)], b1
    if isinstance(b1, Direction):
        key = None if None in (b1.site, b1.layer, b1.pos) else CandidateKey(*b1.where())
        return b1.vector, key
    if isinstance(b1, Tensor) and b1.ndim == 1:
        return b1, None
    raise ValueError(f"b1 must be a Direction, a [d_model] tensor or a CandidateKey, got {type(b1).__name__}")


def _angle_deg(a: Tensor, b: Tensor) -> float:
    """Unsigned angle between two unit vectors, folded to [0, 90] degrees."""
    return math.degrees(math.acos(min(1.0, abs(float(a.double() @ b.double())))))


def _gram_schmidt(v: Tensor, b1: Tensor) -> Tensor:
    """Unit part of ``v`` orthogonal to unit ``b1`` (float64)."""
    v = v - (v @ b1) * b1
    return v / torch.linalg.vector_norm(v)


def build_plane(
    cands: Candidates,
    b1: Direction | Float[Tensor, " d_model"] | CandidateKey,
    *,
    variant: str = "pc1",
    layer_range: tuple[int, int] | None = None,
    per_sample: Float[Tensor, "n d_model"] | None = None,
    tol_deg: float = 1.0,
    model: str | None = None,
    candidate_norm: str = "raw",
) -> Plane:
    """Build the steering plane from candidates and a chosen first axis.

    ``pc1``: b1 = unit ``b1`` (bit-identical to ``cands.unit()`` for a CandidateKey); b2 = PC1 of
    the candidates (sklearn centres them; zero-norm candidates are excluded), Gram–Schmidt-ed
    against b1. ``candidate_norm="raw"`` (angular steering as published) fits the PCA on the
    candidate vectors as they are; ``"unit"`` rescales each to unit length first (then every depth
    weighs the same, however long its mean difference). ``per_sample``: the same, but PCA on the
    ``per_sample`` rows (harmful sample − harmless mean, as given). ``last_two_pcs``: b1, b2 = the
    last two components of the unit candidates that carry variance (> 1e-10 of the total), b1
    signed toward the given ``b1``.
    ``layer_range=(lo, hi)`` keeps candidates with lo ≤ layer ≤ hi. The sign of b2 follows
    :data:`SIGN_RULE`, evaluated on the candidates used (for ``per_sample``: the candidates in range).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown plane variant {variant!r}; choose one of {VARIANTS}")
    if candidate_norm not in ("raw", "unit"):
        raise ValueError(f"candidate_norm must be 'raw' (the study) or 'unit', got {candidate_norm!r}")
    b1_unit, b1_key = _unit_b1(cands, b1)
    use, used, used_layers = _used_candidates(cands, layer_range)
    fit_rows = _pca_rows(cands, variant, per_sample, use, used, candidate_norm)
    components, ratio = principal_components(fit_rows)
    if float(ratio.sum()) == 0:
        raise ValueError(
            "the rows fed to PCA are all identical (zero variance); no plane can be "
            "fitted: widen layer_range or add sites/positions"
        )
    components = components.to(b1_unit.device)
    report = _base_report(cands, ratio, fit_rows, use, layer_range, candidate_norm)
    b1_64 = b1_unit.double()
    if variant == "last_two_pcs":
        b1_out, axis2, angle, explained, pair = _last_two_pcs_axes(components, ratio, b1_64, b1_key)
        report |= pair
        b1_key = None  # b1 is a principal component here, not a candidate
    else:
        b1_out, axis2, angle, explained = _pc1_axes(components, ratio, b1_unit, b1_64, tol_deg)
    axis2 = _apply_sign_rule(axis2, used, used_layers)
    basis = torch.stack([b1_out.float(), axis2.float()])
    return Plane(
        basis, b1_key, variant, explained, angle, SIGN_RULE, model, cands.prompt_hash, library_versions(), report
    )


def _unit_b1(
    cands: Candidates, b1: Direction | Tensor | CandidateKey
) -> tuple[Float[Tensor, " d_model"], CandidateKey | None]:
    """``b1`` as a unit vector on the candidates' device, and its key where it names a candidate;
    raises on another width or a zero vector."""
    vector, b1_key = _resolve_b1(cands, b1)
    check_d_model("b1", vector.shape[0], cands.d_model)
    if torch.linalg.vector_norm(vector.double()) == 0:
        raise ValueError("zero-norm b1 cannot define a plane; choose a candidate with non-zero norm")
    return unit_rows(vector).to(cands.vectors.device), b1_key


def _used_candidates(
    cands: Candidates, layer_range: tuple[int, int] | None
) -> tuple[Tensor, Float[Tensor, "m d_model"], Tensor]:
    """The non-zero candidates with lo ≤ layer ≤ hi: their mask ``[cand]`` (bool, CPU), unit rows
    ``[m, d_model]`` (float32) and layers ``[m]``; raises when fewer than 2 remain."""
    layers = torch.tensor([k.layer for k in cands.keys])
    use = cands.norms().cpu() > 0
    if layer_range is not None:
        lo, hi = layer_range
        use &= (layers >= lo) & (layers <= hi)
    if int(use.sum()) < 2:
        raise ValueError(
            f"only {int(use.sum())} non-zero candidate(s) with layer in {layer_range}; "
            f"a plane needs at least 2: widen layer_range or add sites/positions"
        )
    return use, cands.unit()[use], layers[use]


def _pca_rows(
    cands: Candidates,
    variant: str,
    per_sample: Tensor | None,
    use: Tensor,
    used: Float[Tensor, "m d_model"],
    candidate_norm: str,
) -> Float[Tensor, "n d_model"]:
    """The rows PCA is fitted on: the non-zero ``per_sample`` rows (``per_sample``), else the used
    candidates, unit (``candidate_norm="unit"``) or as computed (``"raw"``)."""
    if variant == "per_sample":
        if per_sample is None or per_sample.ndim != 2 or per_sample.shape[0] < 2:
            raise ValueError(
                "variant='per_sample' needs per_sample=[n ≥ 2, d_model] rows; build them with per_sample_candidates()"
            )
        check_d_model("per_sample", per_sample.shape[1], cands.d_model)
        return per_sample[torch.linalg.vector_norm(per_sample.double(), dim=1) > 0]
    return used if candidate_norm == "unit" else cands.vectors[use.to(cands.vectors.device)]


def _base_report(
    cands: Candidates,
    ratio: Tensor,
    fit_rows: Tensor,
    use: Tensor,
    layer_range: tuple[int, int] | None,
    candidate_norm: str,
) -> dict[str, Any]:
    """The report entries every variant shares: spectrum (≤ 30 ratios), row counts, the inputs."""
    return {
        "explained_variance_ratio": ratio[:30].tolist(),
        "n_rows_pca": int(fit_rows.shape[0]),
        "n_candidates_used": int(use.sum()),
        "layer_range": list(layer_range) if layer_range else None,
        "candidate_norm": candidate_norm,
        "candidate_sites": list(dict.fromkeys(k.site for k in cands.keys)),
        "candidate_positions": sorted({k.pos for k in cands.keys}),
    }


def _last_two_pcs_axes(
    components: Float[Tensor, "k d_model"], ratio: Tensor, b1_64: Tensor, b1_key: CandidateKey | None
) -> tuple[Float[Tensor, " d_model"], Float[Tensor, " d_model"], float, float, dict[str, Any]]:
    """``last_two_pcs``: b1 = the second-to-last component carrying variance, signed toward the
    reference ``b1_64`` (float32); b2 = the last one, Gram–Schmidt-ed (float64, sign rule not yet
    applied); the angle of b1's component to the reference, its variance ratio, the report entries."""
    nonzero = int((ratio > _NONZERO_VARIANCE).sum())  # ratio is sorted descending
    if nonzero < 2:
        raise ValueError(
            f"only {nonzero} principal component(s) carry variance; last_two_pcs needs 2: use more candidates"
        )
    first, second = components[nonzero - 2], components[nonzero - 1]
    pair = {
        "components": [nonzero - 2, nonzero - 1],
        "variance_ratio_of_pair": [float(ratio[nonzero - 2]), float(ratio[nonzero - 1])],
        "reference_b1_key": None if b1_key is None else str(b1_key),
        "reference_b1_in_plane_norm": float(torch.linalg.vector_norm(torch.stack([first, second]) @ b1_64)),
    }
    angle = _angle_deg(first, b1_64)
    explained = float(ratio[nonzero - 2])
    axis1 = first if float(first @ b1_64) >= 0 else -first  # keep 0° on the refusal side
    axis2 = _gram_schmidt(second, axis1)
    return axis1.float(), axis2, angle, explained, pair


def _pc1_axes(
    components: Float[Tensor, "k d_model"], ratio: Tensor, b1_unit: Tensor, b1_64: Tensor, tol_deg: float
) -> tuple[Float[Tensor, " d_model"], Float[Tensor, " d_model"], float, float]:
    """``pc1`` / ``per_sample``: b1 = exactly the unit candidate; b2 = PC1 Gram–Schmidt-ed against it
    (float64, sign rule not yet applied); PC1's angle to b1 (raises below ``tol_deg``), its ratio."""
    angle = _angle_deg(components[0], b1_64)
    if angle < tol_deg:
        raise ValueError(
            f"degenerate plane: PC1 is parallel to b1 (angle {angle:.3g}° < tol "
            f"{tol_deg}°); choose another b1, widen layer_range, or use variant='per_sample'"
        )
    explained = float(ratio[0])
    axis2 = _gram_schmidt(components[0], b1_64)
    return b1_unit, axis2, angle, explained


def _apply_sign_rule(
    b2: Float[Tensor, " d_model"], unit_cands: Float[Tensor, "m d_model"], layers: Tensor
) -> Float[Tensor, " d_model"]:
    """Flip ``b2`` per :data:`SIGN_RULE`; ties (mean exactly 0) → first non-zero entry positive.

    The deepest third = candidates at the top ⌈n/3⌉ of the n distinct layers used, so the rule
    does not depend on the order of the candidates.
    """
    distinct = torch.unique(layers)  # sorted ascending
    deep = torch.isin(layers, distinct[-math.ceil(len(distinct) / 3) :])
    mean_coord = float((unit_cands[deep.to(unit_cands.device)].double() @ b2).mean())
    if mean_coord < 0 or (mean_coord == 0 and float(b2[torch.nonzero(b2)[0, 0]]) < 0):
        return -b2
    return b2


def plane_report(plane: Plane) -> dict[str, Any]:
    """The numbers a user should see before trusting a plane."""
    return {
        "variant": plane.variant,
        "b1": str(plane.b1_key) if plane.b1_key else None,
        "pc1_explained_variance": plane.pc1_explained_variance,
        "angle_pc1_b1_deg": plane.angle_pc1_b1_deg,
        "basis_max_abs_gram_error": plane.basis_max_abs_gram_error(),
        "sign_rule": plane.sign_rule,
        **{
            k: v
            for k, v in plane.report.items()
            if k in ("n_candidates_used", "layer_range", "candidate_norm", "candidate_sites", "candidate_positions")
        },
    }
