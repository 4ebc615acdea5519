"""KV caches that start from a shared prompt prefix, for activations, scoring and generation.

Chat prompts open with the same template tokens (SmolLM2: a 24-token system line). Causal
attention means those tokens' keys and values do not depend on what follows, so the prefix runs
once per *slot* (one slot per hook setting; hooks may change the prefix too) and every row of a
batch starts its TransformerLens KV cache from its slot's copy; only each row's own suffix runs.

Sliding-window layers (Mistral, Gemma-2/3) count a window in *columns*, and the shared-prefix layout
``[prefix][left pad][suffix]`` puts a row's pads between its tokens, where they take window slots
that real tokens would fill: wrong results (issue 16; plain left padding stays exact, the pads
come before every real token). :func:`prefix_fits_window` says when the layout is still exact;
callers run without a shared prefix when it is not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

__all__ = ["PrefixKV", "run_prefix", "take_rows", "local_layers", "sliding_window", "prefix_fits_window"]

KV = tuple[Float[Tensor, "slot prefix kv_head d_head"], Float[Tensor, "slot prefix kv_head d_head"]]


def local_layers(model) -> list[int]:
    """The blocks whose attention is a sliding window (TL's ``attn_type == "local"``)."""
    return [
        i for i, b in enumerate(model.blocks) if getattr(getattr(b, "attn", None), "attn_type", "global") == "local"
    ]


def sliding_window(model) -> int | None:
    """The attention window of ``model``'s sliding-window (TL "local") layers; None without any."""
    return int(model.cfg.window_size) if local_layers(model) else None


def prefix_fits_window(model, lengths: Sequence[int], batches: Sequence[Sequence[int]], extra_tokens: int = 0) -> bool:
    """Whether running ``batches`` of rows (full token ``lengths``: prefix + suffix) in the layout
    ``[shared prefix][left pad][suffix]``, then ``extra_tokens`` more positions fed through the KV
    cache (generation), equals running each row alone.

    True without sliding-window layers, and for a batch without pads (all its rows one length).
    Otherwise the pads sit inside the rows, so the padded width (the batch's longest row plus
    ``extra_tokens``) must fit in the window: then every window covers a whole row and masks
    nothing but pads.
    """
    window = sliding_window(model)
    if window is None:
        return True
    for batch in batches:
        widths = {lengths[i] for i in batch}
        if len(widths) > 1 and max(widths) + extra_tokens > window:
            return False
    return True


@dataclass(frozen=True)
class PrefixKV:
    """The prefix's keys and values per layer (``[slot, prefix, kv_head, d_head]``; empty along
    ``prefix`` past the layer the prefix run stopped at)."""

    length: int
    per_layer: list[KV]

    @property
    def n_slots(self) -> int:
        return self.per_layer[0][0].shape[0]

    def seed(self, model, slots: Int[Tensor, " batch"]):
        """A fresh TL cache for a batch whose row ``i`` starts from prefix slot ``slots[i]``."""
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(slots))
        for entry, (keys, values) in zip(cache.entries, self.per_layer):
            entry.past_keys = keys[slots.to(keys.device)]
            entry.past_values = values[slots.to(values.device)]
        mask = cache.previous_attention_mask
        cache.previous_attention_mask = torch.ones(len(slots), self.length, dtype=mask.dtype, device=mask.device)
        return cache


@torch.inference_mode()
def run_prefix(
    model,
    prefix: Sequence[int],
    *,
    n_slots: int = 1,
    hooks_for: Callable[[list[int]], Sequence] | None = None,
    batch_size: int = 64,
    stop_at_layer: int | None = None,
    start_at_layer: int | None = None,
    start_resid: Float[Tensor, "prefix d_model"] | None = None,
) -> PrefixKV:
    """Run the token ids ``prefix`` once per slot, ``batch_size`` slots per forward, slot chunk
    ``c`` under the TL hooks ``hooks_for(c)`` (none by default), through block ``stop_at_layer - 1``
    (default: every block).

    ``start_at_layer=l`` with ``start_resid`` (the prefix's ``resid_pre`` at block l, shared by
    every slot) runs blocks l.. only; layers below l then stay empty, so the cache only serves a
    forward that also starts at block l.
    """
    if not prefix:
        raise ValueError("empty prefix; pass at least one token id (or skip the shared prefix)")
    if (start_at_layer is None) != (start_resid is None):
        raise ValueError("start_at_layer and start_resid go together: pass both (resid_pre at that block) or neither")
    device, stop = model.cfg.device, stop_at_layer or model.cfg.n_layers
    tokens = torch.tensor(list(prefix), device=device)
    if start_resid is not None and start_resid.shape[0] != len(tokens):
        raise ValueError(f"start_resid covers {start_resid.shape[0]} positions but the prefix has {len(tokens)}")
    parts = []
    for start in range(0, n_slots, batch_size):
        chunk = list(range(start, min(start + batch_size, n_slots)))
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, len(chunk))
        batch_tokens = tokens.expand(len(chunk), -1)
        mask = torch.ones_like(batch_tokens)
        hooks = list(hooks_for(chunk)) if hooks_for else []
        with model.hooks(fwd_hooks=hooks) if hooks else nullcontext():
            if start_resid is None:
                model(batch_tokens, attention_mask=mask, past_kv_cache=cache, stop_at_layer=stop)
            else:  # blocks read the full mask themselves; TL appends it to the cache only from tokens
                x = start_resid.to(device).expand(len(chunk), -1, -1)
                model(x, start_at_layer=start_at_layer, attention_mask=mask, past_kv_cache=cache, stop_at_layer=stop)
        parts.append([(e.past_keys, e.past_values) for e in cache.entries])
    if len(parts) == 1:
        return PrefixKV(len(tokens), parts[0])
    return PrefixKV(
        len(tokens),
        [
            (torch.cat([p[layer][0] for p in parts]), torch.cat([p[layer][1] for p in parts]))
            for layer in range(len(parts[0]))
        ],
    )


def take_rows(cache, index: Int[Tensor, " row"]) -> None:
    """Replace a TL KV cache's rows by ``cache[index]`` (repeat or drop rows), in place."""
    for entry in cache.entries:
        entry.past_keys = entry.past_keys[index.to(entry.past_keys.device)]
        entry.past_values = entry.past_values[index.to(entry.past_values.device)]
    cache.previous_attention_mask = cache.previous_attention_mask[index.to(cache.previous_attention_mask.device)]
