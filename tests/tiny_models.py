"""Tiny random HookedTransformers for the tests: one builder instead of a config copied into each file.

``tiny_config(**overrides)`` starts from a GPT-2-like two-layer model (LayerNorm, learned positions,
GELU; d_model 32, 4 heads of 8, vocabulary 50, seed 0) and applies the overrides; ``llama=True``
switches the defaults to the Llama-like parts (RMSNorm, rotary on 8 dims, SiLU, gated MLP), which
overrides still win over. ``tiny_model`` builds it (weights drawn from ``seed``, eval mode).
Test files import it by name (``from tiny_models import tiny_model``), as they do ``cdp``.
"""

from __future__ import annotations

import warnings
from typing import Any

BASE: dict[str, Any] = dict(
    n_layers=2,
    d_model=32,
    n_heads=4,
    d_head=8,
    d_mlp=64,
    n_ctx=64,
    d_vocab=50,
    act_fn="gelu",
    normalization_type="LN",
    seed=0,  # None: no reseeding, weights from the global RNG as it stands
)
LLAMA: dict[str, Any] = dict(
    act_fn="silu",
    normalization_type="RMS",
    positional_embedding_type="rotary",
    rotary_dim=8,
    gated_mlp=True,
)


def tiny_config(*, llama: bool = False, **overrides: Any):
    """A ``HookedTransformerConfig`` of :data:`BASE` (+ :data:`LLAMA` with ``llama``) and ``overrides``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # HookedTransformer → Bridge notice
        from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(**{**BASE, **(LLAMA if llama else {}), **overrides})


def tiny_model(*, llama: bool = False, tokenizer=None, **overrides: Any):
    """A random ``HookedTransformer`` of :func:`tiny_config` (``tokenizer`` attached when given), in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from transformer_lens import HookedTransformer

        return HookedTransformer(tiny_config(llama=llama, **overrides), tokenizer=tokenizer).eval()


# A ChatML-like template: what format_prompts needs from a chat model's tokenizer
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens, no merges: "I" is one token) with ``<|im_start|>``,
    ``<|im_end|>`` (EOS), ``<pad>`` and :data:`CHAT_TEMPLATE`, built offline. Like some real
    tokenizers' normalizers it drops zero-width spaces (U+200B tokenizes to nothing)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    specials = ["<|im_start|>", "<|im_end|>", "<pad>"]
    vocab.update({s: len(vocab) + i for i, s in enumerate(specials)})
    tok = Tokenizer(BPE(vocab, []))
    tok.normalizer = normalizers.Replace("\u200b", "")
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
    )


def save_tiny_chat_folder(folder, *, seed: int = 0, n_layers: int = 4):
    """Save a tiny random Llama chat model (d_model 32; 4 layers, so Arditi's scores cover layers 1-2)
    with :func:`byte_tokenizer` as a local Hugging Face folder, as a user's own model comes; returns it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
