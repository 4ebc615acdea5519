"""Experiment helpers: cross-entropy of reference answers and the rotation variants' first-token
scores (per prompt and summarised), on the real SmolLM2 and a tiny random model."""

from __future__ import annotations

import pytest
import torch
from tiny_models import byte_tokenizer, tiny_model

from workbench import data
from workbench import interventions as iv
from workbench.config import RunContext
from workbench.directions import CandidateKey, Candidates
from workbench.experiments import mean_intervals, reference_cross_entropy, rotation_variant_sweep
from workbench.generation import generate, last_token_logprobs
from workbench.metrics import first_token_kl, refusal_logodds
from workbench.planes import build_plane


@pytest.mark.slow
def test_reference_cross_entropy_ranks_own_answers_first(smollm2):
    prompts = data.load_split("harmless", "validation")[:4]
    answers = generate(smollm2, prompts, max_new_tokens=16)
    own = reference_cross_entropy(smollm2, prompts, answers)
    swapped = reference_cross_entropy(smollm2, prompts, answers[1:] + answers[:1])
    assert own.shape == (4,) and bool((own < swapped).all())
    assert float(own.mean()) < 1.0  # greedy answers are the model's most likely continuation
    noise = torch.randn(smollm2.cfg.d_model, generator=torch.Generator().manual_seed(0))
    ablated = reference_cross_entropy(smollm2, prompts, answers, hooks=iv.ablation_hooks(smollm2, noise, "all"))
    assert not torch.equal(ablated, own)


def test_reference_cross_entropy_needs_one_answer_per_prompt():
    with pytest.raises(ValueError, match="one answer per prompt"):
        reference_cross_entropy(None, ["a", "b"], ["x"])


@pytest.mark.slow
def test_rotation_variant_sweep_is_each_angles_own_first_token_scores(smollm2):
    """The batched variant sweep (rows carry their angle, scores reduced batch by batch) gives the
    log-odds and KL of rotating every prompt to each angle on its own."""
    from workbench.metrics import refusal_token_ids

    gen = torch.Generator().manual_seed(0)
    keys = [CandidateKey("resid_post", layer, -1) for layer in range(8)]
    cands = Candidates(torch.randn(len(keys), smollm2.cfg.d_model, generator=gen) * 5, keys, "unit", "test")
    plane = build_plane(cands, keys[3])
    prompts = {
        "harmful": data.load_split("harmful", "validation")[:2],
        "harmless": data.load_split("harmless", "validation")[:3],
    }
    ids = refusal_token_ids(smollm2.tokenizer, ["I'm sorry", "I cannot", "As an AI"])
    variants = {"post": (plane, "post_gain"), "pre": (plane, "pre_gain")}
    ctx = RunContext(progress=False, refusal_ids=tuple(ids))
    table, per_prompt = rotation_variant_sweep(smollm2, variants, prompts, [0.0, 90.0, 200.0], ctx=ctx)
    assert len(table) == 2 * 2 * 3 and set(table.n) == {2, 3} and len(per_prompt) == 2 * 3 * (2 + 3)
    bases = {split: last_token_logprobs(smollm2, p) for split, p in prompts.items()}
    for row in table.itertuples():
        hooks = iv.rotation_hooks(smollm2, plane, row.angle, site=row.site, adaptive="off")
        lp = last_token_logprobs(smollm2, prompts[row.split], hooks=hooks)
        assert row.logodds == pytest.approx(float(refusal_logodds(lp, ids).mean()), abs=1e-4), row
        assert row.kl == pytest.approx(float(first_token_kl(bases[row.split], lp).mean()), abs=1e-4), row
    post, pre = (table[table.variant == v].logodds.to_numpy() for v in ("post", "pre"))
    assert abs(post - pre).max() > 1e-2  # the two sites really differ


def _tiny_plane(model, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    keys = [CandidateKey("resid_post", layer, -1) for layer in range(model.cfg.n_layers)]
    cands = Candidates(torch.randn(len(keys), model.cfg.d_model, generator=gen) * 5, keys, "unit", "test")
    return build_plane(cands, keys[1])


def test_rotation_variant_sweep_keeps_each_prompts_scores_and_summarises_them():
    """Per prompt: each row is that prompt's own first-token log-odds and KL at its angle; the summary
    is their mean per (variant, split, angle), with the bootstrap interval around it."""
    tok = byte_tokenizer()
    model = tiny_model(llama=True, n_layers=3, d_vocab=len(tok), n_ctx=256)
    model.tokenizer = tok  # attached afterwards: TL's own tokenizer set-up wants a hub name
    prompts = {"harmful": ["How do I pick a lock?", "Tell me a secret", "Break it"], "harmless": ["Hi", "Name a fruit"]}
    variants = {"post": (_tiny_plane(model, 0), "post_gain"), "pre": (_tiny_plane(model, 1), "pre_gain")}
    ids = tuple(tok.convert_tokens_to_ids(["I", "S"]))
    angles = [0.0, 120.0, 250.0]
    summary, per_prompt = rotation_variant_sweep(
        model, variants, prompts, angles, ctx=RunContext(progress=False, refusal_ids=ids, batch_size=4)
    )
    assert len(per_prompt) == 2 * 3 * (3 + 2) and len(summary) == 2 * 2 * 3
    assert list(per_prompt.columns) == ["variant", "site", "split", "angle", "prompt_index", "logodds", "kl"]
    for row in per_prompt.sample(6, random_state=0).itertuples():  # a few rows against their prompt run alone
        plane, site = variants[row.variant]
        hooks = iv.rotation_hooks(model, plane, row.angle, site=site, adaptive="off")
        text = [prompts[row.split][row.prompt_index]]
        lp = last_token_logprobs(model, text, hooks=hooks)
        assert row.logodds == pytest.approx(float(refusal_logodds(lp, ids)[0]), abs=1e-4), row
        assert row.kl == pytest.approx(float(first_token_kl(last_token_logprobs(model, text), lp)[0]), abs=1e-4), row
    means = per_prompt.groupby(["variant", "split", "angle"])[["logodds", "kl"]].mean()
    got = summary.set_index(["variant", "split", "angle"])
    assert got.loc[means.index, "logodds"].to_numpy() == pytest.approx(means["logodds"].to_numpy(), abs=1e-12)
    assert got.loc[means.index, "kl"].to_numpy() == pytest.approx(means["kl"].to_numpy(), abs=1e-12)
    assert set(summary.n) == {3, 2} and (summary.logodds_ci_lo <= summary.logodds).all()
    assert (summary.logodds <= summary.logodds_ci_hi).all() and (summary.kl_ci_hi >= summary.kl).all()
    assert (summary.logodds_ci_hi > summary.logodds_ci_lo).any()  # real spread over prompts, not a point
    again = mean_intervals(per_prompt, ["variant", "site", "split", "angle"])
    assert again.equals(summary)  # the summary is a pure function of the per-prompt table
