"""Every model family the loader maps, on a tiny random model built offline and saved as a local
Hugging Face folder, loaded through ``load_model`` as a user would: TL logits equal HF's (fp32);
the fast paths engage (this matrix is their allow-list, ``fastpath.TESTED_FAMILIES``) and equal
TL's own path; cached greedy generation equals repeated full forwards; first-token scores equal
HF's log-probs (Gemma-2's final soft-cap included); hook ablation equals orthogonalized weights
where that equivalence holds; rotations keep the norm of what they rotate; bf16 runs and mostly
agrees with fp32; an over-long prompt is refused by name.

Norm gains and biases are random (not ones/zeros) so that a dropped or misplaced norm, bias or
``+1`` shows; Gemma-2 has logits large enough that a skipped final soft-cap fails. Each family
is one test id per check; the file takes well under a minute on a CPU.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from workbench import families, fastpath
from workbench.chat import encode, format_prompts
from workbench.experiments import reference_cross_entropy
from workbench.fastpath import attention
from workbench.generation import _stop_ids, generate, last_token_logprobs
from workbench.interventions import ablation_hooks, orthogonalize_weights, rotation_hooks
from workbench.models import load_model, tl_config

V = 96  # vocabulary
D = 64  # d_model
TOL = 1e-4  # fp32 logits, TL vs HF

_COMMON = dict(
    vocab_size=V,
    hidden_size=D,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def _configs() -> dict:
    import transformers as tf

    return {
        "llama": (tf.LlamaConfig(**_COMMON, num_key_value_heads=2, tie_word_embeddings=False), tf.LlamaForCausalLM),
        "llama-tied": (tf.LlamaConfig(**_COMMON, num_key_value_heads=2, tie_word_embeddings=True), tf.LlamaForCausalLM),
        "mistral": (tf.MistralConfig(**_COMMON, num_key_value_heads=2, sliding_window=8), tf.MistralForCausalLM),
        "qwen2": (tf.Qwen2Config(**_COMMON, num_key_value_heads=2), tf.Qwen2ForCausalLM),  # q/k/v biases
        "qwen3": (tf.Qwen3Config(**_COMMON, num_key_value_heads=2, head_dim=16), tf.Qwen3ForCausalLM),  # qk-norm
        "gemma": (tf.GemmaConfig(**_COMMON, num_key_value_heads=1, head_dim=16), tf.GemmaForCausalLM),
        "gemma2": (
            tf.Gemma2Config(
                **_COMMON,
                num_key_value_heads=2,
                head_dim=16,
                query_pre_attn_scalar=24,  # ≠ head_dim, so a wrong attention scale shows
                attn_logit_softcapping=4.0,  # small enough to bite on a tiny model
                final_logit_softcapping=30.0,
                sliding_window=8,  # < the 11 tokens: the window bites (no padding here)
            ),
            tf.Gemma2ForCausalLM,
        ),
        "gemma3": (
            tf.Gemma3TextConfig(
                **_COMMON,
                num_key_value_heads=2,
                head_dim=16,
                query_pre_attn_scalar=24,
                sliding_window=8,  # < the 11 tokens: the window bites (no padding here)
                layer_types=["sliding_attention", "full_attention"],  # local and global rope bases
            ),
            tf.Gemma3ForCausalLM,
        ),
        "phi3": (tf.Phi3Config(**_COMMON, num_key_value_heads=2), tf.Phi3ForCausalLM),
        "gpt2": (
            tf.GPT2Config(vocab_size=V, n_embd=D, n_layer=2, n_head=4, n_positions=96, bos_token_id=1, eos_token_id=2),
            tf.GPT2LMHeadModel,
        ),
        "gpt-neox": (
            tf.GPTNeoXConfig(
                **{k: v for k, v in _COMMON.items() if k != "bos_token_id"}, rotary_pct=0.5, use_parallel_residual=True
            ),
            tf.GPTNeoXForCausalLM,
        ),
        "olmo2": (tf.Olmo2Config(**_COMMON), tf.Olmo2ForCausalLM),
        "mixtral": (  # mixture of experts: 4 experts, 2 per token
            tf.MixtralConfig(**_COMMON, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
            tf.MixtralForCausalLM,
        ),
        "olmo3": (  # post-norm, qk-norm, GQA, sliding and full layers
            tf.Olmo3Config(
                **_COMMON,
                num_key_value_heads=2,
                sliding_window=8,  # < the 11 tokens: the window bites
                layer_types=["sliding_attention", "full_attention"],
            ),
            tf.Olmo3ForCausalLM,
        ),
    }


FAMILIES = (
    "llama",
    "llama-tied",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "phi3",
    "gpt2",
    "gpt-neox",
    "olmo2",
    "mixtral",  # appended, so every earlier family keeps its seed
    "olmo3",
)

# Hook ablation at "all" ≡ orthogonalized weights needs sublayers that write linearly into the
# stream. Sandwich norms (Gemma-2/3: a norm on each sublayer's output) and OLMo-2's post-norms
# re-scale the ablated write by a gain that puts r̂ back, so there they differ (measured below;
# orthogonalize_weights warns). Everywhere else they agree to float rounding.
NOT_EQUIVALENT = {"gemma2", "gemma3", "olmo2", "olmo3"}
POST_NORM = {"olmo2", "olmo3"}  # ln1/ln2 normalise sublayer outputs: no post_gain rotation site


def _tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({f"w{i}": i for i in range(V)}, unk_token="w0"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w0", bos_token="w1", eos_token="w2")


def _randomize(hf, family: str) -> None:
    """Norm gains ~ 1 ± 0.3 (Gemma stores gain − 1: ± 0.3), biases ~ ± 0.3; Gemma-2's final gain
    raised so its pre-cap logits reach past the soft-cap."""
    gemma = family.startswith("gemma")
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim == 1:
                p.copy_(0.3 * torch.randn_like(p) + (0.0 if gemma or name.endswith("bias") else 1.0))
        if family == "gemma2":
            hf.model.norm.weight.add_(120.0)


def build_family_folder(family: str, folder: str):
    """Save a tiny random ``family`` model (one of FAMILIES) with a word-level tokenizer as a local
    Hugging Face folder; returns the HF model. Other test files import it."""
    config, cls = _configs()[family]
    config.architectures = [cls.__name__]
    torch.manual_seed(FAMILIES.index(family))
    hf = cls(config).eval()
    _randomize(hf, family)
    hf.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return hf


def _load(folder: str, dtype: str = "float32"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(folder, device="cpu", dtype=dtype)
    # transformers 5 forces its Qwen2/Phi-3 tokenizer classes on those model types, and they do not
    # read a word-level tokenizer.json; the prompts here need the word-level one
    if model.tokenizer.encode("w40", add_special_tokens=False) != [40]:
        model.tokenizer = _tokenizer()
        model.tokenizer.padding_side = "left"
    return model


@functools.cache
def _built(family: str, folder: str):
    hf = build_family_folder(family, folder)
    return hf, _load(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {f: str(tmp_path_factory.mktemp(f"hf-{f}")) for f in FAMILIES}


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, V, (3, 11), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_local_folder_loads_and_logits_equal_hf(family, folders, tokens):
    hf, model = _built(family, folders[family])
    assert model.cfg.original_architecture == hf.config.architectures[0]
    assert model.cfg.default_prepend_bos is False and model.tokenizer.padding_side == "left"
    ours, theirs = model(tokens), hf(input_ids=tokens).logits
    assert (ours - theirs).abs().max().item() <= TOL
    hf_act = getattr(hf.config, "hidden_activation", None) or getattr(hf.config, "hidden_act", None)
    assert model.cfg.act_fn == (hf_act or hf.config.activation_function)  # Gemma-1: gelu_pytorch_tanh
    if family == "gpt2":  # learned positions: the model's own table, not a forced 2048
        assert model.cfg.n_ctx == hf.config.n_positions == model.pos_embed.W_pos.shape[0]
    else:
        assert model.cfg.n_ctx <= hf.config.max_position_embeddings
    if getattr(hf.config, "sliding_window", None):  # 8 < the 11 tokens here: windowing changes logits
        assert model.cfg.use_local_attn and model.cfg.window_size == hf.config.sliding_window
    if family == "gemma2":  # the final soft-cap matters at this logit scale
        raw = model.unembed(model.ln_final(model(tokens, stop_at_layer=model.cfg.n_layers)))
        assert raw.abs().max().item() > 40.0
        assert (raw - theirs).abs().max().item() > 5.0


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_hook_ablation_vs_orthogonalized_weights(family, folders, tokens):
    _, model = _built(family, folders[family])
    r = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(7))
    with model.hooks(fwd_hooks=ablation_hooks(model, r, "all")):
        hooked = model(tokens)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ortho = orthogonalize_weights(model, r)(tokens)
    gap = (ortho - hooked).abs().max().item()
    assert (hooked - model(tokens)).abs().max().item() > 1e-2  # the ablation does something
    if family in NOT_EQUIVALENT:
        assert gap > 1e-2, f"{family}: now equivalent ({gap:.1e}); move it out of NOT_EQUIVALENT"
        assert any("NOT exactly" in str(w.message) for w in caught)
    else:
        assert gap <= TOL


def test_olmo2_with_grouped_query_attention_is_refused_by_name():
    from transformers import Olmo2Config

    config = Olmo2Config(**_COMMON, num_key_value_heads=2, architectures=["Olmo2ForCausalLM"])
    with pytest.raises(ValueError, match="Olmo2ForCausalLM: num_key_value_heads=2"):
        tl_config(config, device=torch.device("cpu"), dtype=torch.float32)


def test_missing_config_field_names_family_and_field():
    from types import SimpleNamespace

    # transformers' own config classes fill every default; a hand-edited or foreign config may not
    config = SimpleNamespace(architectures=["Gemma2ForCausalLM"], hidden_size=D, num_attention_heads=4)
    with pytest.raises(ValueError, match="Gemma2ForCausalLM: config.json is missing intermediate_size"):
        tl_config(config, device=torch.device("cpu"), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- fast paths

# 8, 4 and 13 tokens with the BOS (ids ≥ 30: "w1x"/"w2x" would split at the special tokens "w1"/"w2")
PROMPTS = ["w5 w6 w7 w8 w9 w30 w31", "w32 w33 w34", "w35 w36 w37 w38 w39 w40 w41 w42 w43 w44 w45 w46"]


def _padded(tokens):
    """``tokens`` left-padded: row 1 by 3 positions, row 2 by 6 (pads are token 0)."""
    mask = torch.ones_like(tokens)
    mask[1, :3], mask[2, :6] = 0, 0
    return tokens.masked_fill(mask == 0, 0), mask


def test_allow_list_is_exactly_the_families_tested_here():
    architectures = {cls.__name__ for _, cls in _configs().values()}
    assert fastpath.TESTED_FAMILIES == architectures


@pytest.mark.parametrize("family", FAMILIES)
def test_family_record_states_what_the_loaded_model_is(family, folders):
    _, model = _built(family, folders[family])
    arch = model.cfg.original_architecture
    record = families.FAMILIES[arch]
    assert families.norm_placement(model.cfg) == record.norm
    assert (record.norm == "post") == (family in POST_NORM)
    assert record.fast_paths and fastpath.family_tested(model)
    excluded = [i for i, b in enumerate(model.blocks) if f"{arch} is excluded" in attention.why_unsupported(b.attn)]
    assert excluded == (list(range(model.cfg.n_layers)) if record.attention_excluded else [])


def test_post_norm_families_are_transformer_lens_own():
    # TL's blocks put the norm on each sublayer's output for exactly these architectures
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    assert {a for a, f in families.FAMILIES.items() if f.norm == "post"} == POST_NORM_ARCHITECTURES


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_fast_paths_engage_and_equal_tl_own_path(family, folders, tokens):
    _, model = _built(family, folders[family])
    report = fastpath.report(model)
    assert report["family"]["tested"] and report["weight_layout"]["engaged"] and report["chunked_unembed"]["engaged"]
    engaged = report["attention"]["engaged_layers"]
    blocked = [i for i, b in enumerate(model.blocks) if attention.why_unsupported(b.attn)]
    assert sorted(engaged + blocked) == list(range(model.cfg.n_layers))  # every layer its guard allows
    padded, mask = _padded(tokens)
    fast = model(padded, attention_mask=mask)
    fast_texts = generate(model, PROMPTS, max_new_tokens=4, batch_size=3, templated=True)
    attention.uninstall(model)
    del model.unembed.forward  # TL's Unembed.forward shows through again
    try:
        slow = model(padded, attention_mask=mask)
        slow_texts = generate(model, PROMPTS, max_new_tokens=4, batch_size=3, templated=True)
    finally:
        fastpath.install(model)
    assert (fast - slow)[mask.bool()].abs().max().item() <= 1e-5
    assert fast_texts == slow_texts


def test_family_off_the_allow_list_runs_tl_own_path(folders, tokens, monkeypatch):
    hf, _ = _built("llama", folders["llama"])
    monkeypatch.setattr(fastpath, "TESTED_FAMILIES", fastpath.TESTED_FAMILIES - {"LlamaForCausalLM"})
    with pytest.warns(UserWarning, match="'LlamaForCausalLM' is not on the tested list") as caught:
        model = load_model(folders["llama"], device="cpu", dtype="float32")
    assert sum("fast paths stay off" in str(w.message) for w in caught) == 1  # one warning
    assert not any(hasattr(b.attn, "_workbench_tl_forward") for b in model.blocks)
    report = fastpath.report(model)
    assert report["family"] == {
        "name": "LlamaForCausalLM",
        "tested": False,
        "tested_families": sorted(fastpath.TESTED_FAMILIES),
    }
    assert not report["weight_layout"]["engaged"] and not report["chunked_unembed"]["engaged"]
    assert report["attention"]["engaged_layers"] == []
    with torch.inference_mode():
        assert (model(tokens) - hf(input_ids=tokens).logits).abs().max().item() <= TOL  # still right


# ---------------------------------------------------------------------------------------------- generation and scores


def _greedy_full_forwards(model, row: list[int], new: int) -> list[int]:
    """Greedy continuation by a full forward over the whole sequence per token (no KV cache)."""
    stop, ids = set(_stop_ids(model.tokenizer)), list(row)
    for _ in range(new):
        nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
        if nxt in stop:
            break
        ids.append(nxt)
    return ids[len(row) :]


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_cached_generation_equals_full_forwards(family, folders):
    _, model = _built(family, folders[family])
    new = 5
    cached = generate(model, PROMPTS, max_new_tokens=new, batch_size=3, templated=True)  # left-padded batch
    full = [_greedy_full_forwards(model, row, new) for row in encode(model.tokenizer, PROMPTS)]
    assert cached == [model.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in full]
    assert any(len(ids) > 1 for ids in full)  # not an immediate stop everywhere


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_first_token_scores_equal_hf_logprobs(family, folders):
    hf, model = _built(family, folders[family])
    ours = last_token_logprobs(model, PROMPTS, batch_size=3, templated=True)
    for i, row in enumerate(encode(model.tokenizer, PROMPTS)):
        theirs = torch.log_softmax(hf(input_ids=torch.tensor([row])).logits[0, -1].double(), -1)
        assert (ours[i] - theirs).abs().max().item() <= TOL
    if family == "gemma2":  # the scores include the final soft-cap, and at this scale it matters
        row = torch.tensor([encode(model.tokenizer, PROMPTS)[0]])
        raw = model.unembed(model.ln_final(model(row, stop_at_layer=model.cfg.n_layers)))[0, -1]
        assert (torch.log_softmax(raw.double(), -1) - ours[0]).abs().max().item() > 1.0


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_answer_cross_entropy_equals_hf(family, folders, monkeypatch):
    """The damage stage's CE (answer positions only through the final norm, unembedding and soft-cap,
    rows left-padded in one batch) equals the mean answer-token NLL of HF's full logits, row by row."""
    hf, model = _built(family, folders[family])
    # the word-level test tokenizer has no chat template: a minimal one, ending in a word boundary
    monkeypatch.setattr(
        model.tokenizer, "chat_template", "{% for m in messages %}w1 {{ m['content'] }} w2 {% endfor %}"
    )
    answers = ["w10 w11 w12", "w13", "w14 w15 w16 w17 w18"]
    ours = reference_cross_entropy(model, PROMPTS, answers, batch_size=3)
    for i, (text, answer) in enumerate(zip(format_prompts(model.tokenizer, PROMPTS), answers)):
        row = encode(model.tokenizer, [text + answer])[0]
        answer_ids = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
        n = len(answer_ids)
        assert row[-n:] == answer_ids
        logprobs = torch.log_softmax(hf(input_ids=torch.tensor([row])).logits[0].double(), -1)
        nll = -logprobs[-n - 1 : -1].gather(-1, torch.tensor(answer_ids)[:, None])
        assert abs(ours[i].item() - nll.mean().item()) <= TOL


# ---------------------------------------------------------------------------------------------- steering


def _norm_module_output(model, layer: int):
    """(hooks recording blocks[layer].ln2's pre-gain input x̂ before the rotation, the recorded
    values, a forward-hook handle capturing what the MLP reads after it)."""
    seen: dict[str, torch.Tensor] = {}
    name = f"blocks.{layer}.ln2.hook_normalized"
    record = [(name, lambda x, hook: seen.__setitem__("before", x.clone()))]
    handle = model.blocks[layer].ln2.register_forward_hook(lambda _m, _i, out: seen.__setitem__("after", out.clone()))
    return record, seen, handle


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_rotation_keeps_the_norm_of_what_it_rotates(family, folders, tokens):
    _, model = _built(family, folders[family])
    plane, _ = torch.linalg.qr(torch.randn(model.cfg.d_model, 2, generator=torch.Generator().manual_seed(3)))
    plane = plane.T.contiguous()
    # resid: hook_resid_pre of block 1 before and after the rotation hook
    seen: dict[str, torch.Tensor] = {}
    name = "blocks.1.hook_resid_pre"
    grab = lambda key: (name, lambda x, hook: seen.__setitem__(key, x.clone()))  # noqa: E731
    with model.hooks(fwd_hooks=[grab("before"), *rotation_hooks(model, plane, 60.0, site="resid"), grab("after")]):
        model(tokens)
    before, after = seen["before"], seen["after"]
    assert (after - before).norm() > 1e-2 * before.norm()  # it rotated
    assert torch.allclose(after.norm(dim=-1), before.norm(dim=-1), rtol=1e-5)
    # post_gain: the norm's output g⊙x̂ + b, what the MLP reads
    if family in POST_NORM:
        with pytest.raises(ValueError, match="post-norm"):
            rotation_hooks(model, plane, 60.0, site="post_gain")
        return
    record, seen, handle = _norm_module_output(model, 1)
    try:
        with model.hooks(fwd_hooks=record + rotation_hooks(model, plane, 60.0, layers=[1], site="post_gain")):
            model(tokens)
    finally:
        handle.remove()
    ln2 = model.blocks[1].ln2
    y_before = seen["before"] * ln2.w + (ln2.b if hasattr(ln2, "b") else 0.0)
    assert (seen["after"] - y_before).norm() > 1e-2 * y_before.norm()
    assert torch.allclose(seen["after"].norm(dim=-1), y_before.norm(dim=-1), rtol=1e-4)


# ---------------------------------------------------------------------------------------------- bf16, context


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_bf16_smoke(family, folders, tokens):
    _, fp32 = _built(family, folders[family])
    model = _load(folders[family], "bfloat16")
    assert model.cfg.dtype == torch.bfloat16 and model.unembed.W_U.dtype == torch.bfloat16
    logits = model(tokens)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    agree = (logits.argmax(-1) == fp32(tokens).argmax(-1)).float().mean().item()
    assert agree >= 0.75, f"{family}: bf16 greedy argmax agrees with fp32 on {agree:.0%} of positions"
    texts = generate(model, PROMPTS, max_new_tokens=2, batch_size=3, templated=True)
    assert len(texts) == len(PROMPTS) and all(isinstance(t, str) for t in texts)


@pytest.mark.parametrize("family", FAMILIES)
def test_over_long_prompt_is_refused_with_the_context(family, folders):
    _, model = _built(family, folders[family])
    n_ctx = model.cfg.n_ctx
    assert n_ctx <= 128  # finite: the model's positions
    long = " ".join(f"w{30 + i % (V - 30)}" for i in range(n_ctx + 1))
    assert len(encode(model.tokenizer, [long])[0]) >= n_ctx + 1
    with pytest.raises(ValueError, match=f"more than the model's context of {n_ctx} tokens"):
        last_token_logprobs(model, [long], templated=True)
    with pytest.raises(ValueError, match=f"context of {n_ctx} tokens"):
        generate(model, [" ".join(long.split()[: n_ctx - 2])], max_new_tokens=8, templated=True)
