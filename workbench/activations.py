"""Cache the activations the refusal direction is read from: chosen sites, layers and positions only.

The cache stores ``[layer, prompt, pos, d_model]`` per site, sliced *inside* the hook so the full
``[batch, seq, d_model]`` tensor is never kept, on the model's device, under
``torch.inference_mode()``. Positions are negative offsets from the end of the prompt: with left
padding and a chat template, ``-1`` is the last template token (e.g. ``"\\n"`` after
``assistant``) in every row, so the default keeps the *post-instruction* template tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .chat import (
    check_lengths,
    check_prompts,
    encode,
    format_prompts,
    length_sorted_batches,
    pad_left,
    post_instruction_tokens,
    shared_prefix_length,
)
from .kv import prefix_fits_window, run_prefix
from .sites import SITES, check_hook_names, check_layers, check_site, hook_name

__all__ = ["Activations", "cache_activations", "post_instruction_positions"]


def int_span(values: Sequence[int]) -> str:
    """``"a–b"`` for a run of consecutive integers, else the sorted list (for reprs)."""
    v = sorted(set(values))
    return f"{v[0]}–{v[-1]}" if len(v) > 1 and v == list(range(v[0], v[-1] + 1)) else str(v)


@dataclass(frozen=True)
class Activations:
    """Activations of ``prompts`` at a few sites, layers and end-relative positions.

    ``acts[site]`` is ``Float[Tensor, "layer prompt pos d_model"]``; its layer axis follows
    ``layers`` and its pos axis follows ``positions`` (negative offsets, e.g. ``[-5, ..., -1]``).
    ``tokens[j]`` is the decoded token at ``positions[j]`` of the first prompt (the same in every
    prompt when the positions are template tokens).
    """

    acts: dict[str, Float[Tensor, "layer prompt pos d_model"]]
    layers: list[int]
    positions: list[int]
    tokens: list[str]
    prompts: list[str] = field(repr=False)

    def __repr__(self) -> str:
        # the shape of what was cached, not the tensors
        return (
            f"Activations({self.n_prompts} prompts, sites {self.sites}, layers {int_span(self.layers)}, positions "
            f"{self.positions}, tokens {self.tokens}, d_model={self.d_model if self.acts else None})"
        )

    @property
    def sites(self) -> list[str]:
        return list(self.acts)

    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    @property
    def d_model(self) -> int:
        return next(iter(self.acts.values())).shape[-1]

    def get(self, site: str, layer: int, pos: int) -> Float[Tensor, "prompt d_model"]:
        """The ``[prompt, d_model]`` slice at one (site, layer, pos), with clear errors."""
        check_site(site)
        if site not in self.acts:
            raise KeyError(f"site {site!r} was not cached; cached sites: {self.sites}")
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not cached; cached layers: {self.layers}")
        if pos not in self.positions:
            raise KeyError(f"position {pos} was not cached; cached positions: {self.positions}")
        return self.acts[site][self.layers.index(layer), :, self.positions.index(pos)]

    def mean(self) -> dict[str, Float[Tensor, "layer pos d_model"]]:
        """Per-site mean over prompts, accumulated in float64."""
        return {s: a.double().mean(dim=1) for s, a in self.acts.items()}

    def select_prompts(self, rows: Sequence[int]) -> Activations:
        """The same activations for the prompts at ``rows`` only (e.g. those a filter kept)."""
        rows = list(rows)
        if not rows:
            raise ValueError(
                "no prompts selected; a filter that keeps nothing leaves no activations to average (the prompt "
                'filter: set "analysis": {"filter_prompts": false} in --config, or pass other --refusal-tokens)'
            )
        if min(rows) < 0 or max(rows) >= self.n_prompts:
            raise ValueError(f"prompt rows must be in 0..{self.n_prompts - 1}; got {min(rows)}..{max(rows)}")
        index = torch.tensor(rows)
        return Activations(
            {s: a.index_select(1, index.to(a.device)) for s, a in self.acts.items()},
            self.layers,
            self.positions,
            self.tokens,
            [self.prompts[i] for i in rows],
        )

    def to(self, device: str | torch.device) -> Activations:
        return Activations(
            {s: a.to(device) for s, a in self.acts.items()}, self.layers, self.positions, self.tokens, self.prompts
        )


def post_instruction_positions(model, *, system: str | None = None) -> list[int]:
    """Negative offsets of the post-instruction template tokens, e.g. ``[-5, ..., -1]``."""
    k = len(post_instruction_tokens(model.tokenizer, system=system))
    return list(range(-k, 0))


def _check_positions(positions: list[int]) -> list[int]:
    if not positions:
        raise ValueError("empty position list; pass e.g. positions=[-1] for the last prompt token")
    bad = [p for p in positions if not isinstance(p, int) or p >= 0]
    if bad:
        raise ValueError(
            f"positions must be negative offsets from the end of the prompt (-1 = last "
            f"token); got {bad}. Left padding makes only end-relative positions meaningful"
        )
    return sorted(set(positions))


@torch.inference_mode()
def cache_activations(
    model,
    prompts: list[str],
    *,
    sites: tuple[str, ...] | list[str] = ("resid_pre",),
    layers: int | list[int] | range | None = None,
    positions: list[int] | None = None,
    batch_size: int = 32,
    system: str | None = None,
    templated: bool = False,
    progress: bool = True,
) -> Activations:
    """Activations of ``prompts`` at ``sites`` × ``layers`` × end-relative ``positions``.

    Only those hooks run a save, and each slices ``x[:, positions]`` *before* keeping anything, so
    retained memory is ``n_prompts · len(positions) · d_model`` per (site, layer), independent of
    the sequence length. Tensors stay on the model's device (GPU when there is one); the forward
    pass stops after the deepest requested block and never unembeds. ``positions=None`` keeps the
    post-instruction template tokens.
    """
    prompts = check_prompts(prompts)
    sites, layers, positions = _checked_request(model, sites, layers, positions, system)
    names = {hook_name(s, layer): (s, i) for s in sites for i, layer in enumerate(layers)}
    check_hook_names(model, list(names))

    texts = list(prompts) if templated else format_prompts(model.tokenizer, prompts, system=system)
    ids = encode(model.tokenizer, texts)
    check_lengths(ids, model.cfg.n_ctx, prompts)
    shortest = min(len(r) for r in ids)
    if shortest < -positions[0]:
        raise ValueError(f"position {positions[0]} is before the start of the shortest prompt ({shortest} tokens)")
    device, stop = model.cfg.device, max(layers) + 1
    prefix, batches = _prefix_and_batches(model, ids, -positions[0], batch_size)
    prefix_kv = run_prefix(model, ids[0][:prefix], stop_at_layer=stop) if prefix else None
    store = {
        s: torch.empty(len(layers), len(texts), len(positions), model.cfg.d_model, dtype=model.cfg.dtype, device=device)
        for s in sites
    }
    _fill_store(model, store, names, ids, batches, prefix, prefix_kv, positions, stop, progress)
    first = model.tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    tokens_at = model.tokenizer.convert_ids_to_tokens([first[p] for p in positions])
    return Activations(store, layers, positions, tokens_at, list(prompts))


def _checked_request(
    model, sites, layers, positions: list[int] | None, system: str | None
) -> tuple[list[str], list[int], list[int]]:
    """The requested sites, block indices and (sorted, distinct) negative positions, checked in
    that order; ``positions=None`` → the post-instruction template tokens."""
    sites = [check_site(s) for s in sites]
    if not sites:
        raise ValueError(f"no sites given; choose from {', '.join(SITES)}")
    layers = check_layers(layers, model.cfg.n_layers)
    positions = _check_positions(
        post_instruction_positions(model, system=system) if positions is None else list(positions)
    )
    return sites, layers, positions


def _prefix_and_batches(model, ids: list[list[int]], depth: int, batch_size: int) -> tuple[int, list[list[int]]]:
    """The shared prefix length to run once (0: none) and the batches of row indices.

    The chat template's common opening runs once; its keys/values seed every batch's KV cache, and
    only each prompt's own tokens run per prompt (unless a cached position, ``depth`` tokens from
    the end, lies inside it).
    """
    prefix = shared_prefix_length(ids)
    lengths = [len(r) for r in ids]  # batches follow suffix lengths: the same order, prefix or not
    batches = length_sorted_batches(lengths, batch_size, balanced=True)
    if prefix and (min(lengths) - prefix < depth or not prefix_fits_window(model, lengths, batches)):
        prefix = 0  # a cached position inside the prefix, or pads inside a row in a sliding window
    return prefix, batches


def _fill_store(
    model, store: dict[str, Tensor], names, ids, batches, prefix: int, prefix_kv, positions, stop: int, progress: bool
) -> None:
    """Run each batch's suffixes (after the prefix's cached keys/values) up to block ``stop`` and
    write each hooked ``x[:, positions]`` into ``store[site][layer_index, rows]``
    (``store[site]``: ``[layer, prompt, pos, d_model]``; ``names``: hook name → (site, layer index))."""
    device = model.cfg.device
    pos_index = torch.tensor(positions, device=device)
    rows_now: list[torch.Tensor] = []

    def save(x, hook):  # x: [batch, seq, d_model]; slice first so the full tensor is never kept
        site, li = names[hook.name]
        store[site][li, rows_now[0]] = x.index_select(1, pos_index + x.shape[1])
        return None

    for rows in tqdm(batches, desc="cache", disable=not progress):
        tokens, mask = pad_left(model.tokenizer, [ids[i][prefix:] for i in rows], device=device)
        cache = prefix_kv.seed(model, torch.zeros(len(rows), dtype=torch.long)) if prefix_kv else None
        rows_now[:] = [torch.tensor(rows, device=device)]
        with model.hooks(fwd_hooks=[(n, save) for n in names]):
            model(tokens, attention_mask=mask, past_kv_cache=cache, stop_at_layer=stop)
