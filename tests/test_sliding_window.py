"""Sliding-window layers under batching, left padding and a shared prefix (issue 16).

TransformerLens windows by column: a query sees the ``window`` columns before it. Left padding
alone keeps a row's real tokens contiguous at the right, so the window still holds the right real
tokens; the shared-prefix layout ``[prefix][pad][suffix]`` puts pads *inside* a row, where they
use up window slots. Prompts here share a 5-token prefix and are 6–14 tokens long with window 8,
so the pads matter; every batched result must equal the one-prompt-at-a-time result (and HF's).
"""

from __future__ import annotations

import pytest
import torch
from test_families import _built  # the tiny offline Mistral / Gemma-2 builders, through load_model

from workbench.activations import cache_activations
from workbench.chat import encode
from workbench.generation import _plan, generate, last_token_logprobs, last_token_scores
from workbench.kv import prefix_fits_window, sliding_window

WINDOW = 8
PREFIX = [5, 6, 7, 8, 9]  # shared by every prompt (≥ 4 tokens: the workbench shares it)
# ids ≥ 30: "w1x"/"w2x" would split at the special tokens "w1"/"w2"
SUFFIXES = [[30], [31, 32, 33], [34, 35, 36, 37, 38, 39], [40, 41, 42, 43, 44, 45, 46, 47, 48]]
PROMPTS = [" ".join(f"w{t}" for t in PREFIX + s) for s in SUFFIXES]  # 7, 9, 12, 15 tokens with the BOS
FAMILIES = ("mistral", "gemma2")
# first-token log-probs, batched vs alone; Gemma-2's final gain (+120) puts its logits at the ±30
# soft-cap, where float32 rounding alone moves log-probs by ~3e-5 (HF vs TL too). Unfixed: 0.45 / 48.
LOGPROB_TOL = {"mistral": 1e-5, "gemma2": 1e-4}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for family in FAMILIES:
        hf, model = _built(family, str(tmp_path_factory.mktemp(f"hf-{family}")))
        assert model.cfg.window_size == WINDOW and "local" in model.cfg.attn_types
        out[family] = (hf, model)
    return out


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_first_token_logprobs_batched_equal_one_by_one_and_hf(family, models):
    hf, model = models[family]
    batched = last_token_logprobs(model, PROMPTS, batch_size=len(PROMPTS), templated=True)
    alone = torch.cat([last_token_logprobs(model, [p], batch_size=1, templated=True) for p in PROMPTS])
    assert (batched - alone).abs().max().item() <= LOGPROB_TOL[family]
    # rows that start at block 1 from the cached resid_pre (the induce-score path) share the prefix too
    late = last_token_scores(model, PROMPTS, start_layers=[1] * len(PROMPTS), batch_size=len(PROMPTS), templated=True)
    assert (late - alone).abs().max().item() <= LOGPROB_TOL[family]
    assert [len(r) for r in encode(model.tokenizer, PROMPTS)] == [7, 9, 12, 15]  # BOS + prefix + suffix
    for i, ids in enumerate(encode(model.tokenizer, PROMPTS)):
        logits = hf(input_ids=torch.tensor([ids])).logits[0, -1].double()
        assert (alone[i] - torch.log_softmax(logits, -1)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_cached_resid_pre_batched_equal_one_by_one(family, models):
    _, model = models[family]
    kw = dict(sites=("resid_pre", "resid_post"), positions=[-1], templated=True, progress=False)
    batched = cache_activations(model, PROMPTS, batch_size=len(PROMPTS), **kw)
    alone = [cache_activations(model, [p], batch_size=1, **kw) for p in PROMPTS]
    for site in kw["sites"]:
        one_by_one = torch.cat([a.acts[site] for a in alone], dim=1)
        assert (batched.acts[site] - one_by_one).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_greedy_generation_past_the_window_equals_one_by_one(family, models):
    hf, model = models[family]
    new = 12  # every row runs well past the 8-token window
    batched, first = generate(
        model, PROMPTS, max_new_tokens=new, batch_size=len(PROMPTS), templated=True, return_logprobs=True
    )
    alone = [generate(model, [p], max_new_tokens=new, batch_size=1, templated=True)[0] for p in PROMPTS]
    assert batched == alone
    assert all(len(text.split()) > 2 for text in alone)  # several tokens generated, not an early stop
    expected = last_token_logprobs(model, PROMPTS, batch_size=1, templated=True)
    assert (first - expected).abs().max().item() <= LOGPROB_TOL[family]
    for i, row in enumerate(encode(model.tokenizer, PROMPTS)):  # HF's own greedy continuation, alone
        ids = torch.tensor([row])
        theirs = hf.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=2)
        assert model.tokenizer.decode(theirs[0, ids.shape[1] :], skip_special_tokens=True).strip() == alone[i]


def test_prefix_is_shared_only_where_the_window_cannot_see_pads(models):
    _, model = models["mistral"]
    assert sliding_window(model) == WINDOW
    lengths = [7, 9, 12, 15]
    assert not prefix_fits_window(model, lengths, [[0, 1, 2, 3]])  # pads inside rows longer than 8
    assert prefix_fits_window(model, lengths, [[0], [1], [2], [3]])  # batch size 1: no pads
    assert prefix_fits_window(model, [15, 15], [[0, 1]])  # one length: no pads
    assert prefix_fits_window(model, [5, 7], [[0, 1]], extra_tokens=1)  # 7 + 1 columns fit in 8
    assert not prefix_fits_window(model, [5, 7], [[0, 1]], extra_tokens=2)
    # the fast path stays where it is exact: short prompts share their prefix when scored ...
    short = PROMPTS[:1] + [" ".join(f"w{t}" for t in PREFIX + [31, 32])]  # 7 and 8 tokens
    assert _plan(model, short, None, None, 2, True).prefix == 6  # BOS + the 5 shared words
    # ... and not when generation would carry them past the window; nor the long prompts at all
    assert _plan(model, short, None, None, 2, True, reserve=2).prefix == 0
    assert _plan(model, PROMPTS, None, None, 4, True).prefix == 0
    assert _plan(model, PROMPTS, None, None, 1, True).prefix == 6
