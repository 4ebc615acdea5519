"""Chat prompts as the model sees them: the tokenizer's own template, BOS exactly once, left padding.

With left padding every row of a batch *ends* on the same post-instruction template tokens
(for ChatML: ``<|im_end|> \\n <|im_start|> assistant \\n``), so position ``-k`` means the same
template token in every row. Batches are length-sorted so that rows of similar length share
a batch and little compute is spent on padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = [
    "format_prompts",
    "encode",
    "pad_left",
    "tokenize",
    "token_lengths",
    "length_sorted_batches",
    "shared_prefix_length",
    "post_instruction_tokens",
    "check_prompts",
    "check_lengths",
]

_PLACEHOLDER = "XYZZY_INSTRUCTION"


def check_prompts(prompts: Sequence[str], what: str = "prompts") -> list[str]:
    """Reject an empty prompt set or blank prompts with a message that says how to fix it."""
    if isinstance(prompts, str):
        raise TypeError(f"{what} must be a list of strings, not one string; wrap it: [{prompts[:30]!r}]")
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{what} is empty; pass at least one prompt (see workbench.data.load_split)")
    blank = [i for i, p in enumerate(prompts) if not str(p).strip()]
    if blank:
        raise ValueError(f"{what} has blank prompt(s) at index {blank[:5]}; remove them")
    return prompts


def _messages(instruction: str, system: str | None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system is not None else []
    return msgs + [{"role": "user", "content": instruction}]


def format_prompts(tokenizer, instructions: Sequence[str], *, system: str | None = None) -> list[str]:
    """Each instruction as one user turn in the model's chat template, ready for the reply.

    ``system=None`` leaves the template's default (SmolLM2 inserts its own system line; Qwen2.5
    too; Llama-3 adds none).
    """
    instructions = check_prompts(instructions, "instructions")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("this tokenizer has no chat template; load an instruct/chat model")
    return [
        tokenizer.apply_chat_template(_messages(i, system), tokenize=False, add_generation_prompt=True)
        for i in instructions
    ]


def _bos_in_template(tokenizer, text: str) -> bool:
    bos = tokenizer.bos_token
    return bos is None or text.startswith(bos)


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each already-templated text, unpadded.

    Special tokens are never added on top of the template (that is how a doubled BOS happens);
    a BOS is prepended only where the tokenizer uses one and the template did not write it.
    """
    texts = list(texts)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    wants_bos = getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None
    if wants_bos and not all(_bos_in_template(tokenizer, t) for t in texts):
        ids = [[tokenizer.bos_token_id] + row for row in ids]
    return [list(row) for row in ids]


def check_lengths(ids: Sequence[Sequence[int]], n_ctx: int, prompts: Sequence[str], reserve: int = 0) -> None:
    """Reject a prompt that does not fit the model's context (``n_ctx`` tokens, ``reserve`` of them
    kept for new tokens) before any forward: past it the positional tables index out of range."""
    for i, row in enumerate(ids):
        if len(row) + reserve > n_ctx:
            extra = f" + {reserve} new tokens" if reserve else ""
            raise ValueError(
                f"prompt {i} ({str(prompts[i])[:40]!r}...) is {len(row)} tokens{extra}, more than the model's "
                f"context of {n_ctx} tokens (model.cfg.n_ctx); shorten or drop it"
            )


def pad_left(
    tokenizer, rows: Sequence[Sequence[int]], *, device: str | torch.device = "cpu"
) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]:
    """Left-pad token id rows into ``(tokens, attention_mask)``."""
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    tokens = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return tokens.to(device), mask.to(device)


def tokenize(
    tokenizer, texts: Sequence[str], *, device: str | torch.device = "cpu"
) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]:
    """Left-padded ``(tokens, attention_mask)`` for already-templated texts (see :func:`encode`)."""
    return pad_left(tokenizer, encode(tokenizer, texts), device=device)


def token_lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    """Number of tokens of each text, no special tokens added (also for bare answers, so never the
    BOS that :func:`encode` may prepend to a templated prompt)."""
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


MIN_SHARED_PREFIX = 4  # shorter common prefixes are not worth a separate forward


def shared_prefix_length(ids: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own (0 if < 4)."""
    first = ids[0]
    n = min(len(r) for r in ids) - 1
    for row in ids[1:]:
        n = min(n, next((i for i, (a, b) in enumerate(zip(first, row[:n])) if a != b), n))
    return n if n >= MIN_SHARED_PREFIX else 0


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, *, balanced: bool = False, groups: Sequence[int] | None = None
) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory peaks early).

    ``balanced``: as few batches as ``batch_size`` allows, their sizes within one of each other
    (100 rows at 64 → 50 + 50, not 64 + 36), so no batch is a small, inefficient remainder.
    ``groups``: group-major order (a group's rows stay together, longest first within it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    n = len(lengths)
    key = (lambda i: -lengths[i]) if groups is None else (lambda i: (groups[i], -lengths[i]))
    order = sorted(range(n), key=key)
    if not balanced:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    n_batches = -(-n // batch_size)
    bounds = [n * b // n_batches for b in range(n_batches + 1)] if n else [0]
    return [order[a:b] for a, b in zip(bounds, bounds[1:])]


def post_instruction_tokens(tokenizer, *, system: str | None = None) -> list[str]:
    """The template tokens that follow the instruction (Arditi's "end-of-instruction" tokens).

    Their count ``k`` makes ``positions = range(-k, 0)`` under left padding. Checked in context:
    the suffix must tokenise the same way at the end of a real prompt.
    """
    text = tokenizer.apply_chat_template(_messages(_PLACEHOLDER, system), tokenize=False, add_generation_prompt=True)
    suffix = text[text.index(_PLACEHOLDER) + len(_PLACEHOLDER) :]
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not suffix_ids or full_ids[-len(suffix_ids) :] != suffix_ids:
        raise ValueError(
            f"the template suffix {suffix!r} tokenises differently in context; pass explicit positions instead"
        )
    return tokenizer.convert_ids_to_tokens(suffix_ids)
