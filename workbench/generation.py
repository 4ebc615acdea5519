"""Run chat prompts through a ``HookedTransformer`` under hooks: last-token log-probs and generation.

Hooks are TransformerLens ``(hook_name, fn)`` pairs. They fire on the prompt *and* on every
generated token (then with ``pos == 1``, because of the KV cache), so interventions must be
position-free. For per-row settings (row ``i`` of a sweep carries its own angle, layer or
direction) pass a *callable* ``hooks(row_ids) -> list[(name, fn)]``: batches are length-sorted,
so each batch gets the hooks for exactly the rows it holds, in order.

Speed: the loop keeps TL's KV cache, runs the blocks once per new token and unembeds only the
last position (TL's own ``generate`` re-embeds the whole sequence and unembeds every position).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .chat import format_prompts, length_sorted_batches, token_lengths, tokenize

__all__ = ["Hooks", "last_token_logprobs", "generate", "decode_completions"]

Hook = tuple[str, Callable]
Hooks = Sequence[Hook] | Callable[[Int[Tensor, "batch"]], Sequence[Hook]] | None


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


def _final_residual(model, tokens, mask, cache) -> Float[Tensor, "batch d_model"]:
    """Run every block (hooks fire) and return the normalised residual at the last position."""
    resid = model(tokens, attention_mask=mask, past_kv_cache=cache, stop_at_layer=model.cfg.n_layers)
    return model.ln_final(resid[:, -1:])  # ln_final hooks see only the last position


@torch.inference_mode()
def last_token_logprobs(model, prompts: Sequence[str], *, hooks: Hooks = None, batch_size: int = 32,
                        system: str | None = None, templated: bool = False,
                        progress: bool = False) -> Float[Tensor, "prompt d_vocab"]:
    """Log-probabilities of the first response token for every prompt, float32 on the CPU.

    Only the last position is unembedded. ``templated=True`` means the prompts are already
    chat-formatted text.
    """
    texts = _texts(model, prompts, system, templated)
    lengths = token_lengths(model.tokenizer, texts)
    out = torch.empty(len(texts), model.cfg.d_vocab, dtype=torch.float32)
    device = model.cfg.device
    for rows in tqdm(length_sorted_batches(lengths, batch_size), desc="score", disable=not progress):
        tokens, mask = tokenize(model.tokenizer, [texts[i] for i in rows], device=device)
        with _hook_ctx(model, _hooks_for(hooks, rows, device)):
            resid = model(tokens, attention_mask=mask, stop_at_layer=model.cfg.n_layers)
            logits = model.unembed(model.ln_final(resid[:, -1:]))[:, 0]
        out[rows] = torch.log_softmax(logits.float(), dim=-1).cpu()
    return out


def _sample(logits: Tensor, do_sample: bool, temperature: float, top_p: float | None,
            generator: torch.Generator | None) -> Tensor:
    if not do_sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / max(temperature, 1e-6), dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p * keep)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.inference_mode()
def _generate_batch(model, tokens, mask, max_new_tokens, stop_ids, do_sample, temperature, top_p,
                    generator) -> Int[Tensor, "batch new"]:
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    batch = tokens.shape[0]
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else stop_ids[0]
    out = torch.full((batch, max_new_tokens), pad, dtype=torch.long, device=tokens.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
    stop = torch.tensor(stop_ids, device=tokens.device)
    step_tokens, step_mask = tokens, mask
    for step in range(max_new_tokens):
        normed = _final_residual(model, step_tokens, step_mask, cache)
        logits = model.unembed(normed)[:, 0]
        nxt = _sample(logits, do_sample, temperature, top_p, generator)
        nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        out[:, step] = nxt
        finished |= torch.isin(nxt, stop)
        if bool(finished.all()):
            break
        step_tokens = nxt[:, None]
        step_mask = torch.ones_like(step_tokens)
    return out


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


def generate(model, prompts: Sequence[str], *, hooks: Hooks = None, max_new_tokens: int = 32,
             batch_size: int = 32, do_sample: bool = False, temperature: float = 1.0,
             top_p: float | None = None, seed: int | None = None, system: str | None = None,
             templated: bool = False, progress: bool = False) -> list[str]:
    """Batched, KV-cached completions (greedy by default) of chat prompts, under ``hooks``.

    Hooks act on prompt and generated tokens alike; rows stop at EOS / end-of-turn. Returns one
    stripped string per prompt, in the input order.
    """
    texts = _texts(model, prompts, system, templated)
    tok = model.tokenizer
    lengths = token_lengths(tok, texts)
    stop_ids = _stop_ids(tok)
    generator = torch.Generator(device=model.cfg.device).manual_seed(seed) if seed is not None else None
    results: list[str] = [""] * len(texts)
    device = model.cfg.device
    for rows in tqdm(length_sorted_batches(lengths, batch_size), desc="generate", disable=not progress):
        tokens, mask = tokenize(tok, [texts[i] for i in rows], device=device)
        with _hook_ctx(model, _hooks_for(hooks, rows, device)):
            new = _generate_batch(model, tokens, mask, max_new_tokens, stop_ids, do_sample,
                                  temperature, top_p, generator)
        for i, text in zip(rows, decode_completions(tok, new.cpu(), stop_ids)):
            results[i] = text
    return results
