"""Arditi et al.'s first-token metrics in float64: the smoothed KL and the refusal log-odds at saturation
(synthetic tensors, no model)."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.metrics import first_token_kl, refusal_logodds


def _ref_logodds(logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """The study's refusal_score, written out: float64 softmax of float64 logits."""
    p_r = torch.softmax(logits.double(), dim=-1)[:, ids].sum(-1)
    return torch.log(p_r + 1e-8) - torch.log(1 - p_r + 1e-8)


def test_refusal_logodds_from_float64_logprobs_is_the_reference_at_saturation():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5000, generator=gen) * 2.0
    logits[:, 7] = torch.tensor([5.0, 24.0, 26.0, 28.0])  # refusal token: mild, saturating, saturated
    logits = logits.float()  # what a float32 model gives
    ref = _ref_logodds(logits, [7])
    assert ref[1] > 12 and ref[2] > 15  # the regime that float32 gets wrong
    ours = refusal_logodds(torch.log_softmax(logits.double(), dim=-1), [7])
    assert ours.dtype == torch.float64
    assert (ours - ref).abs().max().item() <= 1e-9
    # the float32 log-softmax the workbench used before: off by ≥ 0.1 at saturation, so the check above can fail
    f32 = refusal_logodds(torch.log_softmax(logits, dim=-1), [7])
    assert (f32 - ref)[1:].abs().max().item() > 0.1


def test_first_token_kl_eps_is_the_studys_smoothed_kl():
    p = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.1, 0.0, 0.6, 0.3]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.5, 0.25, 0.0], [0.2, 0.3, 0.5, 0.0]], dtype=torch.float64)
    lp, lq = p.log(), q.log()
    eps = 1e-6
    expected = [
        sum(a * (math.log(a + eps) - math.log(b + eps)) for a, b in zip(pr, qr))
        for pr, qr in zip(p.tolist(), q.tolist())
    ]
    smoothed = first_token_kl(lp, lq, eps=eps)
    assert smoothed.dtype == torch.float64
    assert smoothed.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    exact = first_token_kl(lp, lq)  # default eps = 0: the exact KL, unchanged
    assert exact[0].item() == pytest.approx(0.5 * math.log(2) + 0.25 * math.log(0.5), abs=1e-12)
    assert math.isinf(exact[1].item())  # q = 0 where p = 0.3 > 0
    assert math.isfinite(smoothed[1].item()) and smoothed[1].item() > 3  # ≈ 0.3·log(0.3/1e-6)
    assert smoothed[0].item() != exact[0].item()  # ε really enters
    assert abs(smoothed[0].item() - exact[0].item()) < 1e-5
    with pytest.raises(ValueError, match="eps must be ≥ 0"):
        first_token_kl(lp, lq, eps=-1e-6)
