"""Prefix KV caches: one slot per hook setting, chunked runs, seeding a batch by slot."""

import pytest
import torch
from tiny_models import tiny_model

from workbench.kv import run_prefix, take_rows


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(llama=True, n_layers=3, n_key_value_heads=2, gated_mlp=False)


def _shift(amounts):
    """Slot i adds amounts[i] to the residual before block 1."""

    def hooks_for(chunk):
        shift = torch.tensor([float(amounts[i]) for i in chunk])[:, None, None]
        return [("blocks.1.hook_resid_pre", lambda x, hook: x + shift)]

    return hooks_for


def test_slots_follow_their_hooks_and_chunking_changes_nothing(tiny):
    prefix, amounts = [3, 7, 1, 9, 4], [0.0, 1.0, 2.0, 0.0, 3.0]
    whole = run_prefix(tiny, prefix, n_slots=5, hooks_for=_shift(amounts), batch_size=8)
    chunked = run_prefix(tiny, prefix, n_slots=5, hooks_for=_shift(amounts), batch_size=2)
    assert whole.n_slots == chunked.n_slots == 5 and whole.length == 5
    for (k1, v1), (k2, v2) in zip(whole.per_layer, chunked.per_layer):
        assert torch.allclose(k1, k2, atol=1e-6) and torch.allclose(v1, v2, atol=1e-6)
    k0, _ = whole.per_layer[0]  # before the hook: every slot is the same
    assert torch.equal(k0[0], k0[4])
    k1, _ = whole.per_layer[1]  # after it: slots 0 and 3 (no shift) agree, slot 1 differs
    assert torch.allclose(k1[0], k1[3], atol=1e-6) and not torch.allclose(k1[0], k1[1], atol=1e-3)


def test_seeded_cache_continues_like_the_full_sequence(tiny):
    prefix, suffix = [3, 7, 1, 9], [[5, 6], [8, 2]]
    kv = run_prefix(tiny, prefix, n_slots=2, hooks_for=_shift([0.0, 2.0]))
    cache = kv.seed(tiny, torch.tensor([1, 0]))  # row 0 from slot 1, row 1 from slot 0
    tokens = torch.tensor(suffix)
    with tiny.hooks(
        fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: x + torch.tensor([2.0, 0.0])[:, None, None])]
    ):
        seeded = tiny(tokens, attention_mask=torch.ones_like(tokens), past_kv_cache=cache)[:, -1]
        full = tiny(torch.tensor([prefix + s for s in suffix]))[:, -1]
    assert (seeded - full).abs().max().item() < 1e-4


def test_take_rows_repeats_and_drops(tiny):
    kv = run_prefix(tiny, [1, 2, 3], n_slots=2, hooks_for=_shift([0.0, 1.0]))
    cache = kv.seed(tiny, torch.tensor([0, 1, 1]))
    take_rows(cache, torch.tensor([2, 0]))
    keys, _ = kv.per_layer[2]
    assert torch.equal(cache.entries[2].past_keys, keys[torch.tensor([1, 0])])
    assert cache.previous_attention_mask.shape == (2, 3)


def test_empty_prefix_fails_clearly(tiny):
    with pytest.raises(ValueError, match="empty prefix"):
        run_prefix(tiny, [])


def test_a_prefix_started_at_a_block_equals_the_full_run_there(tiny):
    """From the unhooked resid_pre at block 1, slots under a block-1 hook get the full run's keys and
    values at blocks 1.. (bitwise: same shapes), and nothing below."""
    prefix, amounts = [3, 7, 1, 9, 4], [0.0, 2.0]
    seen = {}
    run_prefix(
        tiny, prefix, hooks_for=lambda chunk: [("blocks.1.hook_resid_pre", lambda x, hook: seen.setdefault(1, x))]
    )
    one = dict(n_slots=2, hooks_for=_shift(amounts), batch_size=1)  # one slot per forward, as the capture
    full = run_prefix(tiny, prefix, **one)
    started = run_prefix(tiny, prefix, start_at_layer=1, start_resid=seen[1][0], **one)
    assert started.per_layer[0][0].shape[1] == 0  # block 0 did not run
    for layer in (1, 2):
        for a, b in zip(full.per_layer[layer], started.per_layer[layer]):
            assert torch.equal(a, b)
    assert not torch.equal(full.per_layer[1][0][0], full.per_layer[1][0][1])  # the hook acts
    with pytest.raises(ValueError, match="go together"):
        run_prefix(tiny, prefix, start_at_layer=1)
    with pytest.raises(ValueError, match="covers 4 positions"):
        run_prefix(tiny, prefix, start_at_layer=1, start_resid=seen[1][0, :4])
