"""TransformerLens attention without its per-step copies, for when nobody hooks inside attention.

TL 3.9's attention is written for readability: on every call it re-applies the rotary embedding
to *every* cached key, expands the grouped K/V heads with ``repeat_interleave`` (GQA: 3 KV heads
become 9 on SmolLM2) and copies both into a fresh layout for the matmuls. During KV-cached
decoding that is ~4 full copies of the cache per layer per token, several times the cost of the
layer's own matmuls at batch 64 on a CPU.

:func:`install` gives each supported attention module a forward that computes the same function
with the same TL operations in a cheaper order:

- rotary positions are applied once per key (to the new keys only; the rotated keys are kept in a
  side cache next to TL's own unrotated ``past_keys``, which stays as TL maintains it);
- query heads are grouped onto their KV head (``[batch, kv_head, group·pos, d_head]``), so K and V
  are never expanded;
- the side cache is stored in the layout the matmuls read, so nothing is copied for them;
- the cache grows in place: keys and values live in buffers with spare room (TL's ``past_keys`` /
  ``past_values`` become views of them), so a new token writes one position instead of
  ``torch.cat`` copying the whole cache, twice per layer per token (30 % of decoding time at
  batch 162 on a CPU before this).

The result equals TL's to float rounding (the matmuls group the same products differently;
tested on SmolLM2 and on tiny rotary/GQA and learned-position models, cached and not), and greedy
generations are identical. TL's path runs instead whenever a hook is attached to one of the
attention's *internal* hook points (``hook_rot_q/k``, ``hook_attn_scores``, ``hook_pattern``,
``hook_z``, ``hook_result``), so ``run_with_cache`` and pattern hooks see exactly what TL shows.
``hook_q/k/v`` fire on both paths (the projections are TL's own).
"""

from __future__ import annotations

import types

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from .. import families

__all__ = ["install", "uninstall", "supported", "why_unsupported", "INNER_HOOKS"]

INNER_HOOKS = ("hook_rot_q", "hook_rot_k", "hook_attn_scores", "hook_pattern", "hook_z", "hook_result")
_SIDE = "_workbench_rotated"  # attribute on a TL cache entry: (source past_keys, rotated K, V)


def why_unsupported(attn) -> list[str]:
    """Why the fast forward does not reproduce ``attn`` exactly: one reason per unmet condition,
    empty when it does (the guard :func:`supported` and :func:`install` use, and what
    ``workbench models`` reports)."""
    cfg = attn.cfg
    checks = (
        (cfg.positional_embedding_type in ("rotary", "standard"), f"{cfg.positional_embedding_type} positions"),
        (cfg.attention_dir == "causal", f"{cfg.attention_dir} attention"),
        (getattr(attn, "attn_type", "global") == "global", f"{getattr(attn, 'attn_type', '?')} (sliding-window) layer"),
        (not cfg.use_attn_result, "use_attn_result"),
        (not cfg.use_split_qkv_input, "use_split_qkv_input"),
        (not cfg.use_attn_in, "use_attn_in"),
        (not cfg.load_in_4bit, "4-bit weights"),
        (not cfg.use_logn_attn, "log-n attention scaling"),
        (not cfg.use_attention_sinks, "attention sinks"),
        (not getattr(cfg, "use_dynamic_ntk_rope", False), "dynamic NTK rope"),
        (cfg.attn_scores_soft_cap in (None, -1.0, -1), "attention-score soft-cap"),
        (cfg.clip_qkv is None, "clip_qkv"),
        (families.attention_excluded(cfg.original_architecture) is None, f"{cfg.original_architecture} is excluded"),
        (hasattr(attn, "IGNORE"), "no IGNORE buffer"),
    )
    return [reason for ok, reason in checks if not ok]


def supported(attn) -> bool:
    """Whether ``attn``'s configuration is one the fast forward reproduces exactly (global causal
    attention with rotary or learned absolute positions; plain or grouped-query heads)."""
    return not why_unsupported(attn)


def install(model) -> int:
    """Give every supported attention module of ``model`` the fast forward; returns how many.
    Idempotent; unsupported blocks keep TL's forward."""
    n = 0
    for block in getattr(model, "blocks", []):
        attn = getattr(block, "attn", None)
        if attn is None or not supported(attn):
            continue
        if not hasattr(attn, "_workbench_tl_forward"):
            attn._workbench_tl_forward = attn.forward
            attn.forward = types.MethodType(_forward, attn)
        n += 1
    return n


def uninstall(model) -> int:
    """Give every attention module TL's own forward back (e.g. to time or compare the two);
    returns how many were changed. :func:`install` turns the fast path on again."""
    n = 0
    for block in getattr(model, "blocks", []):
        attn = getattr(block, "attn", None)
        if attn is not None and hasattr(attn, "_workbench_tl_forward"):
            del attn.forward, attn._workbench_tl_forward  # the class's forward shows through again
            n += 1
    return n


def _watched(attn) -> bool:
    for name in INNER_HOOKS:
        hp = getattr(attn, name, None)
        if hp is not None and (hp._forward_hooks or hp._backward_hooks):
            return True
    return getattr(attn, "_attention_dir_override", None) not in (None, "causal")


def _heads_first(x: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch head pos d_head"]:
    return x.permute(0, 2, 1, 3)


class _Side:
    """Growable buffers behind one TL cache entry: TL-layout keys/values (``entry.past_keys`` and
    ``past_values`` are views of their first ``length`` positions) and the rotated keys and values
    in the matmul layout ``[batch, kv_head, pos, d_head]``. ``src`` is the ``past_keys`` view it
    handed out: a different ``past_keys`` (TL's own append, re-indexed rows) invalidates it."""

    __slots__ = ("src", "raw_k", "raw_v", "rot_k", "val", "length")

    def __init__(self, like: Tensor, capacity: int):
        batch, _, n_kv, d_head = like.shape
        new = lambda *shape: like.new_empty(shape)  # noqa: E731
        self.raw_k, self.raw_v = new(batch, capacity, n_kv, d_head), new(batch, capacity, n_kv, d_head)
        self.rot_k, self.val = new(batch, n_kv, capacity, d_head), new(batch, n_kv, capacity, d_head)
        self.length, self.src = 0, None

    @property
    def capacity(self) -> int:
        return self.raw_k.size(1)

    def write(self, raw_k, raw_v, rot_k, val) -> None:
        """Append positions (``raw_*`` in TL layout, ``rot_k``/``val`` heads-first)."""
        start, end = self.length, self.length + raw_k.size(1)
        if end > self.capacity:
            grown = _Side(self.raw_k, _capacity(end))
            grown.write(self.raw_k[:, :start], self.raw_v[:, :start], self.rot_k[:, :, :start], self.val[:, :, :start])
            self.raw_k, self.raw_v, self.rot_k, self.val = grown.raw_k, grown.raw_v, grown.rot_k, grown.val
        self.raw_k[:, start:end], self.raw_v[:, start:end] = raw_k, raw_v
        self.rot_k[:, :, start:end], self.val[:, :, start:end] = rot_k, val
        self.length = end


def _capacity(needed: int) -> int:
    return needed + max(16, needed // 2)  # geometric growth: each position is copied O(1) times


def _cached_kv(
    attn,
    entry,
    mask: Int[Tensor, "batch kv_pos"] | None,
    offset: int,
    k: Float[Tensor, "batch new kv_head d_head"],
    v: Float[Tensor, "batch new kv_head d_head"],
    rot_k: Float[Tensor, "batch kv_head new d_head"],
    val: Float[Tensor, "batch kv_head new d_head"],
):
    """Append the new keys/values to the entry and return all rotated keys and values,
    ``[batch, kv_head, offset + new, d_head]``. The side buffers are reused while they belong to this
    ``past_keys``; otherwise (first call, TL's own append, rows re-indexed for a shared prefix) they
    are rebuilt from TL's cache, rotating each past key once."""
    side = getattr(entry, _SIDE, None)
    if side is None or side.src is not entry.past_keys:
        side = _Side(k, _capacity(offset + k.size(1)))
        if offset:
            past_k, past_v = entry.past_keys, entry.past_values
            past_rot = past_k
            if attn.cfg.positional_embedding_type == "rotary":
                past_rot = attn.apply_rotary(past_k, 0, None if mask is None else mask[:, :offset])
            side.write(past_k, past_v, _heads_first(past_rot), _heads_first(past_v))
    side.write(k, v, rot_k, val)
    end = side.length
    entry.past_keys, entry.past_values = side.raw_k[:, :end], side.raw_v[:, :end]
    side.src = entry.past_keys
    setattr(entry, _SIDE, side)
    return side.rot_k[:, :, :end], side.val[:, :, :end]


def _forward(
    self,
    query_input,
    key_input,
    value_input,
    past_kv_cache_entry=None,
    additive_attention_mask=None,
    attention_mask=None,
    position_bias=None,
):
    if additive_attention_mask is not None or position_bias is not None or _watched(self):
        return self._workbench_tl_forward(
            query_input,
            key_input,
            value_input,
            past_kv_cache_entry,
            additive_attention_mask,
            attention_mask,
            position_bias,
        )
    q, k, v = self.calculate_qkv_matrices(query_input, key_input, value_input)  # TL's; hook_q/k/v fire
    batch, q_len, n_heads, d_head = q.shape
    entry = past_kv_cache_entry
    offset = entry.past_keys.size(1) if entry is not None else 0
    rot_k = k
    if self.cfg.positional_embedding_type == "rotary":
        q = self.apply_rotary(q, offset, attention_mask)
        rot_k = self.apply_rotary(k, offset, attention_mask)  # the new keys' positions are the queries'
    if entry is not None and not entry.frozen:
        keys, values = _cached_kv(self, entry, attention_mask, offset, k, v, _heads_first(rot_k), _heads_first(v))
    else:  # no cache, or a frozen one (read, never written)
        keys, values = _heads_first(rot_k), _heads_first(v)
        if entry is not None and offset:
            past_k = entry.past_keys
            if self.cfg.positional_embedding_type == "rotary":
                past_k = self.apply_rotary(past_k, 0, None if attention_mask is None else attention_mask[:, :offset])
            keys = torch.cat([_heads_first(past_k), keys], dim=2)
            values = torch.cat([_heads_first(entry.past_values), values], dim=2)
    n_kv, kv_len = keys.shape[1], keys.shape[2]
    group = n_heads // n_kv  # query head h reads KV head h // group, as repeat_interleave pairs them
    q_grouped = einops.rearrange(q, "b p (kv g) d -> b kv (g p) d", kv=n_kv)
    scores = (q_grouped @ keys.transpose(-1, -2)) / self.attn_scale  # [b, kv, g·p, kv_len]
    scores = scores.view(batch, n_heads, q_len, kv_len)
    causal = (
        torch.arange(kv_len, device=scores.device)[None, :]
        <= torch.arange(offset, offset + q_len, device=scores.device)[:, None]
    )
    allowed = causal[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :].bool().to(scores.device)
    scores = torch.where(allowed, scores, self.IGNORE.to(scores.device))
    pattern = F.softmax(scores, dim=-1)
    pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern).to(values.dtype)
    z = pattern.view(batch, n_kv, group * q_len, kv_len) @ values  # [b, kv, g·p, d_head]
    z = einops.rearrange(z, "b kv (g p) d -> b p (kv g d)", g=group)
    w = einops.rearrange(self.W_O, "head_index d_head d_model -> d_model (head_index d_head)").contiguous()
    return F.linear(z.to(w.dtype), w, self.b_O)
