"""Experiment helpers on the real SmolLM2: cross-entropy of reference answers."""

from __future__ import annotations

import pytest
import torch

from workbench import data
from workbench import interventions as iv
from workbench.experiments import reference_cross_entropy
from workbench.generation import generate


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
    from workbench.config import RunContext
    from workbench.directions import CandidateKey, Candidates
    from workbench.experiments import rotation_variant_sweep
    from workbench.generation import last_token_logprobs
    from workbench.metrics import first_token_kl, refusal_logodds, refusal_token_ids
    from workbench.planes import build_plane

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
    table = rotation_variant_sweep(smollm2, variants, prompts, [0.0, 90.0, 200.0], ctx=ctx)
    assert len(table) == 2 * 2 * 3 and set(table.n) == {2, 3}
    bases = {split: last_token_logprobs(smollm2, p) for split, p in prompts.items()}
    for row in table.itertuples():
        hooks = iv.rotation_hooks(smollm2, plane, row.angle, site=row.site, adaptive="off")
        lp = last_token_logprobs(smollm2, prompts[row.split], hooks=hooks)
        assert row.logodds == pytest.approx(float(refusal_logodds(lp, ids).mean()), abs=1e-4), row
        assert row.kl == pytest.approx(float(first_token_kl(bases[row.split], lp).mean()), abs=1e-4), row
    post, pre = (table[table.variant == v].logodds.to_numpy() for v in ("post", "pre"))
    assert abs(post - pre).max() > 1e-2  # the two sites really differ
