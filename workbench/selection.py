"""Scoring candidate directions and choosing one: statistics on activations, and Arditi's rule.

:func:`candidate_stats` scores every candidate on held-out prompts without running the model
(norm, mean cosine to the others, AUC and Cohen's d of the harmful/harmless projections);
:func:`select` turns those scores (and optionally Arditi et al.'s model-based bypass/induce/KL
table, from :func:`arditi_scores`, which runs the model on every candidate) into one choice per method.
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
from .generation import generate, last_token_logprobs, repeat_prompts
from .labels import is_refusal
from .metrics import first_token_kl, refusal_logodds, refusal_token_ids

__all__ = ["METHODS", "KL_FALLBACK", "candidate_stats", "model_refusal_tokens", "arditi_scores", "Selection", "select"]

METHODS = ("max_sim", "max_norm", "max_auc", "mean_of_candidates", "arditi")
_ARDITI_COLUMNS = ("bypass", "induce", "kl")
KL_FALLBACK = 0.25  # KL ≤ 0.1 rejects every candidate on the 135M organism (see select)


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


def model_refusal_tokens(model, harmful: Sequence[str], *, max_new_tokens: int = 8) -> list[int]:
    """Refusal-start token ids taken from the model's *own* refusals of ``harmful`` prompts."""
    responses = generate(model, harmful, max_new_tokens=max_new_tokens)
    refusals = [r for r in responses if is_refusal(r)]
    if not refusals:
        raise ValueError("the model refused none of the prompts; pass refusal token ids explicitly")
    return refusal_token_ids(model.tokenizer, refusals)


def arditi_scores(
    model,
    cands: Candidates,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    refusal_ids: Sequence[int],
    batch_size: int = 64,
    progress: bool = True,
) -> pd.DataFrame:
    """Arditi et al.'s three scores for every candidate, scored many candidates per forward pass.

    ``bypass``: mean refusal log-odds on ``harmful`` with the candidate ablated everywhere
    (``all``). ``induce``: on ``harmless`` with the raw candidate added at its own site and layer.
    ``kl``: mean first-token KL(base ‖ ablated) on ``harmless``. Zero-norm candidates get NaN.
    """
    ok = cands.vectors.norm(dim=-1) > 0
    idx = torch.nonzero(ok).flatten()
    vectors, keys = cands.vectors[idx], [cands.keys[i] for i in idx.tolist()]
    k = len(keys)
    layers = torch.tensor([key.layer for key in keys])
    sites = sorted({key.site for key in keys})
    base = last_token_logprobs(model, harmless, batch_size=batch_size)

    rows_h, cand_h = repeat_prompts(harmful, k)
    rows_s, cand_s = repeat_prompts(harmless, k)

    def ablate(cand):  # row i ablates its own candidate everywhere
        return lambda rows: iv.candidate_sweep_hooks(model, vectors[cand[rows.cpu()]], "all")

    def induce(rows):
        c = cand_s[rows.cpu()]
        hooks = []
        for site in sites:  # rows of another site's candidates get α = 0 here
            alpha = torch.tensor([float(keys[i].site == site) for i in c.tolist()])
            hooks += iv.addition_sweep_hooks(model, vectors[c], layers[c], alpha=alpha, site=site)
        return hooks

    score = lambda rows, hooks, groups: last_token_logprobs(  # noqa: E731
        model, rows, hooks=hooks, groups=groups, batch_size=batch_size, progress=progress
    )
    lp_bypass = score(rows_h, ablate(cand_h), cand_h)
    lp_kl = score(rows_s, ablate(cand_s), cand_s)
    lp_induce = score(rows_s, induce, cand_s)
    n_h, n_s = len(harmful), len(harmless)
    table = pd.DataFrame(
        {
            "site": [key.site for key in keys],
            "layer": layers.tolist(),
            "pos": [key.pos for key in keys],
            "bypass": refusal_logodds(lp_bypass, refusal_ids).view(k, n_h).mean(1).numpy(),
            "induce": refusal_logodds(lp_induce, refusal_ids).view(k, n_s).mean(1).numpy(),
            "kl": first_token_kl(base.repeat(k, 1), lp_kl).view(k, n_s).mean(1).numpy(),
        }
    )
    zero = [key for key, good in zip(cands.keys, ok.tolist()) if not good]
    if zero:
        nan = float("nan")
        table = pd.concat(
            [
                table,
                pd.DataFrame(
                    [
                        {"site": z.site, "layer": z.layer, "pos": z.pos, "bypass": nan, "induce": nan, "kl": nan}
                        for z in zero
                    ]
                ),
            ],
            ignore_index=True,
        )
    return table


# ---------------------------------------------------------------- choosing


@dataclass(frozen=True, eq=False)
class Selection:
    """The scored table, the key each method chose, and the unit mean of the unit candidates.

    ``choices["mean_of_candidates"]`` is the candidate closest (cosine) to ``mean_direction``; the
    mean itself is not a candidate, so ``direction("mean_of_candidates", …)`` returns the mean.
    ``notes["fallback"]`` is True when no candidate passed Arditi's filters (see ``notes["arditi"]``).
    """

    table: pd.DataFrame
    choices: dict[str, CandidateKey]
    mean_direction: Float[Tensor, " d_model"]
    notes: dict = field(default_factory=dict)

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
    fallback_rank: str = "balance",
) -> Selection:
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
            table, ok, arditi, n_layers, exclude_last_frac, kl_max, fallback_rank
        )
    return Selection(table, choices, mean_direction, notes)


def _select_arditi(
    table: pd.DataFrame,
    ok: pd.Series,
    arditi: pd.DataFrame,
    n_layers: int | None,
    exclude_last_frac: float,
    kl_max: float,
    fallback_rank: str = "balance",
) -> tuple[pd.DataFrame, CandidateKey, dict]:
    missing = {"site", "layer", "pos", *_ARDITI_COLUMNS} - set(arditi.columns)
    if missing:
        raise ValueError(f"arditi table lacks columns {sorted(missing)}; expected site, layer, pos, bypass, induce, kl")
    if n_layers is None:
        raise ValueError(
            "select(arditi=...) needs n_layers (the model's number of layers) for the "
            "late-layer filter; pass n_layers=model.cfg.n_layers"
        )
    scores = arditi[["site", "layer", "pos", *_ARDITI_COLUMNS]]
    table = table.drop(columns=[c for c in _ARDITI_COLUMNS if c in table]).merge(
        scores, on=["site", "layer", "pos"], how="left", validate="one_to_one"
    )
    cutoff = int((1 - exclude_last_frac) * n_layers)
    finite = table[list(_ARDITI_COLUMNS)].notna().all(axis=1)
    early = table["layer"] < cutoff
    passed = ok & finite & early & (table["kl"] <= kl_max) & (table["induce"] >= 0)
    table["arditi_pass"] = passed
    notes: dict[str, object] = {"fallback": False, "layer_cutoff": cutoff}
    if passed.any():
        return table, _argmax_key(table, passed, ["bypass"], ascending=True), notes
    notes["fallback"] = True
    counts = (
        f"{int((ok & ~finite).sum())} NaN, {int((ok & ~early).sum())} at layer ≥ {cutoff}, "
        f"{int((ok & (table['kl'] > kl_max)).sum())} with kl > {kl_max}, "
        f"{int((ok & (table['induce'] < 0)).sum())} with induce < 0"
    )
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
    level, fallback = next(((name, mask) for name, mask in levels if mask.any()), ("", None))
    if fallback is None:
        raise ValueError(
            "arditi table has no finite scores for any non-zero candidate; "
            "check that it was computed for these candidates"
        )
    # Among relaxed candidates none is known to be a clean two-way mediator, so rank by the weaker
    # of its two effects (bypass lowers refusal, induce raises it) instead of bypass alone: a
    # candidate that bypasses well but barely induces is a poor "refusal direction" to steer with.
    if fallback_rank not in ("balance", "bypass"):
        raise ValueError(f"fallback_rank must be 'balance' or 'bypass', got {fallback_rank!r}")
    table["balance"] = np.minimum(-table["bypass"], table["induce"])
    if fallback_rank == "bypass":  # Arditi's own ranking, applied to the relaxed set
        table["balance"] = -table["bypass"]
    notes["arditi"] = (
        f"no candidate passed Arditi's filters ({counts}); relaxed to {level} and took the "
        f"best by {'min(−bypass, induce)' if fallback_rank == 'balance' else 'bypass'} there"
    )
    notes["fallback_level"] = level
    best = table[fallback].sort_values(["balance", "bypass"], ascending=[False, True], kind="stable").iloc[0]
    return table, CandidateKey(str(best.site), int(best.layer), int(best.pos)), notes
