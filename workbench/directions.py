"""Candidate refusal directions (one per site, layer and position), their statistics, and selection.

A *candidate* is a difference of class means at one (site, layer, pos): Arditi et al.'s raw
``μ_harmful − μ_harmless`` (``kind="raw"``), or angular steering's difference of renormalised
means of per-sample unit vectors (``kind="unit"``). :func:`candidate_stats` scores every candidate
on held-out prompts without running the model; :func:`select` turns the scores (and optionally
Arditi's model-based bypass/induce/KL table) into choices. The chosen vector is a
:class:`Direction`, an immutable vector with provenance (in the style of repeng's ControlVector).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import einops
import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from .activations import Activations
from .artifacts import library_versions, load_tensors, save_tensors, sha256_text
from .sites import SITES

__all__ = ["CandidateKey", "Candidates", "Direction", "Selection", "diff_in_means",
           "per_sample_candidates", "candidate_stats", "cosine_matrix", "select", "METHODS",
           "unit_rows", "check_d_model"]

METHODS = ("max_sim", "max_norm", "max_auc", "mean_of_candidates", "arditi")
_ARDITI_COLUMNS = ("bypass", "induce", "kl")
KL_FALLBACK = 0.25  # organism.md §6: KL ≤ 0.1 rejects every candidate on small organisms


def unit_rows(x: Float[Tensor, "... d_model"],
              dtype: torch.dtype = torch.float32) -> Float[Tensor, "... d_model"]:
    """Normalise the last axis in float64 and return ``dtype``; zero rows stay zero (no NaN)."""
    x64 = x.double()
    norm = torch.linalg.vector_norm(x64, dim=-1, keepdim=True)
    return (x64 / torch.where(norm > 0, norm, torch.ones_like(norm))).to(dtype)


def check_d_model(what: str, have: int, want: int | None) -> None:
    """ValueError naming both sizes when ``want`` is given and differs from ``have``."""
    if want is not None and have != want:
        raise ValueError(f"{what} has d_model={have} but the model has d_model={want}: "
                         f"it was computed on another model")


@dataclass(frozen=True, eq=False)
class Direction:
    """An immutable float32 direction in the residual basis, with optional provenance.

    Arithmetic returns new Directions (``d * 2.0``, ``2.0 * d``, ``-d``, ``d + e``, ``d - e``).
    Scaling and negation keep the provenance; a sum keeps only the fields both operands share.
    ``vector`` keeps its units (raw candidates are in activation units; use ``normalized()``).
    """

    vector: Float[Tensor, "d_model"]
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
            raise ValueError(f"Direction.vector must be a 1-D tensor [d_model], got "
                             f"{getattr(self.vector, 'shape', type(self.vector))}")
        if not torch.isfinite(self.vector).all():
            raise ValueError("Direction.vector contains NaN/inf")
        object.__setattr__(self, "vector", self.vector.detach().float())

    @property
    def d_model(self) -> int:
        return self.vector.shape[0]

    @property
    def norm(self) -> float:
        return float(torch.linalg.vector_norm(self.vector.double()))

    @property
    def unit(self) -> Float[Tensor, "d_model"]:
        return self.normalized().vector

    def normalized(self) -> Direction:
        if self.norm == 0:
            raise ValueError("zero-norm direction (e.g. a layer-0 template-position candidate) "
                             "cannot be normalised; choose another candidate")
        return replace(self, vector=unit_rows(self.vector))

    def _other(self, other: Direction) -> Direction:
        if other.d_model != self.d_model:
            raise ValueError(f"cannot combine directions with d_model={self.d_model} and "
                             f"d_model={other.d_model}: they come from different models")
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
        return {"type": "Direction", "d_model": self.d_model, "norm": self.norm,
                **{f: getattr(self, f) for f in self._PROVENANCE}, "saved_with": library_versions()}

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
            raise ValueError(f"vectors must be [cand, d_model] with one row per key; got shape "
                             f"{tuple(self.vectors.shape)} for {len(self.keys)} keys")
        if not self.keys:
            raise ValueError("empty candidate set; cache at least one site/layer/position")
        if self.kind not in ("raw", "unit"):
            raise ValueError(f"kind must be 'raw' or 'unit', got {self.kind!r}")
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("duplicate candidate keys; each (site, layer, pos) must appear once")
        object.__setattr__(self, "vectors", self.vectors.detach().float())

    def __len__(self) -> int:
        return len(self.keys)

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
            raise KeyError(f"no candidate at {site}/L{layer}/pos{pos}; sites {sites}, "
                           f"layers {layers}, positions {positions}") from None

    def subset(self, sites: list[str] | None = None, layers: list[int] | None = None,
               positions: list[int] | None = None) -> Candidates:
        """The candidates whose site, layer and pos are in the given lists (``None`` = any)."""
        rows = [i for i, k in enumerate(self.keys)
                if (sites is None or k.site in sites) and (layers is None or k.layer in layers)
                and (positions is None or k.pos in positions)]
        if not rows:
            raise ValueError(f"subset(sites={sites}, layers={layers}, positions={positions}) is "
                             f"empty; widen the filters (see to_frame() for what exists)")
        return Candidates(self.vectors[rows], [self.keys[i] for i in rows], self.kind, self.prompt_hash)

    def norms(self) -> Float[Tensor, "cand"]:
        return torch.linalg.vector_norm(self.vectors.double(), dim=1).float()

    def unit(self) -> Float[Tensor, "cand d_model"]:
        """Row-normalised candidates (float32); zero rows stay zero."""
        return unit_rows(self.vectors)

    def to_frame(self) -> pd.DataFrame:
        """One row per candidate: site, layer, pos, norm (L2, activation units)."""
        return pd.DataFrame({"site": [k.site for k in self.keys], "layer": [k.layer for k in self.keys],
                             "pos": [k.pos for k in self.keys], "norm": self.norms().cpu().numpy()})

    def direction(self, i_or_key: int | CandidateKey, *, method: str | None = None,
                  model: str | None = None) -> Direction:
        """Candidate ``i_or_key`` (row index or key) as a :class:`Direction`, vector unchanged."""
        i = self.index(i_or_key.site, i_or_key.layer, i_or_key.pos) \
            if isinstance(i_or_key, CandidateKey) else int(i_or_key)
        k = self.keys[i]
        return Direction(self.vectors[i], site=k.site, layer=k.layer, pos=k.pos,
                         method=method or f"candidate:{self.kind}", model=model,
                         prompt_hash=self.prompt_hash, versions=library_versions())


def _check_pair(a: Activations, b: Activations, what: str) -> None:
    """Both caches must be non-empty and share sites, layers, positions and d_model."""
    for acts, name in ((a, "first"), (b, "second")):
        if not acts.acts or acts.n_prompts == 0 or any(t.shape[1] == 0 for t in acts.acts.values()):
            raise ValueError(f"{what}: the {name} Activations are empty; cache at least one prompt")
    if set(a.sites) != set(b.sites) or sorted(a.layers) != sorted(b.layers) \
            or sorted(a.positions) != sorted(b.positions):
        raise ValueError(f"{what}: the two caches differ (sites {a.sites} vs {b.sites}, layers "
                         f"{a.layers} vs {b.layers}, positions {a.positions} vs {b.positions}); "
                         f"cache both classes with the same sites/layers/positions")
    if a.d_model != b.d_model:
        raise ValueError(f"{what}: d_model {a.d_model} vs {b.d_model}: the caches come from different models")


def _class_mean(acts: Activations, site: str, layers: list[int], positions: list[int],
                unit: bool) -> Float[Tensor, "layer pos d_model"]:
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
        diff = (_class_mean(harmful, site, layers, positions, kind == "unit")
                - _class_mean(harmless, site, layers, positions, kind == "unit"))
        blocks.append(einops.rearrange(diff, "layer pos d -> (layer pos) d"))
        keys += [CandidateKey(site, layer, pos) for layer in layers for pos in positions]
    vectors = torch.cat(blocks).float()
    if not torch.isfinite(vectors).all():
        raise ValueError("diff_in_means produced NaN/inf; check the cached activations for overflow")
    return Candidates(vectors, keys, kind, _prompt_hash(harmful, harmless))


def per_sample_candidates(harmful: Activations, harmless: Activations, site: str, layer: int,
                          pos: int) -> Float[Tensor, "prompt d_model"]:
    """Each harmful sample minus the harmless mean at (site, layer, pos), float32 (for planes)."""
    _check_pair(harmful, harmless, "per_sample_candidates")
    x = harmful.get(site, layer, pos).double()
    return (x - harmless.get(site, layer, pos).double().mean(0)).float()


def cosine_matrix(cands: Candidates) -> Float[Tensor, "cand cand"]:
    """Pairwise cosine similarity; a zero-norm candidate has cosine 0 with everything (itself too)."""
    unit = cands.unit()
    return unit @ unit.T


def _auc(pos: Float[Tensor, "cand n1"], neg: Float[Tensor, "cand n0"]) -> Float[Tensor, "cand"]:
    """Row-wise ROC AUC as the Mann–Whitney statistic P(pos > neg) + ½·P(pos = neg).

    Identical to ``sklearn.metrics.roc_auc_score`` (tested) but vectorised: 450 sklearn calls take
    ~0.6 s. Chunked so the [chunk, n1, n0] comparison stays ≤ 2**24 elements.
    """
    chunk = max(1, (1 << 24) // (pos.shape[1] * neg.shape[1]))
    out = []
    for s in range(0, pos.shape[0], chunk):
        p, n = pos[s:s + chunk, :, None], neg[s:s + chunk, None, :]
        out.append((p > n).double().mean((1, 2)) + 0.5 * (p == n).double().mean((1, 2)))
    return torch.cat(out)


def _projections(acts: Activations, keys: list[CandidateKey],
                 unit: Float[Tensor, "cand d_model"]) -> Float[Tensor, "cand prompt"]:
    """Projection of every prompt onto each unit candidate at the candidate's own (site, layer,
    pos), float64; one gather + einsum per site, so only one site's slice is copied at a time."""
    missing = [str(k) for k in keys if k.site not in acts.acts or k.layer not in acts.layers
               or k.pos not in acts.positions]
    if missing:
        raise ValueError(f"validation activations lack {len(missing)} candidate site(s)/layer(s)/"
                         f"position(s), e.g. {missing[:5]}; cache them with the same sites/layers/positions")
    device = next(iter(acts.acts.values())).device
    out = torch.empty(len(keys), acts.n_prompts, dtype=torch.float64, device=device)
    unit = unit.to(device)
    for site in dict.fromkeys(k.site for k in keys):
        rows = [i for i, k in enumerate(keys) if k.site == site]
        li = torch.tensor([acts.layers.index(keys[i].layer) for i in rows], device=device)
        pi = torch.tensor([acts.positions.index(keys[i].pos) for i in rows], device=device)
        x = acts.acts[site][li, :, pi]  # advanced indexing → [cand, prompt, d_model]
        out[rows] = torch.einsum("cnd,cd->cn", x.float(), unit[rows]).double()
    return out


def candidate_stats(cands: Candidates, harmful_val: Activations, harmless_val: Activations) -> pd.DataFrame:
    """One row per candidate: site, layer, pos, norm, max_sim, auc, cohens_d.

    ``max_sim``: mean cosine to every candidate in ``cands`` (self included, as in angular steering).
    ``auc``/``cohens_d``: separation of harmful (label 1) vs harmless validation projections onto
    the unit candidate, read at the candidate's own (site, layer, pos). Zero-norm candidates get
    auc 0.5 and cohens_d 0 (their projections are all zero).
    """
    _check_pair(harmful_val, harmless_val, "candidate_stats")
    if harmful_val.d_model != cands.d_model:
        raise ValueError(f"candidates have d_model={cands.d_model} but the validation activations "
                         f"have d_model={harmful_val.d_model}: they come from different models")
    unit = cands.unit()
    proj_h = _projections(harmful_val, cands.keys, unit)  # [cand, prompt], activation units
    proj_b = _projections(harmless_val, cands.keys, unit).to(proj_h.device)
    n1, n0 = proj_h.shape[1], proj_b.shape[1]
    sum_sq = proj_h.var(1, correction=0) * n1 + proj_b.var(1, correction=0) * n0
    pooled_std = (sum_sq / max(n1 + n0 - 2, 1)).sqrt()
    gap = proj_h.mean(1) - proj_b.mean(1)
    d = torch.where(pooled_std > 0, gap / pooled_std.clamp_min(1e-300), torch.zeros_like(gap))
    zero = (cands.norms() == 0).to(d.device)
    auc = torch.where(zero, torch.full_like(d, 0.5), _auc(proj_h, proj_b))
    frame = cands.to_frame()
    frame["max_sim"] = cosine_matrix(cands).double().mean(1).cpu().numpy()
    frame["auc"] = auc.cpu().numpy()
    frame["cohens_d"] = torch.where(zero, torch.zeros_like(d), d).cpu().numpy()
    return frame


@dataclass(frozen=True, eq=False)
class Selection:
    """The scored table, the key each method chose, and the unit mean of the unit candidates.

    ``choices["mean_of_candidates"]`` is the candidate closest (cosine) to ``mean_direction``; the
    mean itself is not a candidate, so ``direction("mean_of_candidates", …)`` returns the mean.
    ``notes["fallback"]`` is True when no candidate passed Arditi's filters (see ``notes["arditi"]``).
    """

    table: pd.DataFrame
    choices: dict[str, CandidateKey]
    mean_direction: Float[Tensor, "d_model"]
    notes: dict = field(default_factory=dict)

    def direction(self, method: str, cands: Candidates, *, model: str | None = None) -> Direction:
        """The direction chosen by ``method`` (candidate vector unchanged; the mean is unit)."""
        if method not in self.choices:
            raise ValueError(f"no choice for method {method!r}; available: {list(self.choices)}")
        if method == "mean_of_candidates":
            return Direction(self.mean_direction, method=method, model=model,
                             prompt_hash=cands.prompt_hash, versions=library_versions())
        return cands.direction(self.choices[method], method=method, model=model)


def _argmax_key(table: pd.DataFrame, ok: pd.Series, by: list[str], ascending: bool = False) -> CandidateKey:
    row = table[ok].sort_values(by, ascending=ascending, kind="stable").iloc[0]
    return CandidateKey(str(row.site), int(row.layer), int(row.pos))


def select(cands: Candidates, stats: pd.DataFrame, *, arditi: pd.DataFrame | None = None,
           n_layers: int | None = None, exclude_last_frac: float = 0.2, kl_max: float = 0.1,
           fallback_rank: str = "balance") -> Selection:
    """Choose a candidate by each method in :data:`METHODS` (``arditi`` only if its table is given).

    Zero-norm candidates are never chosen. ``arditi`` needs columns site, layer, pos, bypass,
    induce, kl and ``n_layers`` (the model's depth): a candidate passes unless a score is NaN,
    ``layer ≥ int((1 − exclude_last_frac)·n_layers)``, ``kl > kl_max`` or ``induce < 0``; the
    minimum bypass wins (Arditi et al. exactly). If none passes, instead of raising as the reference
    does, the filters are relaxed in stages (kl ≤ 0.25 below the cut-off, then any layer, then
    kl ≤ 1) and the relaxed candidate with the largest ``balance = min(−bypass, induce)`` wins;
    ``notes`` records ``fallback``, the level used and why.
    """
    key_cols = ["site", "layer", "pos"]
    need = set(key_cols + ["norm", "max_sim", "auc", "cohens_d"]) - set(stats.columns)
    if need:
        raise ValueError(f"stats lacks columns {sorted(need)}; build it with candidate_stats()")
    order = pd.DataFrame({"site": [k.site for k in cands.keys], "layer": [k.layer for k in cands.keys],
                          "pos": [k.pos for k in cands.keys]})
    derived = ["norm", "cos_to_mean", "arditi_pass"]  # recomputed here (stats may be an old Selection.table)
    table = order.merge(stats.drop(columns=derived, errors="ignore"), on=key_cols, how="left",
                        validate="one_to_one")
    if table["max_sim"].isna().any():
        raise ValueError("stats does not cover every candidate; compute it from the same Candidates")
    table.insert(3, "norm", cands.norms().cpu().numpy())  # authoritative norms, in cands' order
    ok = table["norm"] > 0
    if not ok.any():
        raise ValueError("every candidate has zero norm; cache layers beyond 0 or other positions")
    choices = {"max_sim": _argmax_key(table, ok, ["max_sim"]),
               "max_norm": _argmax_key(table, ok, ["norm"]),
               "max_auc": _argmax_key(table, ok, ["auc", "cohens_d"])}
    mean = cands.unit().double().mean(0)
    if torch.linalg.vector_norm(mean) == 0:
        raise ValueError("the mean of the unit candidates is zero; cannot form mean_of_candidates")
    mean_direction = (mean / torch.linalg.vector_norm(mean)).float()
    table["cos_to_mean"] = (cands.unit() @ mean_direction).cpu().numpy()
    choices["mean_of_candidates"] = _argmax_key(table, ok, ["cos_to_mean"])
    notes: dict = {}
    if arditi is not None:
        table, choices["arditi"], notes = _select_arditi(table, ok, arditi, n_layers,
                                                         exclude_last_frac, kl_max, fallback_rank)
    return Selection(table, choices, mean_direction, notes)


def _select_arditi(table: pd.DataFrame, ok: pd.Series, arditi: pd.DataFrame, n_layers: int | None,
                   exclude_last_frac: float, kl_max: float,
                   fallback_rank: str = "balance") -> tuple[pd.DataFrame, CandidateKey, dict]:
    missing = {"site", "layer", "pos", *_ARDITI_COLUMNS} - set(arditi.columns)
    if missing:
        raise ValueError(f"arditi table lacks columns {sorted(missing)}; expected site, layer, pos, "
                         f"bypass, induce, kl")
    if n_layers is None:
        raise ValueError("select(arditi=...) needs n_layers (the model's number of layers) for the "
                         "late-layer filter; pass n_layers=model.cfg.n_layers")
    scores = arditi[["site", "layer", "pos", *_ARDITI_COLUMNS]]
    table = table.drop(columns=[c for c in _ARDITI_COLUMNS if c in table]).merge(
        scores, on=["site", "layer", "pos"], how="left", validate="one_to_one")
    cutoff = int((1 - exclude_last_frac) * n_layers)
    finite = table[list(_ARDITI_COLUMNS)].notna().all(axis=1)
    early = table["layer"] < cutoff
    passed = ok & finite & early & (table["kl"] <= kl_max) & (table["induce"] >= 0)
    table["arditi_pass"] = passed
    notes = {"fallback": False, "layer_cutoff": cutoff}
    if passed.any():
        return table, _argmax_key(table, passed, ["bypass"], ascending=True), notes
    notes["fallback"] = True
    counts = (f"{int((ok & ~finite).sum())} NaN, {int((ok & ~early).sum())} at layer ≥ {cutoff}, "
              f"{int((ok & (table['kl'] > kl_max)).sum())} with kl > {kl_max}, "
              f"{int((ok & (table['induce'] < 0)).sum())} with induce < 0")
    # Relax one filter at a time, never the coherence one entirely: the minimum bypass over *all*
    # candidates is often a layer whose ablation breaks the model (kl ≫ 1, gibberish scored as
    # "not refusing"). Levels: kl ≤ kl_fallback; then also late layers; then kl ≤ 1 alone.
    kl_fallback = max(kl_max, KL_FALLBACK)
    coherent = ok & finite & (table["induce"] >= 0)
    for level, mask in ((f"kl ≤ {kl_fallback} (layer < {cutoff}, induce ≥ 0)", coherent & early & (table["kl"] <= kl_fallback)),
                        (f"kl ≤ {kl_fallback}, any layer, induce ≥ 0", coherent & (table["kl"] <= kl_fallback)),
                        ("kl ≤ 1, any layer, induce ≥ 0", coherent & (table["kl"] <= 1.0)),
                        ("kl ≤ 1, any layer", ok & finite & (table["kl"] <= 1.0)),
                        ("any finite score", ok & finite)):
        if mask.any():
            fallback = mask
            break
    else:
        raise ValueError("arditi table has no finite scores for any non-zero candidate; "
                         "check that it was computed for these candidates")
    # Among relaxed candidates none is known to be a clean two-way mediator, so rank by the weaker
    # of its two effects (bypass lowers refusal, induce raises it) instead of bypass alone: a
    # candidate that bypasses well but barely induces is a poor "refusal direction" to steer with.
    if fallback_rank not in ("balance", "bypass"):
        raise ValueError(f"fallback_rank must be 'balance' or 'bypass', got {fallback_rank!r}")
    table["balance"] = np.minimum(-table["bypass"], table["induce"])
    if fallback_rank == "bypass":  # Arditi's own ranking, applied to the relaxed set
        table["balance"] = -table["bypass"]
    notes["arditi"] = (f"no candidate passed Arditi's filters ({counts}); relaxed to {level} and took the "
                       f"best by {'min(−bypass, induce)' if fallback_rank == 'balance' else 'bypass'} there")
    notes["fallback_level"] = level
    best = table[fallback].sort_values(["balance", "bypass"], ascending=[False, True], kind="stable").iloc[0]
    return table, CandidateKey(str(best.site), int(best.layer), int(best.pos)), notes
