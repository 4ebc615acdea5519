"""Every model family the loader maps, on a tiny random model built offline and saved as a local
Hugging Face folder, loaded through ``load_model`` as a user would: TL logits equal HF's (fp32),
and hook ablation equals orthogonalized weights where that equivalence holds.

Norm gains and biases are random (not ones/zeros) so that a dropped or misplaced norm, bias or
``+1`` shows; Gemma-2 has logits large enough that a skipped final soft-cap fails. Each family
is one test id; all of them together take a few seconds on a CPU.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from workbench.interventions import ablation_hooks, orthogonalize_weights
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
)

# Hook ablation at "all" ≡ orthogonalized weights needs sublayers that write linearly into the
# stream. Sandwich norms (Gemma-2/3: a norm on each sublayer's output) and OLMo-2's post-norms
# re-scale the ablated write by a gain that puts r̂ back, so there they differ (measured below;
# orthogonalize_weights warns). Everywhere else they agree to float rounding.
NOT_EQUIVALENT = {"gemma2", "gemma3", "olmo2"}


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


@functools.cache
def _built(family: str, folder: str):
    hf = build_family_folder(family, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(folder, device="cpu", dtype="float32")
    return hf, model


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
