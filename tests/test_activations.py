"""The activation cache equals a full run_with_cache, keeps only what was asked, and fails clearly."""

from __future__ import annotations

import pytest
import torch

from workbench import data
from workbench.activations import cache_activations, post_instruction_positions
from workbench.chat import format_prompts, tokenize

PROMPTS = data.load_split("harmful", "validation")[:4] + data.load_split("harmless", "validation")[:4]
SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


@pytest.mark.slow
def test_values_equal_run_with_cache(smollm2):
    layers, positions = [0, 7, 29], [-5, -3, -1]
    acts = cache_activations(
        smollm2, PROMPTS, sites=SITES, layers=layers, positions=positions, batch_size=3, progress=False
    )
    tokens, mask = tokenize(smollm2.tokenizer, format_prompts(smollm2.tokenizer, PROMPTS))
    with torch.inference_mode():
        _, full = smollm2.run_with_cache(tokens, attention_mask=mask, return_type=None)
    for site in SITES:
        for li, layer in enumerate(layers):
            ref = full[site, layer][:, positions]  # [prompt, pos, d_model]
            assert acts.acts[site].shape == (3, len(PROMPTS), 3, smollm2.cfg.d_model)
            # float32 rounding: the shared template prefix runs as its own forward (different
            # matmul grouping), and late residuals reach hundreds, so the bound scales with them
            bound = 1e-4 + 2e-6 * ref.abs().max().item()
            assert (acts.acts[site][li] - ref).abs().max().item() <= bound, (site, layer)
    assert acts.get("attn_out", 7, -3).shape == (len(PROMPTS), smollm2.cfg.d_model)


@pytest.mark.slow
def test_default_positions_are_the_post_instruction_tokens(smollm2):
    positions = post_instruction_positions(smollm2)
    acts = cache_activations(smollm2, PROMPTS[:2], layers=[3], progress=False)
    assert acts.positions == positions == list(range(-6, 0))
    assert acts.tokens == ["<|im_end|>", "Ċ", "<|im_start|>", "ass", "istant", "Ċ"]


@pytest.mark.slow
def test_memory_scales_with_positions_not_sequence_length(smollm2):
    short = ["Hi."] * 2
    long = ["Please " + "tell me about the history of the printing press in detail. " * 20] * 2
    a = cache_activations(smollm2, short, layers=[1, 2], positions=[-2, -1], progress=False)
    b = cache_activations(smollm2, long, layers=[1, 2], positions=[-2, -1], progress=False)

    def size(acts):
        return sum(t.untyped_storage().nbytes() for t in acts.acts.values())

    assert size(a) == size(b) == 2 * 2 * 2 * smollm2.cfg.d_model * 4


@pytest.mark.slow
def test_bad_requests_fail_clearly(smollm2):
    with pytest.raises(ValueError, match="unknown site 'resid'; choose one of resid_pre"):
        cache_activations(smollm2, PROMPTS, sites=("resid",))
    with pytest.raises(ValueError, match="layer 30 is out of range"):
        cache_activations(smollm2, PROMPTS, layers=[30])
    with pytest.raises(ValueError, match="negative offsets"):
        cache_activations(smollm2, PROMPTS, positions=[3])
    with pytest.raises(ValueError, match="before the start"):
        cache_activations(smollm2, ["Hi"], positions=[-500])
    with pytest.raises(ValueError, match="empty"):
        cache_activations(smollm2, [])
    acts = cache_activations(smollm2, PROMPTS[:1], layers=[2], positions=[-1], progress=False)
    with pytest.raises(KeyError, match="layer 5 was not cached"):
        acts.get("resid_pre", 5, -1)
