"""TL's unembedding on the CPU as one matmul per 1,024 vocabulary rows (bitwise TL's logits)."""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from transformer_lens.components import Unembed

__all__ = ["install", "installed", "why_not", "slices_apply", "chunked_unembed"]

_VOCAB_CHUNK = 1024  # rows of W_U per matmul; measured fastest on a 2-core AVX2 CPU


def chunked_unembed(self, residual):
    """TL's ``Unembed.forward`` (hooks included), on CPU as one matmul per 1,024 vocabulary rows.

    MKL multiplies a [64, 576] residual by SmolLM2's [49152, 576] unembedding at ~35 GFLOP/s,
    but by 1,024-row slices of it at ~48: each logit is the same dot product, so the result is
    bitwise TL's (tested); a decoding step spends a quarter of its time here at batch 64.
    """
    residual = self.hook_in(residual)
    weight = self.W_U.T  # [d_vocab, d_model]
    if not slices_apply(residual, weight):
        return self.hook_out(F.linear(residual, weight.contiguous(), self.b_U))
    parts = [
        F.linear(residual, weight[i : i + _VOCAB_CHUNK], self.b_U[i : i + _VOCAB_CHUNK])
        for i in range(0, weight.shape[0], _VOCAB_CHUNK)
    ]
    return self.hook_out(torch.cat(parts, dim=-1))


def slices_apply(residual, weight) -> bool:
    """Whether :func:`chunked_unembed` slices (a CPU residual, W_U in the layout of
    :mod:`.layout`); otherwise it runs TL's one matmul."""
    return residual.device.type == "cpu" and weight.is_contiguous()


def why_not(model) -> str | None:
    """Why :func:`install` leaves ``model.unembed`` alone, or None when it installs."""
    if type(model.unembed).forward is not Unembed.forward:
        return f"{type(model.unembed).__name__} overrides TL's Unembed.forward"
    return None


def installed(model) -> bool:
    """Whether ``model.unembed`` runs :func:`chunked_unembed`."""
    return getattr(model.unembed.forward, "__func__", None) is chunked_unembed


def install(model) -> bool:
    """Use :func:`chunked_unembed` for ``model.unembed``, only where it runs TL's own forward;
    returns whether it was installed."""
    if why_not(model) is not None:
        return False
    model.unembed.forward = types.MethodType(chunked_unembed, model.unembed)
    return True
