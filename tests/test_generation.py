"""Shared-prefix prefill: batching plans (pure) and exact agreement with the unshared path (real model)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

from workbench import data
from workbench import interventions as iv
from workbench.chat import shared_prefix_length
from workbench.generation import generate, last_token_logprobs, last_token_scores

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
    tok = smollm2.tokenizer
    tiny = tiny_model(
        tokenizer=tok,
        n_ctx=256,
        d_vocab=len(tok),
        positional_embedding_type=pos_type,
        rotary_dim=8 if pos_type == "rotary" else None,
    )
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


def _study_logodds(logits: torch.Tensor, ids) -> float:
    """Arditi et al.'s refusal_score from logits, every step in float64."""
    p_r = torch.softmax(logits.double(), dim=-1)[..., sorted(set(ids))].sum(-1)
    return float(torch.log(p_r + 1e-8) - torch.log(1 - p_r + 1e-8))


@pytest.mark.slow
def test_logprobs_are_float64_and_give_the_studys_logodds_at_saturation(organism):
    """Scores and generation's first-token log-probs are a float64 log-softmax: the refusal log-odds
    equals the study's float64 computation on the logits the path unembeds (≤ 1e-9) at saturation
    (log-odds > 15), where a float32 log-softmax is off by > 0.1; those logits are model(...)'s."""
    from workbench.chat import encode, format_prompts
    from workbench.metrics import refusal_logodds, refusal_token_ids

    ids = refusal_token_ids(organism.tokenizer)
    prompt = data.load_split("harmful", "validation")[0]  # the organism alone scores ~5 on it
    # saturate: push the final residual along "I"'s unembedding (gain undone), as a strong refusal would
    push = (organism.W_U[:, ids[0]] / organism.ln_final.w).detach()
    hooks = iv.addition_hooks(700.0 * push / push.norm(), 1.0, layers=[-1], site="resid_post", model=organism)
    captured: list[torch.Tensor] = []
    handle = organism.unembed.register_forward_hook(lambda mod, inp, out: captured.append(out.detach()[:, -1]))
    try:
        lp = last_token_logprobs(organism, [prompt], hooks=hooks)
        _, lp_gen = generate(organism, [prompt], hooks=hooks, max_new_tokens=1, return_logprobs=True)
    finally:
        handle.remove()
    assert lp.dtype == lp_gen.dtype == torch.float64 and len(captured) == 2
    for logits, ours in ((captured[0], lp), (captured[1], lp_gen)):
        ref = _study_logodds(logits, ids)
        assert ref > 15
        assert abs(refusal_logodds(ours, ids).item() - ref) <= 1e-9
        f32 = refusal_logodds(torch.log_softmax(logits.float(), dim=-1), ids).item()
        assert abs(f32 - ref) > 0.1  # what the check above guards against
    row = encode(organism.tokenizer, format_prompts(organism.tokenizer, [prompt]))[0]
    with torch.inference_mode(), organism.hooks(fwd_hooks=hooks):
        full = organism(torch.tensor([row]))[0, -1]
    assert (full - captured[0][0]).abs().max().item() <= 1e-3
    assert abs(_study_logodds(full, ids) - _study_logodds(captured[0], ids)) <= 1e-3


@pytest.mark.slow
def test_last_token_scores_reduces_each_batch(organism):
    prompts = PROMPTS[:5]
    lp = last_token_logprobs(organism, prompts, batch_size=2)

    def top_and_row(logprobs, rows):
        assert logprobs.dtype == torch.float64 and logprobs.shape[0] == len(rows) <= 2
        return torch.stack([logprobs.max(-1).values, rows.double()], -1)

    got = last_token_scores(organism, prompts, top_and_row, batch_size=2)
    assert got.shape == (5, 2) and got.dtype == torch.float64
    assert got[:, 1].tolist() == list(range(5))  # row ids are prompt indices, results in prompt order
    assert (got[:, 0] - lp.max(-1).values).abs().max().item() <= 1e-6
    with pytest.raises(ValueError, match="return one value per row"):
        last_token_scores(organism, prompts, lambda logprobs, rows: logprobs.sum(), batch_size=2)
    with pytest.raises(ValueError, match="empty"):
        last_token_scores(organism, [], top_and_row)


@pytest.mark.slow
def test_rows_resumed_from_the_base_residual_equal_full_forwards(organism):
    """Rows whose hooks act at block l or later start from the unhooked resid_pre[l] (computed once
    per distinct prompt): same log-probs as the full forward, and block 0 runs far fewer rows."""
    from workbench.generation import repeat_prompts
    from workbench.metrics import refusal_logodds, refusal_token_ids

    prompts = PROMPTS
    layers = torch.tensor([0, 7, 19])
    rows, setting = repeat_prompts(prompts, len(layers))
    vec = torch.randn(organism.cfg.d_model, generator=torch.Generator().manual_seed(0))
    vec = 6.0 * vec / vec.norm()

    def hooks(row_ids):
        s = setting[row_ids.cpu()]
        return iv.addition_sweep_hooks(organism, vec.expand(len(s), -1), layers[s])

    block0: list[int] = []
    count = [("blocks.0.hook_resid_pre", lambda x, hook: block0.append(x.shape[0]))]
    kw = dict(hooks=hooks, groups=setting)
    with organism.hooks(fwd_hooks=count):
        full = last_token_scores(organism, rows, batch_size=1, **kw)
        n_full, block0[:] = sum(block0), []
        resumed = last_token_scores(organism, rows, start_layers=layers[setting], batch_size=1, **kw)
    # full: 3 group prefixes + 18 rows; resumed: 1 base prefix + 6 distinct prompts (+ the layer-0 rows' own)
    assert n_full == 3 + len(rows) and sum(block0) == 1 + len(prompts) + 1 + len(prompts)
    # one row per batch: every matmul has the same shape both ways, so the results are bitwise equal
    assert torch.equal(full, resumed)
    n = len(prompts)
    assert (full[n : 2 * n] - full[:n]).abs().max().item() > 1e-2  # the settings really differ
    # batched (the full job pads 18 rows together, the resumed one 6 per layer): other matmul shapes, so
    # float32 sums in another order through 30 blocks; the full forward itself moves that much under
    # another batching (measured: ≤ 1e-4 on AVX2 / EPYC, 4.2e-4 on AVX-512 with AMX). The bound sits
    # ~5x above that and 5x below the smallest real difference asserted above (settings: > 1e-2).
    tol = 2e-3
    batched = {
        name: last_token_scores(organism, rows, start_layers=start, batch_size=len(rows), **kw)
        for name, start in (("full", None), ("resumed", layers[setting]))
    }
    noise = (batched["full"] - full).abs().max().item()
    gap = (batched["resumed"] - batched["full"]).abs().max().item()
    assert gap <= tol and noise <= tol, (gap, noise)
    ids = refusal_token_ids(organism.tokenizer)
    assert (refusal_logodds(batched["resumed"], ids) - refusal_logodds(batched["full"], ids)).abs().max() <= tol
    with pytest.raises(ValueError, match="acts before block"):
        last_token_scores(organism, rows, start_layers=layers[setting] + 1, **kw)
    with pytest.raises(ValueError, match="give them one start layer"):
        last_token_scores(organism, rows, start_layers=torch.arange(len(rows)) % 2, **kw)
