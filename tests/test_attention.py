"""The copy-free attention forward computes what TransformerLens' computes, cached or not, and
steps aside whenever a hook looks inside attention."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from workbench.fastpath import attention

VOCAB = 50


def _tiny(pos_type: str, n_kv: int | None = None) -> HookedTransformer:
    """Llama-like (RMSNorm, SiLU, gated MLP) with rotary positions, GPT-2-like with learned ones."""
    return tiny_model(
        llama=pos_type == "rotary", positional_embedding_type=pos_type, n_key_value_heads=n_kv, d_vocab=VOCAB
    )


def _batch():
    """Random tokens, left-padded: row 1 has 3 pads, row 2 has 6."""
    torch.manual_seed(1)
    tokens = torch.randint(1, VOCAB, (3, 12))
    mask = torch.ones_like(tokens)
    mask[1, :3] = 0
    mask[2, :6] = 0
    return tokens, mask


def _cached_logits(model, tokens, mask, split: int):
    """Prefill ``split`` positions into a KV cache, then feed the rest one token at a time, the way
    ``workbench.generation`` decodes; the logits of every fed position, ``[batch, pos, vocab]``."""
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, tokens.shape[0])
    out = [model(tokens[:, :split], attention_mask=mask[:, :split], past_kv_cache=cache)]
    for j in range(split, tokens.shape[1]):
        out.append(model(tokens[:, j : j + 1], attention_mask=mask[:, j : j + 1], past_kv_cache=cache))
    return torch.cat(out, dim=1)


CONFIGS = [("rotary", 2), ("rotary", None), ("standard", None)]  # GQA 4→2, plain rotary, learned


@pytest.mark.parametrize("pos_type,n_kv", CONFIGS)
@torch.inference_mode()
def test_fast_forward_equals_transformer_lens(pos_type, n_kv):
    model = _tiny(pos_type, n_kv)
    tokens, mask = _batch()
    real = mask.bool()
    tl_full = model(tokens, attention_mask=mask)
    tl_cached = _cached_logits(model, tokens, mask, split=7)
    assert attention.install(model) == model.cfg.n_layers
    fast_full = model(tokens, attention_mask=mask)
    fast_cached = _cached_logits(model, tokens, mask, split=7)
    assert (fast_full - tl_full)[real].abs().max().item() <= 1e-5
    assert (fast_cached - tl_cached)[real].abs().max().item() <= 1e-5
    assert (fast_cached - fast_full)[real].abs().max().item() <= 1e-5
    assert attention.uninstall(model) == model.cfg.n_layers
    assert torch.equal(model(tokens, attention_mask=mask), tl_full)


@torch.inference_mode()
def test_shared_prefix_reindexing_recomputes_the_rotated_keys():
    """``generation._prefill`` replaces ``past_keys`` by a re-indexed copy; the side cache must follow."""
    model = _tiny("rotary", 2)
    attention.install(model)
    tokens, _ = _batch()
    prefix, rest = tokens[:2, :5], tokens[:, 5:]
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", 2)
    model(prefix, attention_mask=torch.ones_like(prefix), past_kv_cache=cache)
    slot = torch.tensor([1, 0, 1])
    for entry in cache.entries:
        entry.past_keys, entry.past_values = entry.past_keys[slot], entry.past_values[slot]
    cache.previous_attention_mask = cache.previous_attention_mask[slot]
    got = model(rest, attention_mask=torch.ones_like(rest), past_kv_cache=cache)
    full = torch.cat([prefix[slot], rest], dim=1)
    want = model(full)[:, 5:]
    assert (got - want).abs().max().item() <= 1e-5


@torch.inference_mode()
def test_cache_grows_in_place_over_a_long_decode():
    """50 one-token steps outgrow the buffers twice; values stay TL's, ``past_keys`` are views."""
    model = _tiny("rotary", 2)
    torch.manual_seed(2)
    tokens = torch.randint(1, VOCAB, (2, 53))
    mask = torch.ones_like(tokens)
    mask[1, :2] = 0
    want = model(tokens, attention_mask=mask)
    attention.install(model)
    got = _cached_logits(model, tokens, mask, split=3)
    assert (got - want)[mask.bool()].abs().max().item() <= 1e-5
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", 2)
    model(tokens[:, :3], attention_mask=mask[:, :3], past_kv_cache=cache)
    entry, capacities = cache.entries[0], set()
    for j in range(3, 53):
        model(tokens[:, j : j + 1], attention_mask=mask[:, j : j + 1], past_kv_cache=cache)
        side = getattr(entry, attention._SIDE)
        capacities.add(side.capacity)
        assert entry.past_keys.shape[1] == j + 1
        assert entry.past_keys.data_ptr() == side.raw_k.data_ptr()  # a view of the buffer, no copy
    assert len(capacities) >= 3  # it grew more than once


@torch.inference_mode()
def test_hooks_inside_attention_run_transformer_lens_forward():
    model = _tiny("rotary", 2)
    attention.install(model)
    tokens, mask = _batch()
    calls = []
    original = model.blocks[0].attn._workbench_tl_forward
    model.blocks[0].attn._workbench_tl_forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    model(tokens, attention_mask=mask)
    assert calls == []  # no internal hook: the fast path
    _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=lambda n: n.endswith("hook_pattern"))
    assert calls == [1]
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert pattern.shape == (3, 4, 12, 12)
    torch.testing.assert_close(
        pattern.sum(-1)[mask.bool()[:, None, :].expand(3, 4, 12)], torch.ones(4 * int(mask.sum()))
    )
    # hook_q / hook_k / hook_v are TL's projections and fire on the fast path too
    seen = []
    model.run_with_hooks(
        tokens, attention_mask=mask, fwd_hooks=[("blocks.0.attn.hook_v", lambda v, hook: seen.append(v.shape))]
    )
    assert seen == [(3, 12, 2, 8)] and calls == [1]


def test_unsupported_attention_keeps_transformer_lens_forward():
    model = _tiny("rotary")
    model.blocks[1].attn.attn_type = "local"  # e.g. Gemma-2's sliding-window layers
    assert attention.install(model) == 1
    assert hasattr(model.blocks[0].attn, "_workbench_tl_forward")
    assert not hasattr(model.blocks[1].attn, "_workbench_tl_forward")
    assert attention.install(model) == 1  # idempotent


@pytest.mark.slow
@torch.inference_mode()
def test_fast_attention_on_smollm2_matches_transformer_lens(smollm2):
    """The real model: logits to 1e-4, greedy generations (with an intervention) identical."""
    from workbench import data
    from workbench import interventions as iv
    from workbench.chat import format_prompts, tokenize
    from workbench.generation import generate

    prompts = data.load_split("harmful", "validation")[:4] + data.load_split("harmless", "validation")[:4]
    tokens, mask = tokenize(smollm2.tokenizer, format_prompts(smollm2.tokenizer, prompts))
    assert all(hasattr(b.attn, "_workbench_tl_forward") for b in smollm2.blocks)  # load_model installs it
    direction = torch.randn(smollm2.cfg.d_model, generator=torch.Generator().manual_seed(0))
    hooks = iv.ablation_hooks(smollm2, direction, "all")
    fast = smollm2(tokens, attention_mask=mask)
    fast_texts = generate(smollm2, prompts, hooks=hooks, max_new_tokens=16)
    try:
        attention.uninstall(smollm2)
        slow = smollm2(tokens, attention_mask=mask)
        slow_texts = generate(smollm2, prompts, hooks=hooks, max_new_tokens=16)
    finally:
        attention.install(smollm2)
    assert (fast - slow)[mask.bool()].abs().max().item() <= 1e-4
    assert fast_texts == slow_texts


def test_fast_paths_stay_off_on_an_untested_transformer_lens(monkeypatch):
    from workbench import fastpath

    model = _tiny("rotary", 2)
    model.cfg.original_architecture = "LlamaForCausalLM"  # a family on the allow-list
    monkeypatch.setattr(fastpath, "TESTED_TL", ("0.0",))
    with pytest.warns(UserWarning, match="not a tested release"):
        engaged = fastpath.install(model)
    assert engaged == {"layout": False, "attention": 0, "unembed": False}
    assert not hasattr(model.blocks[0].attn, "_workbench_tl_forward")
    monkeypatch.undo()
    assert fastpath.install(model)["attention"] == len(model.blocks)
