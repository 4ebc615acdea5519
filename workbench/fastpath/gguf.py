"""Parse a GGUF file once while transformers loads it (it parses it three times otherwise)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import gguf

__all__ = ["gguf_parsed_once"]


@contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """While active, ``gguf.GGUFReader`` and ``gguf.get_tensor_name_map`` return one object per
    argument set. transformers parses a GGUF three times (config, tokenizer, weights; ~13 s each
    for SmolLM2's 49k-token vocabulary on a CPU) and rebuilds the tensor-name map once per module
    (~400 times, ~14 s); both are read-only, so one of each does."""
    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    memo: dict = {}

    def once(make):
        def cached(*args, **kw):
            key = (make, *map(str, args), *sorted(kw.items()))
            if key not in memo:
                memo[key] = make(*args, **kw)
            return memo[key]

        return cached

    # a deliberate monkeypatch of gguf's module attributes, undone on exit
    gguf.GGUFReader, gguf.get_tensor_name_map = once(real_reader), once(real_map)  # type: ignore[misc]
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map  # type: ignore[misc]
