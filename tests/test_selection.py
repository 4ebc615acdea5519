"""Arditi et al.'s selection protocol: the filters, the loud fallback, the prompt filter (fast, synthetic)
and the model-based scores on the organism (slow)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from workbench import selection
from workbench.directions import CandidateKey, Candidates
from workbench.selection import arditi_scores, filter_prompts, layer_cutoff, select

D, N_LAYERS, POSITIONS = 8, 10, (-2, -1)  # cut-off int(0.8·10) = 8


def _cands(layers=range(N_LAYERS), positions=POSITIONS, d=D, scale=1.0, seed=0) -> Candidates:
    gen = torch.Generator().manual_seed(seed)
    keys = [CandidateKey("resid_pre", layer, pos) for layer in layers for pos in positions]
    vectors = torch.randn(len(keys), d, generator=gen) * scale
    vectors[[i for i, k in enumerate(keys) if k.layer == 0]] = 0.0  # layer 0: identical template embeddings
    return Candidates(vectors, keys, "raw", "test")


def _stats(cands: Candidates) -> pd.DataFrame:
    return cands.to_frame().assign(max_sim=0.0, auc=0.5, cohens_d=0.0)


def _table(cands: Candidates, **at) -> pd.DataFrame:
    """Every candidate passes weakly (bypass 0, induce 1, kl 0.05); pruned layers are NaN, as
    arditi_scores leaves them; ``at={(layer, pos): {col: value}}`` overrides."""
    table = cands.to_frame()[["site", "layer", "pos"]].assign(bypass=0.0, induce=1.0, kl=0.05)
    table["pruned"] = table.layer >= layer_cutoff(N_LAYERS)
    table.loc[table.pruned, ["bypass", "induce", "kl"]] = np.nan
    for (layer, pos), values in at.get("at", {}).items():
        mask = (table.layer == layer) & (table.pos == pos)
        assert mask.sum() == 1
        for col, v in values.items():
            table.loc[mask, col] = v
    return table


def _choose(table, cands, **kw):
    return select(cands, _stats(cands), arditi=table, n_layers=N_LAYERS, **kw)


def test_layer_cutoff_is_the_studys_int_of_080_L():
    assert [layer_cutoff(n) for n in (10, 18, 24, 30, 32)] == [8, 14, 19, 24, 25]
    with pytest.raises(ValueError, match="exclude_last_frac"):
        layer_cutoff(30, 1.0)


def test_a_passing_candidate_means_no_fallback_and_the_notes_count_it():
    cands = _cands()
    table = _table(
        cands, at={(3, -2): {"bypass": -4.0}, (5, -1): {"bypass": -6.0}, (6, -1): {"bypass": -9.0, "kl": 0.3}}
    )
    sel = _choose(table, cands)
    assert sel.choices["arditi"] == CandidateKey("resid_pre", 5, -1)  # (6, -1) is lower but fails kl
    notes = sel.notes
    assert notes["fallback"] is None and notes["fallback_level"] is None
    assert notes["layer_cutoff"] == 8
    early_nonzero = int(((sel.table.layer < 8) & (sel.table.norm > 0)).sum())
    assert notes["n_passed"] == early_nonzero - 1 == int(sel.table.arditi_pass.sum())
    # pruned candidates (NaN scores) are counted as late, not as NaN
    counts = notes["filter_counts"]
    assert counts["late"] == 2 * len(POSITIONS) and counts["nan"] == 0 and counts["kl"] == 1
    # "none" (the study) changes nothing when a candidate passes
    assert _choose(table, cands, fallback="none").choices["arditi"] == sel.choices["arditi"]


def test_no_passing_candidate_stops_the_study_loudly():
    cands = _cands()
    table = _table(cands)
    table["kl"] = 0.2  # every scored candidate fails kl ≤ 0.1
    table.loc[(table.layer == 2) & (table.pos == -1), "kl"] = np.nan
    # candidates of another site (the plane's, say) are not in the Arditi table and not counted
    keys = cands.keys + [CandidateKey("resid_mid", k.layer, k.pos) for k in cands.keys]
    mixed = Candidates(torch.cat([cands.vectors, cands.vectors]), keys, "raw", "test")
    with pytest.raises(ValueError) as err:
        select(mixed, _stats(mixed), arditi=table, n_layers=N_LAYERS, fallback="none")
    msg = str(err.value)
    n_nonzero = (N_LAYERS - 1) * len(POSITIONS)
    assert "no candidate passed Arditi's filters" in msg
    said = f"{n_nonzero} non-zero candidates: 4 at layer ≥ 8 (not scored), 1 with a NaN score, {n_nonzero - 1} with kl"
    assert said in msg
    assert "arditi_fallback" in msg and "'balance'" in msg and "'bypass'" in msg
    with pytest.raises(ValueError, match="fallback must be one of none, balance, bypass"):
        _choose(table, cands, fallback="relax")


def test_fallbacks_balance_and_bypass_say_what_they_did():
    cands = _cands()
    table = _table(
        cands,
        at={
            (3, -2): {"bypass": -8.0, "induce": 0.5},  # best bypass, weak induce
            (4, -1): {"bypass": -5.0, "induce": 4.0},  # best balance = min(5, 4)
        },
    )
    table["kl"] = table["kl"].where(table.pruned, 0.2)  # all scored fail kl ≤ 0.1 but pass kl ≤ 0.25
    balance = _choose(table, cands, fallback="balance")
    bypass = _choose(table, cands, fallback="bypass")
    assert balance.choices["arditi"] == CandidateKey("resid_pre", 4, -1)
    assert bypass.choices["arditi"] == CandidateKey("resid_pre", 3, -2)
    counts = (
        "18 non-zero candidates: 4 at layer ≥ 8 (not scored), 0 with a NaN score, 14 with kl > 0.1, 0 with induce < 0"
    )
    level = "kl ≤ 0.25 (layer < 8, induce ≥ 0)"
    assert balance.notes["fallback"] == (
        f"no candidate passed Arditi's filters ({counts}); fallback balance used: relaxed to {level}"
    )
    assert bypass.notes["fallback"].endswith(f"fallback bypass used: relaxed to {level}")
    assert balance.notes["fallback_level"] == level and balance.notes["n_passed"] == 0
    assert "\n" not in balance.notes["fallback"]


def test_filter_prompts_keeps_the_right_signs(monkeypatch):
    """The sign rule alone (scores stubbed): harmful > 0 kept, harmless < 0 kept, exactly 0 dropped."""
    scores = torch.tensor([1.5, 0.0, -2.0, 30.0, -1.0, 0.0, 2.0], dtype=torch.float64)
    seen = {}

    def fake_scores(model, prompts, score_fn, **kw):
        seen["prompts"] = list(prompts)
        return scores

    monkeypatch.setattr(selection, "last_token_scores", fake_scores)
    kept = filter_prompts(None, ["h0", "h1", "h2", "h3"], ["s0", "s1", "s2"], refusal_ids=[1])
    assert seen["prompts"] == ["h0", "h1", "h2", "h3", "s0", "s1", "s2"]  # one job for both sides
    assert kept.harmful_rows == [0, 3] and kept.harmful == ["h0", "h3"]
    assert kept.harmless_rows == [0] and kept.harmless == ["s0"]
    assert kept.counts == {"harmful": {"kept": 2, "dropped": 2}, "harmless": {"kept": 1, "dropped": 2}}
    assert torch.equal(kept.harmless_scores, scores[4:])


# ---------------------------------------------------------------- on the organism (slow)


def _organism_logodds(model, prompts, ids) -> torch.Tensor:
    """Independent refusal log-odds: full forward of each chat prompt alone, logits from model(...)."""
    from workbench.chat import encode, format_prompts

    out = []
    for row in encode(model.tokenizer, format_prompts(model.tokenizer, prompts)):
        with torch.inference_mode():
            logits = model(torch.tensor([row]))[0, -1].double()
        p_r = torch.softmax(logits, -1)[sorted(set(ids))].sum()
        out.append((torch.log(p_r + 1e-8) - torch.log(1 - p_r + 1e-8)).item())
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.slow
def test_filter_prompts_drops_exactly_the_wrong_signs_on_the_organism(organism):
    from workbench import data
    from workbench.metrics import refusal_token_ids

    ids = refusal_token_ids(organism.tokenizer)
    harmful_set, harmless_set = (
        data.load_split("harmful", "validation")[:4],
        data.load_split("harmless", "validation")[:4],
    )
    harmful, harmless = harmful_set[:3] + harmless_set[:2], harmless_set[2:] + harmful_set[3:]  # some wrong-class
    kept = filter_prompts(organism, harmful, harmless, refusal_ids=ids, batch_size=3)
    s_h, s_s = _organism_logodds(organism, harmful, ids), _organism_logodds(organism, harmless, ids)
    assert kept.harmful_rows == [i for i, s in enumerate(s_h.tolist()) if s > 0]
    assert kept.harmless_rows == [i for i, s in enumerate(s_s.tolist()) if s < 0]
    assert kept.counts["harmful"]["dropped"] + kept.counts["harmless"]["dropped"] > 0  # the mix was caught
    assert (kept.harmful_scores - s_h).abs().max() < 1e-3 and (kept.harmless_scores - s_s).abs().max() < 1e-3


@pytest.mark.slow
def test_arditi_scores_every_position_pruned_and_resumed_equal_a_plain_loop(organism):
    """All post-instruction positions, pruned late layers, one bypass+kl job and induce resumed from
    the base residual == one candidate at a time with plain hooks and full forwards."""
    from workbench import data
    from workbench import interventions as iv
    from workbench.generation import last_token_logprobs
    from workbench.metrics import first_token_kl, refusal_logodds, refusal_token_ids

    model, L = organism, organism.cfg.n_layers
    cut = layer_cutoff(L)
    layers, positions = [0, 3, cut - 1, cut], [-6, -1]
    gen = torch.Generator().manual_seed(1)
    keys = [CandidateKey("resid_pre", layer, pos) for layer in layers for pos in positions]
    vectors = torch.randn(len(keys), model.cfg.d_model, generator=gen) * 6.0
    vectors[: len(positions)] = 0.0  # layer 0: zero norm
    cands = Candidates(vectors, keys, "raw", "test")
    harmful, harmless = data.load_split("harmful", "validation")[:3], data.load_split("harmless", "validation")[:3]
    ids = refusal_token_ids(model.tokenizer)
    kw = dict(refusal_ids=ids, batch_size=8, progress=False)
    table = arditi_scores(model, cands, harmful, harmless, **kw)
    assert [CandidateKey(r.site, r.layer, r.pos) for r in table.itertuples()] == keys  # cands' order
    assert table.pruned.tolist() == [k.layer >= cut for k in keys]
    unscored = table.pruned | (table.layer == 0)
    assert table.loc[unscored, ["bypass", "induce", "kl"]].isna().all().all()
    assert table.loc[~unscored, ["bypass", "induce", "kl"]].notna().all().all()

    base = last_token_logprobs(model, harmless)
    for i, key in enumerate(keys):
        if unscored[i]:
            continue
        ablate = iv.ablation_hooks(model, vectors[i], "all")
        add = iv.addition_hooks(vectors[i], 1.0, layers=[key.layer], site=key.site, model=model)
        row = table.iloc[i]
        bypass = refusal_logodds(last_token_logprobs(model, harmful, hooks=ablate), ids).mean().item()
        kl = first_token_kl(base, last_token_logprobs(model, harmless, hooks=ablate), eps=1e-6).mean().item()
        induce = refusal_logodds(last_token_logprobs(model, harmless, hooks=add), ids).mean().item()
        assert row.bypass == pytest.approx(bypass, abs=1e-4), key
        assert row.kl == pytest.approx(kl, abs=1e-5), key
        assert row.induce == pytest.approx(induce, abs=1e-4), key
    # positions really differ: same layer, different position -> different candidate -> different scores
    at3 = table[table.layer == 3]
    assert at3.bypass.nunique() == len(positions) and at3.induce.nunique() == len(positions)

    # induce resumed from the cached base residual == the full forward: bitwise when the batches pad
    # alike (one row per batch); otherwise within the full forward's own padding noise (tested in
    # test_generation)
    small = cands.subset(layers=[3, cut - 1])
    kw1 = dict(kw, batch_size=1)
    resumed = arditi_scores(model, small, harmful[:1], harmless[:2], **kw1)
    full = arditi_scores(model, small, harmful[:1], harmless[:2], reuse_base=False, **kw1)
    pd.testing.assert_frame_equal(resumed, full, check_exact=True)
    # prune=False scores the late layers too
    late = arditi_scores(model, cands.subset(layers=[cut]), harmful[:1], harmless[:1], prune=False, **kw)
    assert not late.pruned.any() and late[["bypass", "induce", "kl"]].notna().all().all()
