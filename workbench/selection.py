"""Scoring candidate directions and choosing one: statistics on activations, and Arditi's rule.

:func:`candidate_stats` scores every candidate on held-out prompts without running the model
(norm, mean cosine to the others, AUC and Cohen's d of the harmful/harmless projections);
:func:`select` turns those scores (and optionally Arditi et al.'s model-based bypass/induce/KL
table, from :func:`arditi_scores`, which runs the model on every candidate) into one choice per method.
:func:`filter_prompts` is the study's prompt filter (keep what the model refuses / answers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from . import interventions as iv
from .activations import Activations
from .artifacts import library_versions
from .directions import CandidateKey, Candidates, Direction, _check_pair, cosine_matrix
from .generation import last_token_logprobs, last_token_scores, repeat_prompts
from .metrics import first_token_kl, refusal_logodds

__all__ = [
    "METHODS",
    "FALLBACKS",
    "KL_FALLBACK",
    "KL_EPS",
    "candidate_stats",
    "layer_cutoff",
    "PromptFilter",
    "filter_prompts",
    "arditi_scores",
    "Selection",
    "select",
]

METHODS = ("max_sim", "max_norm", "max_auc", "mean_of_candidates", "arditi")
FALLBACKS = ("none", "balance", "bypass")  # select(fallback=...): the study stops; the others relax
_ARDITI_COLUMNS = ("bypass", "induce", "kl")
KL_FALLBACK = 0.25  # KL ≤ 0.1 rejects every candidate on the 135M organism (see select)
KL_EPS = 1e-6  # the study's kl_score adds ε to both probabilities


def _auc(pos: Float[Tensor, "cand n1"], neg: Float[Tensor, "cand n0"]) -> Float[Tensor, " cand"]:
    """Row-wise ROC AUC as the Mann–Whitney statistic P(pos > neg) + ½·P(pos = neg).

    Identical to ``sklearn.metrics.roc_auc_score`` (tested) but vectorised: 450 sklearn calls take
    ~0.6 s. Chunked so the [chunk, n1, n0] comparison stays ≤ 2**24 elements.
    """
    chunk = max(1, (1 << 24) // (pos.shape[1] * neg.shape[1]))
    out = []
    for s in range(0, pos.shape[0], chunk):
        p, n = pos[s : s + chunk, :, None], neg[s : s + chunk, None, :]
        out.append((p > n).double().mean((1, 2)) + 0.5 * (p == n).double().mean((1, 2)))
    return torch.cat(out)


def _projections(
    acts: Activations, keys: list[CandidateKey], unit: Float[Tensor, "cand d_model"]
) -> Float[Tensor, "cand prompt"]:
    """Projection of every prompt onto each unit candidate at the candidate's own (site, layer,
    pos), float64; one gather + einsum per site, so only one site's slice is copied at a time."""
    missing = [
        str(k) for k in keys if k.site not in acts.acts or k.layer not in acts.layers or k.pos not in acts.positions
    ]
    if missing:
        raise ValueError(
            f"validation activations lack {len(missing)} candidate site(s)/layer(s)/"
            f"position(s), e.g. {missing[:5]}; cache them with the same sites/layers/positions"
        )
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
        raise ValueError(
            f"candidates have d_model={cands.d_model} but the validation activations "
            f"have d_model={harmful_val.d_model}: they come from different models"
        )
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


# ---------------------------------------------------------------- Arditi's model-based scores


def layer_cutoff(n_layers: int, exclude_last_frac: float = 0.2) -> int:
    """Arditi et al.'s late-layer filter: candidates at layer ≥ ``int((1 − frac)·n_layers)`` are
    discarded (the study: ``int(0.8·L)``)."""
    if not 0 <= exclude_last_frac < 1:
        raise ValueError(f"exclude_last_frac must lie in [0, 1) (the study: 0.2); got {exclude_last_frac}")
    return int((1 - exclude_last_frac) * n_layers)


@dataclass(frozen=True)
class PromptFilter:
    """The prompts Arditi et al.'s filter keeps: harmful ones the model refuses (refusal log-odds
    > 0), harmless ones it does not (< 0); a score of exactly 0 is dropped from both.

    ``*_rows``: indices of the kept prompts in the input lists; ``*_scores``: every input
    prompt's refusal log-odds (float64, nats); ``counts``:
    ``{"harmful": {"kept": k, "dropped": d}, "harmless": {...}}``.
    """

    harmful: list[str]
    harmless: list[str]
    harmful_rows: list[int]
    harmless_rows: list[int]
    harmful_scores: Float[Tensor, " harmful"]
    harmless_scores: Float[Tensor, " harmless"]
    counts: dict[str, dict[str, int]]


def filter_prompts(
    model,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    refusal_ids: Sequence[int],
    batch_size: int = 64,
    progress: bool = False,
) -> PromptFilter:
    """Arditi et al.'s prompt filter (applied to train and validation prompts): score every prompt
    with the unsteered model's refusal log-odds and keep harmful ones > 0, harmless ones < 0."""
    harmful, harmless = list(harmful), list(harmless)
    scores = last_token_scores(
        model,
        harmful + harmless,
        lambda lp, rows: refusal_logodds(lp, refusal_ids),
        batch_size=batch_size,
        progress=progress,
    )
    s_h, s_s = scores[: len(harmful)], scores[len(harmful) :]
    rows_h = torch.nonzero(s_h > 0).flatten().tolist()
    rows_s = torch.nonzero(s_s < 0).flatten().tolist()
    return PromptFilter(
        harmful=[harmful[i] for i in rows_h],
        harmless=[harmless[i] for i in rows_s],
        harmful_rows=rows_h,
        harmless_rows=rows_s,
        harmful_scores=s_h,
        harmless_scores=s_s,
        counts={
            "harmful": {"kept": len(rows_h), "dropped": len(harmful) - len(rows_h)},
            "harmless": {"kept": len(rows_s), "dropped": len(harmless) - len(rows_s)},
        },
    )


def arditi_scores(
    model,
    cands: Candidates,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    refusal_ids: Sequence[int],
    batch_size: int = 64,
    prune: bool = True,
    exclude_last_frac: float = 0.2,
    reuse_base: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Arditi et al.'s three scores for every candidate, many candidates per forward pass.

    One row per candidate, in ``cands`` order: site, layer, pos, bypass, induce, kl (nats, float64
    means over prompts), pruned. ``bypass``: mean refusal log-odds on ``harmful`` with the unit
    candidate ablated at every layer and position (``all``). ``induce``: on ``harmless`` with the
    raw candidate added at its own site and layer, every position. ``kl``: mean KL(base ‖ ablated)
    of the first response token on ``harmless``, smoothed as the study's (ε = 1e-6, see
    :func:`~workbench.metrics.first_token_kl`). Candidates from any post-instruction position are
    scored alike: ablation and addition act at every position.

    Work that cannot change the choice is skipped: with ``prune`` (default) candidates at layer ≥
    :func:`layer_cutoff` are not run (``pruned=True``, NaN scores; :func:`select` rejects them
    anyway, so its fallback then relaxes within the scored layers only); zero-norm ones get NaN.
    Bypass and KL ablate the same candidate, so they run as one job (a candidate's shared prefix
    is computed once for both). ``reuse_base``: induce rows start at their candidate's block from
    the unsteered model's cached residual (the layers below are unchanged by the addition).
    """
    if not harmful or not harmless:
        raise ValueError("arditi_scores needs at least one harmful and one harmless prompt")
    cutoff = layer_cutoff(model.cfg.n_layers, exclude_last_frac)
    pruned = torch.tensor([prune and key.layer >= cutoff for key in cands.keys], dtype=torch.bool)
    scored = (cands.vectors.norm(dim=-1).cpu() > 0) & ~pruned
    idx = torch.nonzero(scored).flatten()
    table = _unscored_table(cands, pruned)
    if len(idx) == 0:
        return table
    vectors, keys = cands.vectors[idx], [cands.keys[i] for i in idx.tolist()]
    base = last_token_logprobs(model, harmless, batch_size=batch_size).to(model.cfg.device)
    scores_a = _bypass_and_kl(model, vectors, harmful, harmless, base, refusal_ids, batch_size, progress)
    scores_i = _induce(model, vectors, keys, harmless, refusal_ids, reuse_base, batch_size, progress)
    n_h = len(harmful)
    at = idx.numpy()
    table.loc[at, "bypass"] = scores_a[:, :n_h].mean(1).numpy()
    table.loc[at, "kl"] = scores_a[:, n_h:].mean(1).numpy()
    table.loc[at, "induce"] = scores_i.mean(1).numpy()
    return table


def _unscored_table(cands: Candidates, pruned: Tensor) -> pd.DataFrame:
    """site, layer, pos, NaN bypass / induce / kl and ``pruned`` (``[cand]`` bool), in ``cands`` order."""
    table = cands.to_frame()[["site", "layer", "pos"]]
    nan = np.full(len(cands), np.nan)
    table["bypass"], table["induce"], table["kl"] = nan, nan.copy(), nan.copy()
    table["pruned"] = pruned.numpy()
    return table


def _bypass_and_kl(
    model,
    vectors: Float[Tensor, "k d_model"],
    harmful: Sequence[str],
    harmless: Sequence[str],
    base: Float[Tensor, "harmless d_vocab"],
    refusal_ids: Sequence[int],
    batch_size: int,
    progress: bool,
) -> Float[Tensor, "k prompt"]:
    """Per candidate, each unit candidate ablated everywhere: refusal log-odds on the harmful
    prompts, then KL(``base`` ‖ ablated) on the harmless ones, ``[k, n_harmful + n_harmless]``."""
    k, n_h, n_s = len(vectors), len(harmful), len(harmless)
    # candidate c's block holds the harmful then the harmless prompts, ablated alike
    rows_a, cand_a = repeat_prompts([*harmful, *harmless], k)

    def bypass_or_kl(lp, rows):
        j = rows % (n_h + n_s)
        kl = first_token_kl(base[(j - n_h).clamp_min(0)], lp, eps=KL_EPS)
        return torch.where(j < n_h, refusal_logodds(lp, refusal_ids), kl)

    return last_token_scores(
        model,
        rows_a,
        bypass_or_kl,
        hooks=lambda rows: iv.candidate_sweep_hooks(model, vectors[cand_a[rows.cpu()]], "all"),
        groups=cand_a,
        batch_size=batch_size,
        progress=progress,
    ).view(k, n_h + n_s)


def _induce(
    model,
    vectors: Float[Tensor, "k d_model"],
    keys: list[CandidateKey],
    harmless: Sequence[str],
    refusal_ids: Sequence[int],
    reuse_base: bool,
    batch_size: int,
    progress: bool,
) -> Float[Tensor, "k harmless"]:
    """Refusal log-odds on the harmless prompts with each raw candidate added at its own site and
    layer, ``[k, n_harmless]``; with ``reuse_base`` rows resume at that layer from the base residual."""
    k, n_s = len(keys), len(harmless)
    layers = torch.tensor([key.layer for key in keys])
    sites = sorted({key.site for key in keys})
    rows_s, cand_s = repeat_prompts(harmless, k)

    def induce(rows):
        c = cand_s[rows.cpu()]
        hooks = []
        for site in sites:  # rows of another site's candidates get α = 0 here
            alpha = torch.tensor([float(keys[i].site == site) for i in c.tolist()])
            hooks += iv.addition_sweep_hooks(model, vectors[c], layers[c], alpha=alpha, site=site)
        return hooks

    return last_token_scores(
        model,
        rows_s,
        lambda lp, rows: refusal_logodds(lp, refusal_ids),
        hooks=induce,
        groups=cand_s,
        start_layers=layers[cand_s] if reuse_base else None,
        batch_size=batch_size,
        progress=progress,
    ).view(k, n_s)


# ---------------------------------------------------------------- choosing


@dataclass(frozen=True, eq=False)
class Selection:
    """The scored table, the key each method chose, and the unit mean of the unit candidates.

    ``choices["mean_of_candidates"]`` is the candidate closest (cosine) to ``mean_direction``; the
    mean itself is not a candidate, so ``direction("mean_of_candidates", …)`` returns the mean.
    ``notes`` (with an Arditi table): ``n_passed``, ``layer_cutoff``, ``filter_counts`` and
    ``fallback``: None when a candidate passed Arditi's filters, else the one-line account of the
    relaxation used (see :func:`select`).
    """

    table: pd.DataFrame
    choices: dict[str, CandidateKey]
    mean_direction: Float[Tensor, " d_model"]
    notes: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        # the choices and the fallback, not the table and the mean direction's d_model numbers
        chosen = ", ".join(f"{m}={k}" for m, k in self.choices.items())
        fallback = f", fallback: {self.notes['fallback_level']}" if self.notes.get("fallback_level") else ""
        return f"Selection({len(self.table)} candidates scored; {chosen}{fallback})"

    def direction(self, method: str, cands: Candidates, *, model: str | None = None) -> Direction:
        """The direction chosen by ``method`` (candidate vector unchanged; the mean is unit)."""
        if method not in self.choices:
            raise ValueError(f"no choice for method {method!r}; available: {list(self.choices)}")
        if method == "mean_of_candidates":
            return Direction(
                self.mean_direction,
                method=method,
                model=model,
                prompt_hash=cands.prompt_hash,
                versions=library_versions(),
            )
        return cands.direction(self.choices[method], method=method, model=model)


def _argmax_key(table: pd.DataFrame, ok: pd.Series, by: list[str], ascending: bool = False) -> CandidateKey:
    row = table[ok].sort_values(by, ascending=ascending, kind="stable").iloc[0]
    return CandidateKey(str(row.site), int(row.layer), int(row.pos))


def select(
    cands: Candidates,
    stats: pd.DataFrame,
    *,
    arditi: pd.DataFrame | None = None,
    n_layers: int | None = None,
    exclude_last_frac: float = 0.2,
    kl_max: float = 0.1,
    fallback: str = "balance",
) -> Selection:
    """Choose a candidate by each method in :data:`METHODS` (``arditi`` only if its table is given).

    Zero-norm candidates are never chosen. ``arditi`` needs columns site, layer, pos, bypass,
    induce, kl and ``n_layers`` (the model's depth): a candidate passes unless a score is NaN,
    ``layer ≥ int((1 − exclude_last_frac)·n_layers)``, ``kl > kl_max`` or ``induce < 0``; the
    minimum bypass wins (Arditi et al. exactly). ``fallback`` says what happens if none passes:
    ``"none"`` (the study) raises ValueError with the filter counts; ``"balance"`` / ``"bypass"``
    relax the filters in stages (kl ≤ 0.25 below the cut-off, then any layer, then kl ≤ 1) and take
    the relaxed candidate with the largest ``balance = min(−bypass, induce)`` or the lowest bypass.
    ``notes``: ``n_passed``, ``layer_cutoff``, ``filter_counts`` and ``fallback`` (None when a
    candidate passed, else one line naming the counts, the ranking and the level used;
    ``fallback_level`` holds the level alone).
    """
    if fallback not in FALLBACKS:
        raise ValueError(
            f"fallback must be one of {', '.join(FALLBACKS)} (config key arditi_fallback); got {fallback!r}"
        )
    table = _stats_table(cands, stats)
    ok = table["norm"] > 0
    if not ok.any():
        raise ValueError("every candidate has zero norm; cache layers beyond 0 or other positions")
    choices = {
        "max_sim": _argmax_key(table, ok, ["max_sim"]),
        "max_norm": _argmax_key(table, ok, ["norm"]),
        "max_auc": _argmax_key(table, ok, ["auc", "cohens_d"]),
    }
    mean = cands.unit().double().mean(0)
    if torch.linalg.vector_norm(mean) == 0:
        raise ValueError("the mean of the unit candidates is zero; cannot form mean_of_candidates")
    mean_direction = (mean / torch.linalg.vector_norm(mean)).float()
    table["cos_to_mean"] = (cands.unit() @ mean_direction).cpu().numpy()
    choices["mean_of_candidates"] = _argmax_key(table, ok, ["cos_to_mean"])
    notes: dict = {}
    if arditi is not None:
        table, choices["arditi"], notes = _select_arditi(
            table, ok, arditi, n_layers, exclude_last_frac, kl_max, fallback
        )
    return Selection(table, choices, mean_direction, notes)


def _stats_table(cands: Candidates, stats: pd.DataFrame) -> pd.DataFrame:
    """``stats`` in ``cands`` order, one row per candidate, with the candidates' own ``norm`` (the
    derived columns of an old :attr:`Selection.table` dropped); raises on missing columns or rows."""
    key_cols = ["site", "layer", "pos"]
    need = set(key_cols + ["norm", "max_sim", "auc", "cohens_d"]) - set(stats.columns)
    if need:
        raise ValueError(f"stats lacks columns {sorted(need)}; build it with candidate_stats()")
    order = pd.DataFrame(
        {
            "site": [k.site for k in cands.keys],
            "layer": [k.layer for k in cands.keys],
            "pos": [k.pos for k in cands.keys],
        }
    )
    derived = ["norm", "cos_to_mean", "arditi_pass"]  # recomputed here (stats may be an old Selection.table)
    table = order.merge(stats.drop(columns=derived, errors="ignore"), on=key_cols, how="left", validate="one_to_one")
    if table["max_sim"].isna().any():
        raise ValueError("stats does not cover every candidate; compute it from the same Candidates")
    table.insert(3, "norm", cands.norms().cpu().numpy())  # authoritative norms, in cands' order
    return table


def _select_arditi(
    table: pd.DataFrame,
    ok: pd.Series,
    arditi: pd.DataFrame,
    n_layers: int | None,
    exclude_last_frac: float,
    kl_max: float,
    fallback: str,
) -> tuple[pd.DataFrame, CandidateKey, dict]:
    """Arditi's rule (and the fallback) on ``table`` merged with the ``arditi`` scores: the table
    (+ ``arditi_pass``, and ``balance`` after a fallback), the chosen key and the notes (see :func:`select`)."""
    missing = {"site", "layer", "pos", *_ARDITI_COLUMNS} - set(arditi.columns)
    if missing:
        raise ValueError(f"arditi table lacks columns {sorted(missing)}; expected site, layer, pos, bypass, induce, kl")
    if n_layers is None:
        raise ValueError(
            "select(arditi=...) needs n_layers (the model's number of layers) for the "
            "late-layer filter; pass n_layers=model.cfg.n_layers"
        )
    table, in_table = _merge_arditi_scores(table, ok, arditi)
    cutoff = layer_cutoff(n_layers, exclude_last_frac)
    finite = table[list(_ARDITI_COLUMNS)].notna().all(axis=1)
    early = table["layer"] < cutoff
    passed = ok & finite & early & (table["kl"] <= kl_max) & (table["induce"] >= 0)
    table["arditi_pass"] = passed
    counts = _filter_counts(table, in_table, finite, early, passed, kl_max)
    notes: dict[str, object] = {
        "n_passed": counts["passed"],
        "layer_cutoff": cutoff,
        "filter_counts": counts,
        "fallback": None,
        "fallback_level": None,
    }
    if passed.any():
        return table, _argmax_key(table, passed, ["bypass"], ascending=True), notes
    said = (
        f"{counts['candidates']} non-zero candidates: {counts['late']} at layer ≥ {cutoff} (not scored), "
        f"{counts['nan']} with a NaN score, {counts['kl']} with kl > {kl_max}, {counts['induce']} with induce < 0"
    )
    if fallback == "none":
        raise ValueError(
            f"no candidate passed Arditi's filters ({said}); the study stops here. To choose anyway, "
            "set the config key arditi_fallback to 'balance' (relax the filters, rank by min(−bypass, induce)) "
            "or 'bypass' (relax, rank by bypass), i.e. select(..., fallback='balance')"
        )
    level, relaxed = _relaxed_candidates(table, ok, finite, early, cutoff, kl_max)
    table["balance"] = _balance(table, fallback)
    notes["fallback"] = f"no candidate passed Arditi's filters ({said}); fallback {fallback} used: relaxed to {level}"
    notes["fallback_level"] = level
    best = table[relaxed].sort_values(["balance", "bypass"], ascending=[False, True], kind="stable").iloc[0]
    return table, CandidateKey(str(best.site), int(best.layer), int(best.pos)), notes


def _merge_arditi_scores(table: pd.DataFrame, ok: pd.Series, arditi: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """``table`` with the ``arditi`` scores (bypass, induce, kl) merged in by key, and the mask
    ``[cand]`` of the non-zero candidates the Arditi table covers."""
    scores = arditi[["site", "layer", "pos", *_ARDITI_COLUMNS]]
    table = table.drop(columns=[c for c in _ARDITI_COLUMNS if c in table]).merge(
        scores, on=["site", "layer", "pos"], how="left", validate="one_to_one", indicator=True
    )
    in_table = (table.pop("_merge") == "both") & ok  # the candidates the Arditi table covers
    return table, in_table


def _filter_counts(
    table: pd.DataFrame, in_table: pd.Series, finite: pd.Series, early: pd.Series, passed: pd.Series, kl_max: float
) -> dict[str, int]:
    """How many candidates each of Arditi's filters rejects, and how many pass."""
    # each count among the non-zero candidates the table covers (other sites' rows are not Arditi's);
    # late ones (pruned: unscored) are counted as late only
    return {
        "candidates": int(in_table.sum()),
        "nan": int((in_table & early & ~finite).sum()),
        "late": int((in_table & ~early).sum()),
        "kl": int((in_table & (table["kl"] > kl_max)).sum()),
        "induce": int((in_table & (table["induce"] < 0)).sum()),
        "passed": int(passed.sum()),
    }


def _relaxed_candidates(
    table: pd.DataFrame, ok: pd.Series, finite: pd.Series, early: pd.Series, cutoff: int, kl_max: float
) -> tuple[str, pd.Series]:
    """The first relaxation level that admits a candidate: its name and its mask ``[cand]``."""
    # Relax one filter at a time, never the coherence one entirely: the minimum bypass over *all*
    # candidates is often a layer whose ablation breaks the model (kl ≫ 1, gibberish scored as
    # "not refusing"). Levels: kl ≤ kl_fallback; then also late layers; then kl ≤ 1 alone.
    kl_fallback = max(kl_max, KL_FALLBACK)
    coherent = ok & finite & (table["induce"] >= 0)
    levels = (
        (f"kl ≤ {kl_fallback} (layer < {cutoff}, induce ≥ 0)", coherent & early & (table["kl"] <= kl_fallback)),
        (f"kl ≤ {kl_fallback}, any layer, induce ≥ 0", coherent & (table["kl"] <= kl_fallback)),
        ("kl ≤ 1, any layer, induce ≥ 0", coherent & (table["kl"] <= 1.0)),
        ("kl ≤ 1, any layer", ok & finite & (table["kl"] <= 1.0)),
        ("any finite score", ok & finite),
    )
    level, relaxed = next(((name, mask) for name, mask in levels if mask.any()), ("", None))
    if relaxed is None:
        raise ValueError(
            "arditi table has no finite scores for any non-zero candidate; "
            "check that it was computed for these candidates"
        )
    return level, relaxed


def _balance(table: pd.DataFrame, fallback: str) -> pd.Series | np.ndarray:
    """The fallback's ranking score per candidate ``[cand]`` (higher is better); a Series at run time."""
    # Among relaxed candidates none is known to be a clean two-way mediator, so "balance" ranks by
    # the weaker of its two effects (bypass lowers refusal, induce raises it) instead of bypass
    # alone: a candidate that bypasses well but barely induces is a poor direction to steer with.
    if fallback == "bypass":  # Arditi's own ranking, applied to the relaxed set
        return -table["bypass"]
    return np.minimum(-table["bypass"], table["induce"])
