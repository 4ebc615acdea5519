"""Run chat prompts through a ``HookedTransformer`` under hooks: last-token log-probs and generation.

Hooks are TransformerLens ``(hook_name, fn)`` pairs. They fire on the prompt *and* on every
generated token (then with ``pos == 1``, because of the KV cache), so interventions must be
position-free. A static list applies to every row. For per-row settings (row ``i`` of a sweep
carries its own angle, layer or direction) pass a *callable* ``hooks(row_ids) -> list[(name, fn)]``
plus ``groups``: rows with the same group id must get the same hooks.

Speed:
- **Shared prefix.** Chat prompts open with the same template tokens (SmolLM2: a 24-token system
  line, about 60 % of a short prompt). That prefix runs once per *group* per call, and its keys
  and values are copied to every row of the group; only each row's own suffix runs per row.
  Position-free hooks see the prefix exactly as they would in the full prompt. Scoring batches
  then follow suffix length alone (little left padding); generation keeps a setting's rows
  together (fewer hooks per batch, and batches that all stop early end early).
- **One prefill for scores and text.** ``generate(..., return_logprobs=True)`` also returns the
  first-token log-probs, so a sweep scores and generates from the same forward pass.
- The loop keeps TL's KV cache, runs the blocks once per new token and unembeds only the last
  position (TL's own ``generate`` re-embeds the whole sequence and unembeds every position).
- **Stopped rows leave the batch.** A refusal ends after ~10 tokens, a compliance runs to the
  limit; once an eighth of a batch has stopped, its rows are dropped from the KV cache (and
  per-row hooks rebuilt for the rest), so later steps only compute live rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from .chat import encode, format_prompts, length_sorted_batches, pad_left, shared_prefix_length
from .kv import PrefixKV, run_prefix, take_rows

__all__ = ["Hooks", "last_token_logprobs", "generate", "decode_completions", "repeat_prompts"]

Hook = tuple[str, Callable]
Hooks = Sequence[Hook] | Callable[[Int[Tensor, " batch"]], Sequence[Hook]] | None


def repeat_prompts(prompts: Sequence[str], k: int) -> tuple[list[str], Int[Tensor, " row"]]:
    """Prompts laid out as k consecutive blocks, and the block (setting) index of every row: one
    batched job then runs k settings, each row carrying its own (see ``groups``)."""
    n = len(prompts)
    return list(prompts) * k, torch.arange(k).repeat_interleave(n)


def _hooks_for(hooks: Hooks, rows: list[int], device) -> list[Hook]:
    if hooks is None:
        return []
    if callable(hooks):
        return list(hooks(torch.tensor(rows, device=device)))
    return list(hooks)


def _hook_ctx(model, hooks: list[Hook]):
    return model.hooks(fwd_hooks=hooks) if hooks else nullcontext()


def _texts(model, prompts: Sequence[str], system: str | None, templated: bool) -> list[str]:
    return list(prompts) if templated else format_prompts(model.tokenizer, prompts, system=system)


def _groups(hooks: Hooks, groups, n: int) -> list[int]:
    if groups is not None:
        groups = [int(g) for g in groups]
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries for {n} prompts; pass one group id per prompt")
        return groups
    return list(range(n)) if callable(hooks) else [0] * n  # unknown per-row hooks: nothing shared


@dataclass
class _Plan:
    ids: list[list[int]]
    groups: list[int]
    prefix: int
    batches: list[list[int]]
    prefix_kv: PrefixKV | None = None  # one slot per group
    slot_of: dict[int, int] | None = None  # group id -> its slot in prefix_kv


def _plan(model, texts, hooks, groups, batch_size, share_prefix, group_major: bool = False) -> _Plan:
    ids = encode(model.tokenizer, texts)
    groups = _groups(hooks, groups, len(ids))
    prefix = shared_prefix_length(ids) if share_prefix else 0
    batches = length_sorted_batches(
        [len(r) - prefix for r in ids], batch_size, balanced=True, groups=groups if group_major else None
    )
    plan = _Plan(ids, groups, prefix, batches)
    if prefix:
        # the shared prefix runs once per group, under that group's hooks (any row stands for it)
        reps: dict[int, int] = {}
        for row, g in enumerate(groups):
            reps.setdefault(g, row)
        rep_rows = list(reps.values())
        plan.slot_of = {g: i for i, g in enumerate(reps)}
        plan.prefix_kv = run_prefix(
            model,
            ids[0][:prefix],
            n_slots=len(rep_rows),
            batch_size=batch_size,
            hooks_for=lambda chunk: _hooks_for(hooks, [rep_rows[i] for i in chunk], model.cfg.device),
        )
    return plan


def _prefill(model, plan: _Plan, rows: list[int], hooks: Hooks):
    """Run a batch's prompts into a fresh KV cache; return ``(cache, final-norm residual at the last
    position)``. The cache starts from each row's group prefix; the left-padded suffixes run on top."""
    device, p = model.cfg.device, plan.prefix
    if p:
        assert plan.prefix_kv is not None and plan.slot_of is not None  # _plan sets both with a prefix
        cache = plan.prefix_kv.seed(model, torch.tensor([plan.slot_of[plan.groups[r]] for r in rows]))
    else:
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, len(rows))
    tokens, mask = pad_left(model.tokenizer, [plan.ids[r][p:] for r in rows], device=device)
    with _hook_ctx(model, _hooks_for(hooks, rows, device)):
        normed = _final_residual(model, tokens, mask, cache)
    return cache, normed


_DROP_FRACTION = 1 / 8  # drop stopped rows once this share of the live batch has stopped


def _final_residual(model, tokens, mask, cache) -> Float[Tensor, "batch 1 d_model"]:
    """Run every block (hooks fire) and return the normalised residual at the last position."""
    resid = model(tokens, attention_mask=mask, past_kv_cache=cache, stop_at_layer=model.cfg.n_layers)
    return model.ln_final(resid[:, -1:])  # ln_final hooks see only the last position


@torch.inference_mode()
def last_token_logprobs(
    model,
    prompts: Sequence[str],
    *,
    hooks: Hooks = None,
    groups=None,
    batch_size: int = 32,
    system: str | None = None,
    templated: bool = False,
    share_prefix: bool = True,
    progress: bool = False,
) -> Float[Tensor, "prompt d_vocab"]:
    """Log-probabilities of the first response token for every prompt, float32 on the CPU.

    Only the last position is unembedded. ``templated=True`` means the prompts are already
    chat-formatted text; ``groups`` (one id per prompt) tells which rows share their hooks.
    """
    texts = _texts(model, prompts, system, templated)
    plan = _plan(model, texts, hooks, groups, batch_size, share_prefix)
    out = torch.empty(len(texts), model.cfg.d_vocab, dtype=torch.float32)
    for rows in tqdm(plan.batches, desc="score", disable=not progress):
        _, normed = _prefill(model, plan, rows, hooks)
        out[rows] = torch.log_softmax(model.unembed(normed)[:, 0].float(), dim=-1).cpu()
    return out


def _sample(
    logits: Tensor, do_sample: bool, temperature: float, top_p: float | None, generator: torch.Generator | None
) -> Tensor:
    if not do_sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / max(temperature, 1e-6), dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p * keep)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.inference_mode()
def _generate_batch(
    model,
    plan: _Plan,
    rows: list[int],
    hooks: Hooks,
    max_new_tokens,
    stop_ids,
    do_sample,
    temperature,
    top_p,
    generator,
) -> tuple[Int[Tensor, "batch new"], Float[Tensor, "batch d_vocab"]]:
    """New token ids of one batch (pad after a stop token) and the first token's log-probs.

    Rows that have stopped leave the batch (their cache rows are dropped and the hooks rebuilt for
    the rows left) once an eighth of it has stopped, so later steps only pay for live rows.
    """
    cache, normed = _prefill(model, plan, rows, hooks)
    batch, device = len(rows), model.cfg.device
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else stop_ids[0]
    out = torch.full((batch, max_new_tokens), pad, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    live = torch.arange(batch, device=device)  # batch rows still in the cache, in cache order
    stop = torch.tensor(stop_ids, device=device)
    with ExitStack() as hooked:
        hooked.enter_context(_hook_ctx(model, _hooks_for(hooks, rows, device)))
        logits = model.unembed(normed)[:, 0]
        first_logprobs = torch.log_softmax(logits.float(), dim=-1)
        for step in range(max_new_tokens):
            if step:
                stopped = finished[live]
                if int(stopped.sum()) >= max(1, len(live) * _DROP_FRACTION):
                    keep = (~stopped).nonzero()[:, 0]
                    take_rows(cache, keep)
                    live = live[keep]
                    hooked.close()  # per-row hooks must see the rows that are left
                    hooked.enter_context(_hook_ctx(model, _hooks_for(hooks, [rows[i] for i in live.tolist()], device)))
                tokens = out[live, step - 1 : step]
                logits = model.unembed(_final_residual(model, tokens, torch.ones_like(tokens), cache))[:, 0]
            nxt = _sample(logits, do_sample, temperature, top_p, generator)
            nxt = torch.where(finished[live], torch.full_like(nxt, pad), nxt)
            out[live, step] = nxt
            finished[live] |= torch.isin(nxt, stop)
            if bool(finished.all()):
                break
    return out, first_logprobs


def decode_completions(tokenizer, new_tokens: Int[Tensor, "batch new"], stop_ids: Sequence[int]) -> list[str]:
    """Decode generated ids, cutting each row at its first stop token."""
    texts = []
    for row in new_tokens.tolist():
        cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
        texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return texts


def _stop_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for name in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def generate(
    model,
    prompts: Sequence[str],
    *,
    hooks: Hooks = None,
    groups=None,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float | None = None,
    seed: int | None = None,
    system: str | None = None,
    templated: bool = False,
    share_prefix: bool = True,
    return_logprobs: bool = False,
    progress: bool = False,
):
    """Batched, KV-cached completions (greedy by default) of chat prompts, under ``hooks``.

    Hooks act on prompt and generated tokens alike; rows stop at EOS / end-of-turn. Returns one
    stripped string per prompt, in the input order; with ``return_logprobs=True`` also the
    first response token's log-probs ``[prompt, d_vocab]`` (float32, CPU), as
    :func:`last_token_logprobs` would give them. ``groups``: see the module docs.
    """
    texts = _texts(model, prompts, system, templated)
    tok = model.tokenizer
    # Group-major: a setting's rows decode together, so a batch carries few settings' hooks and
    # batches whose rows all refuse (or all stop early) end early as a whole.
    plan = _plan(model, texts, hooks, groups, batch_size, share_prefix, group_major=True)
    stop_ids = _stop_ids(tok)
    generator = torch.Generator(device=model.cfg.device).manual_seed(seed) if seed is not None else None
    results: list[str] = [""] * len(texts)
    logprobs = torch.empty(len(texts), model.cfg.d_vocab, dtype=torch.float32) if return_logprobs else None
    for rows in tqdm(plan.batches, desc="generate", disable=not progress):
        new, first = _generate_batch(
            model, plan, rows, hooks, max_new_tokens, stop_ids, do_sample, temperature, top_p, generator
        )
        for i, text in zip(rows, decode_completions(tok, new.cpu(), stop_ids)):
            results[i] = text
        if logprobs is not None:
            logprobs[rows] = first.cpu()
    return (results, logprobs) if return_logprobs else results
