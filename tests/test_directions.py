"""Candidates, statistics, selection and Direction on synthetic activations with a planted direction."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from workbench.activations import Activations
from workbench.directions import (
    CandidateKey,
    Candidates,
    Direction,
    cosine_matrix,
    diff_in_means,
    per_sample_candidates,
)
from workbench.selection import candidate_stats, select

D, LAYERS, POSITIONS = 32, list(range(8)), [-3, -2, -1]
SIGNAL, NULL = "resid_pre", "resid_mid"  # the planted site, and a site with no class difference
STRENGTH = [1.5 * layer for layer in LAYERS]  # grows with depth; layer 0 is zeroed below anyway


def planted_direction(d: int = D) -> torch.Tensor:
    r = torch.randn(d, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return (r / r.norm()).float()


def make_acts(
    n: int,
    harmful: bool,
    seed: int,
    *,
    d: int = D,
    layers=LAYERS,
    positions=POSITIONS,
    sites=(SIGNAL, NULL),
    strength=None,
) -> Activations:
    """``[layer, prompt, pos, d]`` N(0, I) per site; harmful adds strength[l]·r at the signal site.

    Layer 0 is the same constant vector for every prompt and class (as template tokens at the
    embedding), so its candidates are exactly zero.
    """
    gen = torch.Generator().manual_seed(seed)
    r, strength = planted_direction(d), strength or STRENGTH
    constant = torch.linspace(-1, 1, d)
    acts = {}
    for site in sites:
        x = torch.randn(len(layers), n, len(positions), d, generator=gen)
        if harmful and site == SIGNAL:
            x += torch.tensor([strength[i] for i in range(len(layers))])[:, None, None, None] * r
        if 0 in layers:
            x[layers.index(0)] = constant
        acts[site] = x
    prompts = [f"{'harmful' if harmful else 'harmless'} prompt {i} seed {seed}" for i in range(n)]
    return Activations(acts, list(layers), list(positions), ["<t>"] * len(positions), prompts)


@pytest.fixture(scope="module")
def data():
    train = make_acts(128, True, 1), make_acts(128, False, 2)
    val = make_acts(64, True, 3), make_acts(64, False, 4)
    cands = diff_in_means(*train)
    return train, val, cands, candidate_stats(cands, *val)


def test_key_str_and_order(data):
    _, _, cands, _ = data
    assert str(CandidateKey("resid_pre", 12, -1)) == "resid_pre/L12/pos-1"
    assert len(cands) == 2 * len(LAYERS) * len(POSITIONS)
    assert cands.keys[:4] == [
        CandidateKey(SIGNAL, 0, -3),
        CandidateKey(SIGNAL, 0, -2),
        CandidateKey(SIGNAL, 0, -1),
        CandidateKey(SIGNAL, 1, -3),
    ]
    assert cands.keys[len(LAYERS) * len(POSITIONS)].site == NULL
    assert cands.vectors.dtype == torch.float32 and cands.kind == "raw"


def test_diff_in_means_recovers_planted_direction(data):
    (harm, harmless), _, cands, _ = data
    r = planted_direction()
    for layer in (6, 7):
        for pos in POSITIONS:
            d = cands.direction(CandidateKey(SIGNAL, layer, pos))
            assert d.cosine(Direction(r)) > 0.99
    i = cands.index(SIGNAL, 5, -2)
    expected = harm.get(SIGNAL, 5, -2).double().mean(0) - harmless.get(SIGNAL, 5, -2).double().mean(0)
    assert torch.allclose(cands.vectors[i], expected.float(), atol=1e-6)


def test_unit_kind_matches_hand_computation(data):
    (harm, harmless), _, raw, _ = data
    unit = diff_in_means(harm, harmless, kind="unit")
    assert unit.kind == "unit"

    def unit_mean(x):
        m = (x.double() / x.double().norm(dim=1, keepdim=True)).mean(0)
        return m / m.norm()

    for key in (CandidateKey(SIGNAL, 4, -1), CandidateKey(NULL, 6, -3)):
        i = unit.index(key.site, key.layer, key.pos)
        hand = unit_mean(harm.get(*vars(key).values())) - unit_mean(harmless.get(*vars(key).values()))
        assert torch.allclose(unit.vectors[i].double(), hand, atol=1e-6)
        assert not torch.allclose(unit.vectors[i], raw.vectors[i], atol=1e-2)  # the kinds differ
    assert unit.norms().max() <= 2.0 + 1e-6


def test_per_sample_candidates(data):
    (harm, harmless), _, cands, _ = data
    rows = per_sample_candidates(harm, harmless, SIGNAL, 6, -1)
    assert rows.shape == (harm.n_prompts, D)
    assert torch.allclose(rows.double().mean(0), cands.vectors[cands.index(SIGNAL, 6, -1)].double(), atol=1e-5)


def test_candidates_api(data):
    _, _, cands, _ = data
    with pytest.raises(KeyError, match="layers"):
        cands.index(SIGNAL, 99, -1)
    sub = cands.subset(sites=[SIGNAL], layers=[6, 7], positions=[-1])
    assert [str(k) for k in sub.keys] == ["resid_pre/L6/pos-1", "resid_pre/L7/pos-1"]
    with pytest.raises(ValueError, match="empty"):
        cands.subset(layers=[42])
    unit = cands.unit()
    zero = cands.norms() == 0
    assert zero.sum() == 2 * len(POSITIONS)  # layer 0 at both sites
    assert torch.equal(unit[zero], torch.zeros_like(unit[zero]))
    assert torch.allclose(unit[~zero].norm(dim=1), torch.ones(int((~zero).sum())), atol=1e-6)
    frame = cands.to_frame()
    assert list(frame.columns) == ["site", "layer", "pos", "norm"] and len(frame) == len(cands)
    cos = cosine_matrix(cands)
    assert cos.shape == (len(cands), len(cands)) and not cos.isnan().any()


def test_diff_in_means_errors():
    a = make_acts(4, True, 1)
    with pytest.raises(ValueError, match="differ"):
        diff_in_means(a, make_acts(4, False, 2, sites=(SIGNAL,)))
    with pytest.raises(ValueError, match="differ"):
        diff_in_means(a, make_acts(4, False, 2, layers=[0, 1]))
    with pytest.raises(ValueError, match="d_model"):
        diff_in_means(a, make_acts(4, False, 2, d=16))
    empty = Activations({SIGNAL: torch.zeros(8, 0, 3, D)}, LAYERS, POSITIONS, ["t"] * 3, [])
    with pytest.raises(ValueError, match="empty"):
        diff_in_means(empty, empty)
    with pytest.raises(ValueError, match="kind"):
        diff_in_means(a, make_acts(4, False, 2), kind="normalised")


def test_stats_auc_and_nulls(data):
    _, (hv, bv), cands, stats = data
    assert list(stats.columns) == ["site", "layer", "pos", "norm", "max_sim", "auc", "cohens_d"]
    assert not stats[["norm", "max_sim", "auc", "cohens_d"]].isna().any().any()
    strong = stats[(stats.site == SIGNAL) & (stats.layer >= 5)]
    assert (strong.auc > 0.99).all() and (strong.cohens_d > 3).all()
    null = stats[(stats.site == NULL) & (stats.layer > 0)]
    assert abs(null.auc.mean() - 0.5) < 0.05 and null.auc.between(0.25, 0.75).all()
    zero = stats[stats.layer == 0]
    assert (zero.norm == 0).all() and (zero.auc == 0.5).all() and (zero.cohens_d == 0).all()
    assert (zero.max_sim == 0).all()
    # max_sim is the mean cosine to all candidates, self included
    assert np.allclose(stats.max_sim, cosine_matrix(cands).double().mean(1).numpy(), atol=1e-7)


def test_auc_equals_sklearn_with_ties(data):
    _, (hv, bv), cands, _ = data
    # coarse values force ties between the classes
    hv = Activations(
        {s: (a * 2).round() / 2 for s, a in hv.acts.items()}, hv.layers, hv.positions, hv.tokens, hv.prompts
    )
    bv = Activations(
        {s: (a * 2).round() / 2 for s, a in bv.acts.items()}, bv.layers, bv.positions, bv.tokens, bv.prompts
    )
    sub = cands.subset(layers=[1, 3, 7])
    stats = candidate_stats(sub, hv, bv)
    unit = sub.unit()
    for i, k in enumerate(sub.keys):
        ph, pb = hv.get(k.site, k.layer, k.pos) @ unit[i], bv.get(k.site, k.layer, k.pos) @ unit[i]
        y = np.r_[np.ones(len(ph)), np.zeros(len(pb))]
        assert stats.auc[i] == pytest.approx(roc_auc_score(y, torch.cat([ph, pb]).double().numpy()), abs=1e-12)
        pooled = math.sqrt(
            ((len(ph) - 1) * ph.double().var() + (len(pb) - 1) * pb.double().var()) / (len(ph) + len(pb) - 2)
        )
        assert stats.cohens_d[i] == pytest.approx(float(ph.double().mean() - pb.double().mean()) / pooled, rel=1e-5)


def test_stats_needs_validation_keys(data):
    _, _, cands, _ = data
    hv, bv = make_acts(8, True, 5, layers=[0, 1, 2]), make_acts(8, False, 6, layers=[0, 1, 2])
    with pytest.raises(ValueError, match="lack"):
        candidate_stats(cands, hv, bv)


def test_stats_is_fast():
    """3 sites × 30 layers × 5 positions × 64 prompts × d=576; best of two runs (shared CPUs)."""
    gen = torch.Generator().manual_seed(0)
    sites, layers, positions = ["resid_pre", "resid_mid", "resid_post"], list(range(30)), [-5, -4, -3, -2, -1]

    def acts():
        return Activations(
            {s: torch.randn(30, 64, 5, 576, generator=gen) for s in sites}, layers, positions, ["t"] * 5, ["p"] * 64
        )

    keys = [CandidateKey(s, layer, pos) for s in sites for layer in layers for pos in positions]
    cands = Candidates(torch.randn(len(keys), 576, generator=gen), keys, "raw", "h")
    harmful, harmless = acts(), acts()
    elapsed = []
    for _ in range(2):
        start = time.perf_counter()
        stats = candidate_stats(cands, harmful, harmless)
        elapsed.append(time.perf_counter() - start)
    assert len(stats) == 450 and not stats.isna().any().any()
    assert min(elapsed) < 2.0, f"candidate_stats took {min(elapsed):.2f}s for 450 candidates (target < 1 s)"


def test_select_methods(data):
    _, _, cands, stats = data
    sel = select(cands, stats)
    assert set(sel.choices) == {"max_sim", "max_norm", "max_auc", "mean_of_candidates"}
    for method in ("max_sim", "max_norm", "max_auc", "mean_of_candidates"):
        key = sel.choices[method]
        assert key.site == SIGNAL and key.layer >= 4, (method, key)
    assert sel.choices["max_norm"].layer == 7
    assert abs(sel.mean_direction.norm() - 1) < 1e-6
    assert sel.direction("mean_of_candidates", cands).method == "mean_of_candidates"
    assert torch.equal(sel.direction("mean_of_candidates", cands).vector, sel.mean_direction)
    d = sel.direction("max_sim", cands)
    assert (d.site, d.layer, d.pos, d.method) == (*vars(sel.choices["max_sim"]).values(), "max_sim")
    with pytest.raises(ValueError, match="arditi"):
        sel.direction("arditi", cands)


def test_zero_norm_never_chosen():
    """Even if the zero candidates' stats rows are the best, they are not chosen."""
    harm, harmless = make_acts(16, True, 1), make_acts(16, False, 2)
    cands = diff_in_means(harm, harmless)
    stats = candidate_stats(cands, harm, harmless)
    stats.loc[stats.layer == 0, ["max_sim", "auc", "cohens_d"]] = [10.0, 1.0, 99.0]
    sel = select(cands, stats)
    assert all(k.layer != 0 for k in sel.choices.values())


def arditi_table(stats: pd.DataFrame) -> pd.DataFrame:
    table = stats[["site", "layer", "pos"]].copy()
    table["bypass"], table["induce"], table["kl"] = 10.0, 1.0, 0.05

    def at(site, layer, pos, **values):
        mask = (table.site == site) & (table.layer == layer) & (table.pos == pos)
        assert mask.sum() == 1
        for col, v in values.items():
            table.loc[mask, col] = v

    at(SIGNAL, 3, -1, bypass=-10.0, kl=0.2)  # lowest eligible-looking: kl too high
    at(SIGNAL, 7, -1, bypass=-20.0)  # layer ≥ int(0.8·8) = 6
    at(SIGNAL, 2, -1, bypass=-15.0, induce=-0.5)  # does not induce refusal
    at(SIGNAL, 4, -1, bypass=-12.0, kl=float("nan"))  # NaN score
    at(SIGNAL, 0, -1, bypass=-30.0)  # zero-norm candidate
    at(SIGNAL, 5, -2, bypass=-8.0, kl=0.1, induce=0.0)  # boundary values pass → the winner
    at(NULL, 5, -3, bypass=-7.0)
    return table


def test_select_arditi_filters(data):
    _, _, cands, stats = data
    table = arditi_table(stats)
    sel = select(cands, stats, arditi=table, n_layers=8)
    assert sel.choices["arditi"] == CandidateKey(SIGNAL, 5, -2)
    assert sel.notes["fallback"] is None and sel.notes["n_passed"] == int(sel.table.arditi_pass.sum()) > 0
    t = sel.table
    expected = (
        (t.norm > 0)
        & t[["bypass", "induce", "kl"]].notna().all(axis=1)
        & (t.layer < 6)
        & (t.kl <= 0.1)
        & (t.induce >= 0)
    )
    assert t.arditi_pass.tolist() == expected.tolist()
    assert not t.loc[(t.layer == 3) & (t.pos == -1) & (t.site == SIGNAL), "arditi_pass"].item()
    with pytest.raises(ValueError, match="n_layers"):
        select(cands, stats, arditi=table)
    with pytest.raises(ValueError, match="lacks columns"):
        select(cands, stats, arditi=table.drop(columns=["kl"]), n_layers=8)


def test_select_arditi_fallback(data):
    _, _, cands, stats = data
    table = arditi_table(stats)
    table["kl"] = 0.5  # everything fails the KL filter
    sel = select(cands, stats, arditi=table, n_layers=8)
    assert (
        sel.notes["fallback"].startswith("no candidate passed Arditi's filters") and "kl > 0.1" in sel.notes["fallback"]
    )
    assert not sel.table.arditi_pass.any()
    # staged relaxation: nothing has kl ≤ 0.25, so "kl ≤ 1, any layer, induce ≥ 0" applies, ranked by
    # balance = min(−bypass, induce): L7, L3 and the null L5 tie at 1; the lowest bypass (L7) wins.
    # L2 (induce < 0) and L0 (zero norm) never can
    assert sel.notes["fallback_level"] == "kl ≤ 1, any layer, induce ≥ 0"
    assert sel.choices["arditi"] == CandidateKey(SIGNAL, 7, -1)


def test_select_arditi_fallback_never_picks_a_model_breaking_candidate(data):
    _, _, cands, stats = data
    table = arditi_table(stats)
    table["kl"] = 0.2
    table["induce"] = -1.0  # nothing induces: Arditi's filters reject all
    broken = (table.site == SIGNAL) & (table.layer == 3) & (table.pos == -1)
    table.loc[broken, ["bypass", "kl"]] = [-100.0, 8.0]  # best bypass, but ablating it breaks the model
    sel = select(cands, stats, arditi=table, n_layers=8)
    assert "fallback balance used" in sel.notes["fallback"]
    assert sel.choices["arditi"] != CandidateKey(SIGNAL, 3, -1)
    chosen = sel.table[
        (sel.table.site == sel.choices["arditi"].site)
        & (sel.table.layer == sel.choices["arditi"].layer)
        & (sel.table.pos == sel.choices["arditi"].pos)
    ]
    assert float(chosen.kl.iloc[0]) <= 1.0


def test_direction_arithmetic():
    gen = torch.Generator().manual_seed(0)
    d = Direction(torch.randn(D, generator=gen), site=SIGNAL, layer=3, pos=-1, method="max_sim")
    e = Direction(torch.randn(D, generator=gen), site=SIGNAL, layer=4, pos=-1, method="max_sim")
    assert torch.equal((d * 2.0).vector, d.vector * 2.0)
    assert torch.equal((2.0 * d).vector, d.vector * 2.0)
    assert torch.equal((-d).vector, -d.vector)
    assert torch.equal((d + e).vector, d.vector + e.vector)
    assert torch.equal((d - e).vector, d.vector - e.vector)
    assert (d * 2.0).layer == 3 and (d + e).layer is None and (d + e).method == "max_sim"
    assert d.normalized().norm == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(d.unit, d.normalized().vector)
    assert d.d_model == D and d.norm == pytest.approx(float(d.vector.double().norm()))
    assert d.cosine(d * 3.0) == pytest.approx(1.0, abs=1e-6)
    assert d.cosine(-d) == pytest.approx(-1.0, abs=1e-6)
    with pytest.raises(ValueError, match="zero-norm direction .* cannot be normalised"):
        Direction(torch.zeros(D)).normalized()
    other = Direction(torch.randn(16, generator=gen))
    for op in (lambda: d + other, lambda: d - other, lambda: d.cosine(other)):
        with pytest.raises(ValueError, match="d_model=32 and d_model=16"):
            op()
    with pytest.raises(TypeError):
        d * e  # noqa: B018
    with pytest.raises(ValueError, match="1-D"):
        Direction(torch.zeros(2, D))


def test_direction_save_load(tmp_path, data):
    _, _, cands, _ = data
    d = cands.direction(CandidateKey(SIGNAL, 6, -1), method="max_sim", model="toy")
    path = d.save(tmp_path / "refusal")
    assert path.name == "refusal.safetensors" and path.with_suffix(".json").exists()
    loaded = Direction.load(path)
    assert torch.equal(loaded.vector, d.vector)
    for f in ("site", "layer", "pos", "method", "model", "prompt_hash", "seed", "versions"):
        assert getattr(loaded, f) == getattr(d, f), f
    assert Direction.load(tmp_path / "refusal", d_model=D).layer == 6
    with pytest.raises(ValueError, match="direction has d_model=32 but the model has d_model=896"):
        Direction.load(path, d_model=896)


def test_reprs_say_what_they_are_not_the_tensors(data):
    (harmful, _), _, cands, stats = data
    direction = cands.direction(CandidateKey(SIGNAL, 5, -1), method="max_auc", model="organism")
    text = repr(direction)
    assert text.startswith(f"Direction({SIGNAL} L5 pos -1, norm={direction.norm:.4g}, d_model={D}, ")
    assert "method=max_auc" in text and "model=organism" in text and f"prompt_hash={cands.prompt_hash}" in text
    assert repr(Direction(torch.ones(4))) == "Direction(not from a candidate, norm=2, d_model=4)"
    assert f"Candidates({len(cands)} raw, sites ['{SIGNAL}', '{NULL}'], layers 0–7, positions [-3, -2, -1]" in repr(
        cands
    )
    assert repr(cands.subset(layers=[1, 3])).count("layers [1, 3]") == 1  # not a run: listed
    assert repr(harmful).startswith(f"Activations(128 prompts, sites ['{SIGNAL}', '{NULL}'], layers 0–7, ")
    selection = select(cands, stats)
    assert f"max_auc={selection.choices['max_auc']}" in repr(selection)
    for value in (direction, cands, harmful, selection):
        assert "tensor(" not in repr(value) and len(repr(value)) < 300, repr(value)
