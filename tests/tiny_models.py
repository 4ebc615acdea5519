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
