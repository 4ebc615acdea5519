"""TL's weights stored in the memory layout its forward asks for (no per-call copies)."""

from __future__ import annotations

import torch

__all__ = ["fast_weight_layout"]


def fast_weight_layout(model):
    """Store the MLP, W_O and unembedding weights in the memory layout TL's forward asks for.

    TL 3.9 computes ``F.linear(x, W.T.contiguous())`` (and contiguous rearranges of ``W_Q/K/V/O``)
    on *every* call, to match Hugging Face's bf16 numerics: a full weight copy per call, most of the
    time of a decoding step on CPU. Keeping each parameter as a transposed view of a buffer
    already in that layout makes ``.contiguous()`` a no-op: same values, shapes and numerics, no
    copies, no extra memory.
    """
    with torch.no_grad():
        for block in model.blocks:
            for name in ("W_gate", "W_in", "W_out"):
                param = getattr(block.mlp, name, None)
                if isinstance(param, torch.nn.Parameter) and param.dim() == 2:
                    param.data = param.data.T.contiguous().T
            for name in ("W_Q", "W_K", "W_V", "_W_K", "_W_V"):
                # [head, d_model, d_head] backed by [head, d_head, d_model]: the (head d_head) d_model
                # rearrange in TL's attention linear becomes a view (GQA keeps _W_K/_W_V as parameters)
                param = block.attn._parameters.get(name)
                if isinstance(param, torch.nn.Parameter) and param.dim() == 3:
                    param.data = param.data.transpose(1, 2).contiguous().transpose(1, 2)
            w_o = getattr(block.attn, "W_O", None)
            if isinstance(w_o, torch.nn.Parameter) and w_o.dim() == 3:
                # [head, d_head, d_model] backed by a [d_model, head, d_head] buffer
                w_o.data = w_o.data.permute(2, 0, 1).contiguous().permute(1, 2, 0)
        model.unembed.W_U.data = model.unembed.W_U.data.T.contiguous().T
    return model
