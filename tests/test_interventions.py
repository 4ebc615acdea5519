"""Interventions: closed-form math, hook placement, per-row sweeps, weight orthogonalization.

Everything runs on a tiny random Llama-like HookedTransformer (GQA, RMSNorm, rotary, gated MLP):
no download, a few seconds on CPU.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_model

from workbench.interventions import (
    PerRow,
    ablate,
    ablation_hooks,
    add,
    addition_hooks,
    addition_sweep_hooks,
    candidate_sweep_hooks,
    first_k,
    last_k,
    location_hook_names,
    location_sweep_hooks,
    orthogonalize_weights,
    per_token_plane_angle,
    plane_angle,
    rotate,
    rotate_by,
    rotation_hooks,
    special_cases,
    window,
)

D = 32


@pytest.fixture(scope="module")
def model():
    return tiny_model(
        llama=True,
        n_layers=3,
        d_model=D,
        n_key_value_heads=2,
        d_vocab=50,
        n_ctx=32,
        rotary_adjacent_pairs=False,
        final_rms=True,
        eps=1e-5,
        original_architecture="LlamaForCausalLM",
    )


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _basis(seed=0, dtype=torch.float64):
    q, _ = torch.linalg.qr(_rand(D, 2, seed=seed, dtype=torch.float64))
    return q.T.contiguous().to(dtype)


def _angle(x, basis):
    c = x.to(basis.dtype) @ basis.T
    return torch.rad2deg(torch.atan2(c[..., 1], c[..., 0])) % 360


def _angle_close(a, b, atol):
    diff = (a - b + 180) % 360 - 180
    return bool(diff.abs().max() < atol)


# ---------------------------------------------------------------------------------------------- math


def test_ablate_idempotent_and_orthogonal():
    x, r = _rand(4, 5, D), _rand(D, seed=1) * 7
    y = ablate(x, r)
    r_hat = r / r.norm()
    assert (y @ r_hat).abs().max() < 1e-12
    assert torch.allclose(ablate(y, r), y, atol=1e-12)
    assert torch.allclose(y, x - (x @ r_hat)[..., None] * r_hat, atol=1e-12)
    assert torch.allclose(add(x, r, 2.5), x + 2.5 * r)  # raw r, not normalised


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_rotate_preserves_norm_and_complement(dtype, tol):
    x, b = _rand(3, 6, D, dtype=dtype) * 10, _basis(dtype=dtype)
    for theta in (0.0, 37.0, 90.0, 200.0, 359.0):
        y = rotate(x, b, theta)
        assert y.dtype == dtype
        rel = (y.norm(dim=-1) / x.norm(dim=-1) - 1).abs().max()
        assert rel < tol
        comp = lambda v: v - (v @ b.T) @ b  # noqa: E731
        assert (comp(y) - comp(x)).abs().max() < tol * 10 * x.abs().max()
        assert _angle_close(_angle(y, b), torch.full(y.shape[:-1], theta, dtype=dtype), 1e-3)
        # in-plane norm ρ kept
        assert torch.allclose((y @ b.T).norm(dim=-1), (x @ b.T).norm(dim=-1), rtol=tol * 10)


def test_rotate_idempotent_and_rho_zero_exact():
    x, b = _rand(2, 5, D), _basis()
    y = rotate(x, b, 123.0)
    assert torch.allclose(rotate(y, b, 123.0), y, atol=1e-12)
    e = torch.eye(D, dtype=torch.float64)[:2]  # plane = span(e0, e1)
    x0 = x.clone()
    x0[..., :2] = 0  # ρ = 0 exactly
    assert torch.equal(rotate(x0, e, 77.0), x0)
    assert torch.equal(rotate(x0.float(), e.float(), 77.0), x0.float())


def test_adaptive_gate_and_per_row_theta():
    x, b = _rand(4, 6, D, seed=3).float(), _basis(seed=2).float()
    y = rotate(x, b, 150.0, adaptive=True)
    c1 = x @ b[0]
    off = c1 <= 0
    assert off.any() and (~off).any()
    assert torch.equal(y[off], x[off])  # exactly untouched
    assert _angle_close(_angle(y[~off], b), torch.tensor(150.0), 1e-2)
    thetas = torch.tensor([0.0, 90.0, 181.0, 300.0])
    batched = rotate(x, b, thetas)
    looped = torch.stack([rotate(x[i : i + 1], b, float(t))[0] for i, t in enumerate(thetas)])
    # Another batch is another matmul shape, and a BLAS may sum the D products of c = Bx in another
    # order (AVX-512 / AMX kernels do): |Δc| ≤ D·eps·‖x‖ per coordinate, and the rank-2 update
    # x + k1·b1 + k2·b2 carries it over with unit-norm b's (ρ, k1, k2: a few times that).
    tol = 4 * D * torch.finfo(torch.float32).eps * float(x.norm(dim=-1).max())
    torch.testing.assert_close(batched, looped, rtol=0, atol=tol)
    assert (batched[1] - batched[2]).abs().max() > 100 * tol  # the rows' settings really differ
    blocks = rotate(x, b, PerRow(torch.tensor([10.0, 20.0]), layout="blocks"))
    torch.testing.assert_close(blocks[:2], rotate(x[:2], b, 10.0), rtol=0, atol=tol)
    with pytest.raises(ValueError, match="batch has 4 rows"):
        rotate(x, b, torch.tensor([1.0, 2.0, 3.0]))


def test_rotate_by():
    x, b = _rand(3, 4, D), _basis()
    assert torch.equal(rotate_by(x, b, 0.0), x)
    y = rotate_by(x, b, 40.0)
    assert _angle_close(_angle(y, b), _angle(x, b) + 40.0, 1e-8)
    assert torch.allclose(rotate_by(2 * x, b, 40.0), 2 * y)  # linear, unlike rotate-to
    assert torch.allclose(plane_angle(x, b), _angle(x, b))


def test_special_cases():
    x, r = _rand(40, D, seed=5) * 3, _rand(D, seed=6)
    alphas = torch.tensor([-50.0, -1.0, 0.0, 1.0, 50.0, 500.0])
    out = special_cases(x, r, alphas)
    assert torch.allclose(out["ablation_angle"], torch.tensor(90.0, dtype=torch.float64), atol=1e-9)
    assert out["ablation_residual"].max() < 1e-10
    assert torch.allclose(out["angle_before"], per_token_plane_angle(x, r), atol=1e-9)
    ang = out["addition_angle"]
    assert ((ang > 0) & (ang < 180)).all()
    assert (ang.diff(dim=0) < 0).all()  # strictly decreasing in α
    assert torch.allclose(ang[2], out["angle_before"], atol=1e-9)  # α = 0: no change
    assert out["addition_residual"].max() < 1e-9
    assert (out["addition_rotation"].abs() < 180).all()


# ---------------------------------------------------------------------------------------------- hooks


def test_hook_names_and_validation(model):
    L = model.cfg.n_layers
    assert first_k(L, 2) == [0, 1] and last_k(L, 2) == [1, 2] and window(1, 3) == [1, 2]
    r = _rand(D).float()
    for loc in ("all", "resid", "attn", "mlp"):
        hooks = ablation_hooks(model, r, loc)
        assert hooks and all(name in model.hook_dict for name, _ in hooks)
    assert "blocks.2.hook_resid_post" in location_hook_names(L, "resid")
    assert "blocks.1.hook_resid_post" not in location_hook_names(L, "resid", [0, 1])
    assert len(ablation_hooks(model, r, "all")) == 3 * L
    rot = rotation_hooks(model, _basis(), 90.0)
    assert len(rot) == 2 * L - 1 and "blocks.0.ln1.hook_normalized" not in dict(rot)
    assert all(name in model.hook_dict for name, _ in rot)
    assert len(rotation_hooks(model, _basis(), 90.0, site="resid", layers=last_k(L, 2))) == 2
    with pytest.raises(ValueError, match="unknown location"):
        ablation_hooks(model, r, "everywhere")
    with pytest.raises(ValueError, match="out of range"):
        ablation_hooks(model, r, "all", layers=[5])
    with pytest.raises(ValueError, match="zero norm"):
        ablation_hooks(model, torch.zeros(D), "all")
    with pytest.raises(ValueError, match="d_model"):
        ablation_hooks(model, torch.ones(D + 1), "all")
    with pytest.raises(ValueError, match="not orthonormal"):
        rotation_hooks(model, torch.stack([torch.ones(D), torch.ones(D)]), 10.0)
    with pytest.raises(ValueError, match="orthonormal"):
        rotate(torch.ones(D), 2 * _basis(), 10.0)
    with pytest.raises(ValueError, match="unknown rotation site"):
        rotation_hooks(model, _basis(), 10.0, site="attn")
    with pytest.raises(ValueError, match="zero or non-finite"):
        candidate_sweep_hooks(model, torch.stack([torch.ones(D), torch.zeros(D)]))


class _Dir:  # duck-typed stand-in for workbench.directions.Direction
    def __init__(self, v):
        self.vector = v


def test_addition_changes_only_from_layer(model, tokens):
    r, alpha, layer = _rand(D, seed=3).float(), 2.0, 1
    names = lambda n: n.endswith(("hook_resid_pre", "hook_attn_out", "hook_mlp_out"))  # noqa: E731
    _, base = model.run_with_cache(tokens, names_filter=names)
    with model.hooks(fwd_hooks=addition_hooks(_Dir(r), alpha, layers=[layer], model=model)):
        _, steered = model.run_with_cache(tokens, names_filter=names)
    for name in base.keys():
        if int(name.split(".")[1]) < layer:
            assert torch.equal(base[name], steered[name]), name
    delta = steered[f"blocks.{layer}.hook_resid_pre"] - base[f"blocks.{layer}.hook_resid_pre"]
    assert torch.allclose(delta, (alpha * r).expand_as(delta), atol=1e-5)
    assert not torch.allclose(base["blocks.2.hook_mlp_out"], steered["blocks.2.hook_mlp_out"])


def test_ablation_all_and_resid(model, tokens):
    r = _rand(D, seed=4).float()
    r_hat = r / r.norm()
    names = lambda n: n.endswith(("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"))  # noqa: E731
    _, base = model.run_with_cache(tokens, names_filter=names)
    assert (base["blocks.1.hook_attn_out"] @ r_hat).abs().max() > 1e-2
    # our hooks are registered before run_with_cache's, so the cache sees post-ablation values
    with model.hooks(fwd_hooks=ablation_hooks(model, r, "all")):
        _, cache = model.run_with_cache(tokens, names_filter=names)
    for name in cache.keys():
        assert (cache[name] @ r_hat).abs().max() < 1e-5, name  # resid_post[L-1] included
    with model.hooks(fwd_hooks=ablation_hooks(model, r, "resid")):
        _, cache = model.run_with_cache(tokens, names_filter=names)
    assert (cache["blocks.2.hook_resid_post"] @ r_hat).abs().max() < 1e-5
    assert (cache["blocks.1.hook_resid_pre"] @ r_hat).abs().max() < 1e-5
    assert (cache["blocks.1.hook_attn_out"] @ r_hat).abs().max() > 1e-2


def _run(model, tokens, hooks):
    with model.hooks(fwd_hooks=hooks):
        return model(tokens)


def test_location_sweep_matches_separate_runs(model, tokens):
    r = _rand(D, seed=7).float()
    locations = ["none", "all", "resid", "attn", "mlp"]
    batch = tokens.repeat(len(locations), 1)
    swept = _run(model, batch, location_sweep_hooks(model, r, locations))
    n = tokens.shape[0]
    for k, loc in enumerate(locations):
        ref = _run(model, tokens, [] if loc == "none" else ablation_hooks(model, r, loc))
        assert (swept[k * n : (k + 1) * n] - ref).abs().max() < 1e-5, loc
    mask = torch.tensor([True, False])
    masked = _run(model, tokens, ablation_hooks(model, r, "all", row_mask=mask))
    assert torch.allclose(masked[1], model(tokens)[1], atol=1e-6)
    with pytest.raises(ValueError, match="batch has 3 rows"):
        _run(model, tokens[:1].repeat(3, 1), location_sweep_hooks(model, r, ["none", "all"]))


def test_candidate_and_addition_sweeps(model, tokens):
    dirs = _rand(3, D, seed=8).float()
    batch = tokens[:1].repeat(3, 1)
    swept = _run(model, batch, candidate_sweep_hooks(model, dirs))
    blocks = _run(model, tokens.repeat(3, 1), candidate_sweep_hooks(model, dirs, layout="blocks"))
    for i in range(3):
        ref = _run(model, tokens, ablation_hooks(model, dirs[i], "all"))
        assert (swept[i] - ref[0]).abs().max() < 1e-5
        assert (blocks[2 * i : 2 * i + 2] - ref).abs().max() < 1e-5
    layers, alphas = [0, 2, 2], torch.tensor([1.5, -1.0, 3.0])
    swept = _run(model, batch, addition_sweep_hooks(model, dirs, layers, alphas))
    for i in range(3):
        ref = _run(model, tokens[:1], addition_hooks(dirs[i], float(alphas[i]), [layers[i]], model=model))
        assert (swept[i] - ref[0]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="batch has 2 rows"):
        _run(model, tokens, candidate_sweep_hooks(model, dirs))


def test_rotation_hooks_per_row_and_kv_cache(model, tokens, generate_both_ways):
    b = _basis(seed=9).float()
    thetas = torch.tensor([30.0, 210.0])
    with model.hooks(fwd_hooks=rotation_hooks(model, b, thetas, site="pre_gain")):  # angle of hook_normalized
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: "ln2.hook_normalized" in n)
    assert _angle_close(_angle(cache["blocks.1.ln2.hook_normalized"][1], b), torch.tensor(210.0), 1e-2)
    for i in range(2):
        ref = _run(
            model, tokens[i : i + 1], rotation_hooks(model, b, float(thetas[i]), site="pre_gain", adaptive=False)
        )
        assert (logits[i] - ref[0]).abs().max() < 1e-5
    # position-free: KV-cached decoding sees [batch, 1, d] and must match the full recompute
    hooks = rotation_hooks(model, b, thetas, adaptive=True) + ablation_hooks(model, _rand(D).float(), "attn")
    cached, recomputed = generate_both_ways(model, tokens, hooks)
    assert torch.equal(cached, recomputed)


# ---------------------------------------------------------------------------------------------- ortho


def test_orthogonalize_weights_equals_ablation(model, tokens):
    model = copy.deepcopy(model)  # keep the shared fixture's zero biases
    torch.manual_seed(0)
    with torch.no_grad():  # nonzero output biases so they matter
        for block in model.blocks:
            block.attn.b_O.normal_(0, 0.5)
            block.mlp.b_out.normal_(0, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    r = _Dir(_rand(D, seed=11).float())
    ortho = orthogonalize_weights(model, r)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), f"original {n} changed"
    ref = _run(model, tokens, ablation_hooks(model, r, "all"))
    assert (ortho(tokens) - ref).abs().max() < 1e-4
    assert (ortho(tokens) - model(tokens)).abs().max() > 1e-2
    W_U, W_E = ortho.unembed.W_U, ortho.embed.W_E
    assert W_U.untyped_storage().data_ptr() != W_E.untyped_storage().data_ptr()
    assert torch.equal(ortho.blocks[0].attn._W_K, model.blocks[0].attn._W_K)
    with model.hooks(fwd_hooks=ablation_hooks(model, r)), pytest.raises(ValueError, match="hooks attached"):
        orthogonalize_weights(model, r)
