"""Run chat prompts through a ``HookedTransformer`` under hooks: last-token log-probs and generation.

Hooks are TransformerLens ``(hook_name, fn)`` pairs. They fire on the prompt *and* on every
generated token (then with ``pos == 1``, because of the KV cache), so interventions must be
position-free. A static list applies to every row. For per-row settings (row ``i`` of a sweep
carries its own angle, layer or direction) pass a *callable* ``hooks(row_ids) -> list[(name, fn)]``
plus ``groups``: rows with the same group id must get the same hooks.

Log-probs are a float64 log-softmax of the logits (float32 rounds 1 − p of a near-certain token,
which moves saturated refusal log-odds by ~2).

Speed:
- **Shared prefix.** Chat prompts open with the same template tokens (SmolLM2: a 24-token system
  line, about 60 % of a short prompt). That prefix runs once per *group* per call, and its keys
  and values are copied to every row of the group; only each row's own suffix runs per row.
  Position-free hooks see the prefix exactly as they would in the full prompt. Scoring batches
  then follow suffix length alone (little left padding); generation keeps a setting's rows
  together (fewer hooks per batch, and batches that all stop early end early). Sliding-window
  models (Mistral, Gemma-2/3) share it only where no window can see a row's pads
  (:func:`workbench.kv.prefix_fits_window`); otherwise whole rows run, left-padded, which is exact.
- **One prefill for scores and text.** ``generate(..., return_logprobs=True)`` also returns the
  first-token log-probs, so a sweep scores and generates from the same forward pass.
- **Late hooks start late.** ``last_token_scores(..., start_layers=...)``: a row whose hooks act
  at block l or later runs blocks l.. only, from the unhooked model's ``resid_pre`` at block l,
  computed once per distinct prompt (Arditi's induce score adds at one layer per candidate).
- **Scores, not log-probs.** ``last_token_scores`` reduces each batch's log-probs to per-row
  values at once, so a sweep never holds ``[rows, d_vocab]``.
- The loop keeps TL's KV cache, runs the blocks once per new token and unembeds only the last
  position (TL's own ``generate`` re-embeds the whole sequence and unembeds every position).
- **Stopped rows leave the batch.** A refusal ends after ~10 tokens, a compliance runs to the
  limit; once an eighth of a batch has stopped, its rows are dropped from the KV cache (and
  per-row hooks rebuilt for the rest), so later steps only compute live rows.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int, Shaped
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.utilities import apply_softcap

from .chat import check_lengths, encode, format_prompts, length_sorted_batches, pad_left, shared_prefix_length
from .kv import PrefixKV, prefix_fits_window, run_prefix, take_rows

__all__ = [
    "Hooks",
    "ScoreFn",
    "last_token_logprobs",
    "last_token_scores",
    "generate",
    "decode_completions",
    "repeat_prompts",
]

Hook = tuple[str, Callable]
Hooks = Sequence[Hook] | Callable[[Int[Tensor, " batch"]], Sequence[Hook]] | None
# (float64 log-probs of a batch [batch, d_vocab], its row ids [batch]) -> per-row values [batch, ...]
ScoreFn = Callable[[Float[Tensor, "batch d_vocab"], Int[Tensor, " batch"]], Tensor]


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


def _plan(
    model, texts, hooks, groups, batch_size, share_prefix, group_major: bool = False, prompts=None, reserve: int = 0
) -> _Plan:
    ids = encode(model.tokenizer, texts)
    check_lengths(ids, model.cfg.n_ctx, texts if prompts is None else prompts, reserve)
    groups = _groups(hooks, groups, len(ids))
    lengths = [len(r) for r in ids]  # batches follow suffix lengths: the same order, prefix or not
    batches = length_sorted_batches(lengths, batch_size, balanced=True, groups=groups if group_major else None)
    prefix = shared_prefix_length(ids) if share_prefix else 0
    # generation feeds reserve - 1 tokens after the prompt through the cache (the last is never fed)
    if prefix and not prefix_fits_window(model, lengths, batches, max(reserve - 1, 0)):
        prefix = 0  # pads inside a row would take sliding-window slots: run whole rows instead
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


def _logits(model, normed: Float[Tensor, "batch 1 d_model"]) -> Float[Tensor, "batch d_vocab"]:
    """The last position's logits as ``model(...)`` returns them (Gemma-2's soft cap included)."""
    return apply_softcap(model.unembed(normed)[:, 0], model.cfg.output_logits_soft_cap)


def _logprobs64(logits: Float[Tensor, "batch d_vocab"]) -> Float[Tensor, "batch d_vocab"]:
    # float64: a float32 log-softmax rounds 1 − p of a near-certain token (refusal log-odds off by ~2)
    return torch.log_softmax(logits.double(), dim=-1)


class _Collect:
    """Per-row values gathered batch by batch into one CPU tensor, in prompt order."""

    def __init__(self, n: int, empty: tuple[int, ...]):
        self.n, self.empty = n, empty
        self.out: Tensor | None = None

    def put(self, rows: list[int], values: Tensor) -> None:
        if not isinstance(values, Tensor) or values.ndim == 0 or values.shape[0] != len(rows):
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"score_fn returned {got} for a batch of {len(rows)} rows; return one value per row")
        if self.out is None:
            self.out = torch.empty(self.n, *values.shape[1:], dtype=values.dtype)
        self.out[rows] = values.detach().cpu()

    def result(self) -> Tensor:
        return self.out if self.out is not None else torch.empty(self.empty, dtype=torch.float64)


def _keep_logprobs(logprobs: Tensor, rows: Tensor) -> Tensor:
    return logprobs


@torch.inference_mode()
def last_token_scores(
    model,
    prompts: Sequence[str],
    score_fn: ScoreFn | None = None,
    *,
    hooks: Hooks = None,
    groups=None,
    start_layers: Int[Tensor, " prompt"] | Sequence[int] | None = None,
    batch_size: int = 32,
    system: str | None = None,
    templated: bool = False,
    share_prefix: bool = True,
    progress: bool = False,
) -> Shaped[Tensor, "prompt ..."]:
    """``score_fn`` of the first response token's float64 log-probs, per prompt, on the CPU.

    ``score_fn(logprobs, rows)`` gets one batch's log-softmax ``[batch, d_vocab]`` (float64, on
    the model's device) and its row ids ``[batch]`` (indices into ``prompts``) and returns
    ``[batch]`` or ``[batch, ...]`` values (any dtype). Only one batch's log-probs exist at a time,
    so sweeps over thousands of rows stay small. None keeps the log-probs (``[prompt, d_vocab]``,
    as :func:`last_token_logprobs`).

    ``start_layers`` (one block index per prompt) is a promise that row i's hooks act at block
    ``start_layers[i]`` or later: its earlier layers are then the unhooked model's, so they run
    once per distinct prompt and row i runs only from its cached ``resid_pre`` at that block. The
    result is bitwise the full forward's when both pad the rows' suffixes alike (e.g. one batch, or
    ``batch_size=1``); otherwise it differs as much as the full forward under another batching does
    (float32 rounding, ~3e-5 in log-odds on the organism). Rows of one group must share their start
    layer; a hook below a row's start layer raises. ``groups`` and ``templated``: as in
    :func:`last_token_logprobs`.
    """
    texts = _texts(model, prompts, system, templated)
    fn = score_fn or _keep_logprobs
    out = _Collect(len(texts), (0, model.cfg.d_vocab) if score_fn is None else (0,))
    if not texts:
        return out.result()
    if start_layers is not None:
        _scores_from_layers(model, texts, fn, out, hooks, groups, start_layers, batch_size, share_prefix, progress)
        return out.result()
    plan = _plan(model, texts, hooks, groups, batch_size, share_prefix, prompts=prompts)
    for rows in tqdm(plan.batches, desc="score", disable=not progress):
        _, normed = _prefill(model, plan, rows, hooks)
        out.put(rows, fn(_logprobs64(_logits(model, normed)), torch.tensor(rows, device=model.cfg.device)))
    return out.result()


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
    """Log-probabilities of the first response token for every prompt, float64 on the CPU.

    Only the last position is unembedded; the log-softmax runs in float64 on the logits.
    ``templated=True`` means the prompts are already chat-formatted text; ``groups`` (one id per
    prompt) tells which rows share their hooks. For big sweeps prefer :func:`last_token_scores`,
    which keeps one batch of log-probs at a time.
    """
    return last_token_scores(
        model,
        prompts,
        hooks=hooks,
        groups=groups,
        batch_size=batch_size,
        system=system,
        templated=templated,
        share_prefix=share_prefix,
        progress=progress,
    )


def _hooks_from(hooks: Hooks, rows: list[int], device, start: int) -> list[Hook]:
    """The rows' hooks, checked to act at block ``start`` or later (earlier ones would not fire)."""
    out = _hooks_for(hooks, rows, device)
    for name, _ in out:
        parts = name.split(".")
        late = parts[0] in ("ln_final", "unembed") or (parts[0] == "blocks" and int(parts[1]) >= start)
        if not late:
            raise ValueError(
                f"hook {name} acts before block {start}, where these rows start from the unhooked model's "
                "cached residual; give them a start layer at or below that block, or pass start_layers=None"
            )
    return out


def _base_residuals(model, ids: list[list[int]], prefix: int, layers: list[int], batch_size: int):
    """The unhooked model's ``resid_pre`` at each of ``layers``: ``({layer: [prefix, d_model]}`` of
    the shared prefix (empty without one), ``{layer: [suffix, d_model] per distinct suffix}``,
    ``suffix index per row)``. Runs blocks up to ``max(layers)`` only."""
    device, stop = model.cfg.device, max(layers) + 1
    names = {f"blocks.{layer}.hook_resid_pre": layer for layer in layers}
    seen: dict[int, Tensor] = {}

    def capture(x, hook):
        seen[names[hook.name]] = x
        return x

    capture_hooks = [(name, capture) for name in names]
    prefix_resid: dict[int, Tensor] = {}
    base_kv = None
    if prefix:
        base_kv = run_prefix(model, ids[0][:prefix], hooks_for=lambda chunk: capture_hooks, stop_at_layer=stop)
        prefix_resid = {layer: seen[layer][0] for layer in layers}
    distinct: dict[tuple[int, ...], int] = {}
    row_suffix = [distinct.setdefault(tuple(r[prefix:]), len(distinct)) for r in ids]
    suffixes = list(distinct)
    suffix_resid: dict[int, list[Tensor]] = {layer: [torch.empty(0)] * len(suffixes) for layer in layers}
    for batch in length_sorted_batches([len(t) for t in suffixes], batch_size, balanced=True):
        if base_kv is not None:
            cache = base_kv.seed(model, torch.zeros(len(batch), dtype=torch.long))
        else:
            cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, len(batch))
        tokens, mask = pad_left(model.tokenizer, [suffixes[i] for i in batch], device=device)
        with model.hooks(fwd_hooks=capture_hooks):
            model(tokens, attention_mask=mask, past_kv_cache=cache, stop_at_layer=stop)
        for layer in layers:
            for j, i in enumerate(batch):
                suffix_resid[layer][i] = seen[layer][j, tokens.shape[1] - len(suffixes[i]) :].clone()
    return prefix_resid, suffix_resid, row_suffix


def _scores_from_layers(
    model, texts, fn, out: _Collect, hooks, groups, start_layers, batch_size, share_prefix, progress
):
    """:func:`last_token_scores` with ``start_layers``: each row runs from its cached ``resid_pre``."""
    device, n_layers = model.cfg.device, model.cfg.n_layers
    starts = _checked_starts(start_layers, len(texts), n_layers)
    ids = encode(model.tokenizer, texts)
    check_lengths(ids, model.cfg.n_ctx, texts)
    groups = _groups(hooks, groups, len(ids))
    _check_group_starts(groups, starts)
    prefix = _resumable_prefix(model, ids, batch_size) if share_prefix else 0
    layers = sorted(set(starts))
    prefix_resid, suffix_resid, row_suffix = _base_residuals(model, ids, prefix, layers, batch_size)
    work = _batches_by_start(ids, starts, layers, prefix, batch_size)
    prefix_kv: PrefixKV | None = None
    slot_of: dict[int, int] = {}
    kv_layer = -1
    for layer, rows in tqdm(work, desc="score", disable=not progress):
        if prefix and layer != kv_layer:  # the groups' prefixes under their hooks, from this block on
            prefix_kv, slot_of = _group_prefixes_from(
                model, ids[0][:prefix], hooks, groups, starts, layer, prefix_resid[layer], batch_size
            )
            kv_layer = layer
        if prefix_kv is not None:
            cache = prefix_kv.seed(model, torch.tensor([slot_of[groups[r]] for r in rows]))
        else:
            cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, len(rows))
        x, mask = _left_padded_residuals(model, [suffix_resid[layer][row_suffix[r]] for r in rows])
        # with start_at_layer TL does not extend the cache's mask; the blocks read the full one from us
        full_mask = torch.cat([cache.previous_attention_mask.to(mask), mask], dim=1)
        with _hook_ctx(model, _hooks_from(hooks, rows, device, layer)):
            resid = model(
                x, start_at_layer=layer, attention_mask=full_mask, past_kv_cache=cache, stop_at_layer=n_layers
            )
            normed = model.ln_final(resid[:, -1:])
        out.put(rows, fn(_logprobs64(_logits(model, normed)), torch.tensor(rows, device=device)))


def _checked_starts(start_layers, n_prompts: int, n_layers: int) -> list[int]:
    """``start_layers`` as a list of ints, one block index in ``0..n_layers - 1`` per prompt."""
    starts = [int(s) for s in start_layers]
    if len(starts) != n_prompts:
        raise ValueError(f"start_layers has {len(starts)} entries for {n_prompts} prompts; pass one per prompt")
    if any(not 0 <= s < n_layers for s in starts):
        raise ValueError(f"start_layers must lie in 0..{n_layers - 1} (block indices); got {sorted(set(starts))}")
    return starts


def _check_group_starts(groups: list[int], starts: list[int]) -> None:
    """Raise unless every row of a group has the same start layer."""
    start_of: dict[int, int] = {}
    for g, s in zip(groups, starts):
        if start_of.setdefault(g, s) != s:
            raise ValueError(
                f"group {g} has rows starting at blocks {start_of[g]} and {s}; a group's rows share their "
                "hooks (and prefix), so give them one start layer"
            )


def _resumable_prefix(model, ids: list[list[int]], batch_size: int) -> int:
    """The shared prefix length resumed rows can share (0 where a sliding window would see pads)."""
    prefix = shared_prefix_length(ids)
    # batches here are per start layer and per distinct suffix: check as if every row shared one
    one_batch = [list(range(len(ids)))] if batch_size > 1 else [[i] for i in range(len(ids))]
    if prefix and not prefix_fits_window(model, [len(r) for r in ids], one_batch):
        prefix = 0  # pads inside a row would take sliding-window slots: run whole rows instead
    return prefix


def _batches_by_start(
    ids: list[list[int]], starts: list[int], layers: list[int], prefix: int, batch_size: int
) -> list[tuple[int, list[int]]]:
    """``(start layer, row indices)`` batches: per layer of ``layers`` in order, length-sorted by suffix."""
    work = []
    for layer in layers:
        rows_l = [i for i, s in enumerate(starts) if s == layer]
        batches = length_sorted_batches([len(ids[r]) - prefix for r in rows_l], batch_size, balanced=True)
        work += [(layer, [rows_l[i] for i in b]) for b in batches]
    return work


def _group_prefixes_from(
    model, prefix_ids, hooks, groups: list[int], starts: list[int], layer: int, start_resid: Tensor, batch_size: int
) -> tuple[PrefixKV, dict[int, int]]:
    """The shared prefix run from block ``layer`` (``start_resid``: its ``[prefix, d_model]``
    ``resid_pre`` there) once per group starting at ``layer``, under that group's hooks (those of its
    first row): the KV slots and ``slot_of`` (group id → slot)."""
    device = model.cfg.device
    reps: dict[int, int] = {}
    for r, s in enumerate(starts):
        if s == layer:
            reps.setdefault(groups[r], r)
    rep_rows = list(reps.values())
    slot_of = {g: i for i, g in enumerate(reps)}

    def hooks_for(chunk: list[int]) -> list[Hook]:
        return _hooks_from(hooks, [rep_rows[i] for i in chunk], device, layer)

    prefix_kv = run_prefix(
        model,
        prefix_ids,
        n_slots=len(rep_rows),
        batch_size=batch_size,
        hooks_for=hooks_for,
        start_at_layer=layer,
        start_resid=start_resid,
    )
    return prefix_kv, slot_of


def _left_padded_residuals(model, suffixes: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The rows' cached suffix residuals (each ``[suffix, d_model]``) left-padded with zeros into
    ``[batch, seq, d_model]``, and the ``[batch, seq]`` attention mask of the real positions."""
    device = model.cfg.device
    _, mask = pad_left(model.tokenizer, [[0] * len(x) for x in suffixes], device=device)
    x = torch.zeros(len(suffixes), mask.shape[1], model.cfg.d_model, dtype=suffixes[0].dtype, device=device)
    for i, resid in enumerate(suffixes):  # pad positions stay 0: nothing attends to them
        x[i, mask.shape[1] - len(resid) :] = resid
    return x, mask


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
        logits = _logits(model, normed)
        first_logprobs = _logprobs64(logits)
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
                logits = _logits(model, _final_residual(model, tokens, torch.ones_like(tokens), cache))
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
    first response token's log-probs ``[prompt, d_vocab]`` (float64, CPU), as
    :func:`last_token_logprobs` would give them. ``groups``: see the module docs.
    """
    texts = _texts(model, prompts, system, templated)
    tok = model.tokenizer
    # Group-major: a setting's rows decode together, so a batch carries few settings' hooks and
    # batches whose rows all refuse (or all stop early) end early as a whole.
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    plan = _plan(
        model, texts, hooks, groups, batch_size, share_prefix, group_major=True, prompts=prompts, reserve=max_new_tokens
    )
    stop_ids = _stop_ids(tok)
    generator = torch.Generator(device=model.cfg.device).manual_seed(seed) if seed is not None else None
    results: list[str] = [""] * len(texts)
    logprobs = torch.empty(len(texts), model.cfg.d_vocab, dtype=torch.float64) if return_logprobs else None
    for rows in tqdm(plan.batches, desc="generate", disable=not progress):
        new, first = _generate_batch(
            model, plan, rows, hooks, max_new_tokens, stop_ids, do_sample, temperature, top_p, generator
        )
        for i, text in zip(rows, decode_completions(tok, new.cpu(), stop_ids)):
            results[i] = text
        if logprobs is not None:
            logprobs[rows] = first.cpu()
    return (results, logprobs) if return_logprobs else results
