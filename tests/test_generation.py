"""Shared-prefix prefill: batching plans (pure) and exact agreement with the unshared path (real model)."""

from __future__ import annotations

import pytest
import torch

from workbench import data
from workbench import interventions as iv
from workbench.chat import shared_prefix_length
from workbench.generation import generate, last_token_logprobs

PROMPTS = data.load_split("harmless", "validation")[:3] + data.load_split("harmful", "validation")[:3]


def test_shared_prefix_length():
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7]]) == 5
    # every row keeps at least one token of its own
    assert shared_prefix_length([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6]]) == 4
    # too short to be worth a separate forward
    assert shared_prefix_length([[1, 2, 3, 9], [1, 2, 3, 8]]) == 0
    assert shared_prefix_length([[7, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]]) == 0


@pytest.mark.slow
def test_groups_must_match_prompts(smollm2):
    with pytest.raises(ValueError, match="one group id per prompt"):
        last_token_logprobs(smollm2, PROMPTS, hooks=lambda rows: [], groups=[0, 1])


@pytest.mark.slow
def test_shared_prefix_sweep_equals_separate_unshared_runs(smollm2):
    """Three per-row addition strengths in one shared-prefix job == three plain runs."""
    torch.manual_seed(0)
    direction = torch.randn(smollm2.cfg.d_model)
    direction = 80.0 * direction / direction.norm()
    alphas = torch.tensor([0.0, 1.0, -1.0])
    rows = PROMPTS * 3
    setting = torch.arange(3).repeat_interleave(len(PROMPTS))

    def hooks(row_ids):
        return iv.addition_hooks(direction, alpha=alphas[setting[row_ids.cpu()]], layers=[10], model=smollm2)

    texts, lp = generate(
        smollm2, rows, hooks=hooks, groups=setting, max_new_tokens=12, batch_size=8, return_logprobs=True
    )
    sep_texts, sep_lp = [], []
    for a in alphas.tolist():
        static = iv.addition_hooks(direction, alpha=a, layers=[10], model=smollm2)
        sep_texts += generate(smollm2, PROMPTS, hooks=static, max_new_tokens=12, share_prefix=False)
        sep_lp.append(last_token_logprobs(smollm2, PROMPTS, hooks=static, share_prefix=False))
    assert texts == sep_texts
    assert (lp - torch.cat(sep_lp)).abs().max().item() <= 1e-4
    # the settings really differ, so the per-group prefix copies were not mixed up
    assert texts[: len(PROMPTS)] != texts[len(PROMPTS) : 2 * len(PROMPTS)]
    assert (lp - last_token_logprobs(smollm2, rows, hooks=hooks, groups=setting)).abs().max().item() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("pos_type", ["standard", "rotary"])
def test_shared_prefix_is_exact_for_learned_and_rotary_positions(smollm2, pos_type):
    """Padding sits between the shared prefix and each suffix; positions must still be exact."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = smollm2.tokenizer
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        n_ctx=256,
        d_vocab=len(tok),
        act_fn="gelu",
        positional_embedding_type=pos_type,
        rotary_dim=8 if pos_type == "rotary" else None,
        normalization_type="LN",
        seed=0,
    )
    tiny = HookedTransformer(cfg, tokenizer=tok)
    shared = last_token_logprobs(tiny, PROMPTS, batch_size=4)
    plain = last_token_logprobs(tiny, PROMPTS, batch_size=4, share_prefix=False)
    assert (shared - plain).abs().max().item() <= 1e-5
    kw = dict(max_new_tokens=6, batch_size=4)
    assert generate(tiny, PROMPTS, **kw) == generate(tiny, PROMPTS, share_prefix=False, **kw)


@pytest.mark.slow
def test_stopped_rows_leave_the_batch_without_changing_any_row(organism, monkeypatch):
    """Refusals stop early, compliances run on: batched (rows dropped mid-way, per-row hooks rebuilt)
    generations equal one-prompt-at-a-time ones, and rows really were dropped."""
    from workbench import generation

    prompts = data.load_split("harmful", "validation")[:4] + data.load_split("harmless", "validation")[:4]
    direction = torch.randn(organism.cfg.d_model, generator=torch.Generator().manual_seed(0))
    direction = 4.0 * direction / direction.norm()
    alphas = torch.tensor([0.0, 1.0])
    rows = prompts * 2
    setting = torch.arange(2).repeat_interleave(len(prompts))

    def hooks(row_ids):
        return iv.addition_hooks(direction, alpha=alphas[setting[row_ids.cpu()]], layers=[12], model=organism)

    dropped = []
    take_rows = generation.take_rows
    monkeypatch.setattr(
        generation, "take_rows", lambda cache, index: (dropped.append(len(index)), take_rows(cache, index))
    )
    batched = generate(organism, rows, hooks=hooks, groups=setting, max_new_tokens=28, batch_size=16)
    assert dropped and min(dropped) < len(rows)  # some compaction happened
    single = generate(organism, rows, hooks=hooks, groups=setting, max_new_tokens=28, batch_size=1)
    assert batched == single
    lengths = [len(organism.tokenizer.encode(t)) for t in batched]
    assert min(lengths) < 20 < max(lengths)  # rows really stopped at different steps
