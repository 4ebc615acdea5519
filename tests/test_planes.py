"""The steering plane on synthetic candidates that drift across depth in a known 2-D subspace."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.directions import CandidateKey, Candidates, Direction
from workbench.planes import SIGN_RULE, Plane, build_plane, plane_report, principal_components

D, N_LAYERS, SITES = 48, 12, ("resid_mid", "resid_post")


def frame_vectors(d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    """Two orthonormal vectors: r (refusal) and q (the drift partner)."""
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    return q[:, 0].float(), q[:, 1].float()


def arc_candidates(*, seed: int = 0, noise: float = 0.05) -> Candidates:
    """Candidates whose direction sweeps from −80° (early) to +50° (late) in span(r, q), as in the
    reference's steering_plane plot, with norms growing with depth and a little isotropic noise."""
    r, q = frame_vectors()
    gen = torch.Generator().manual_seed(seed)
    rows, keys = [], []
    for s, site in enumerate(SITES):
        for layer in range(N_LAYERS):
            phi = math.radians(-80 + 130 * layer / (N_LAYERS - 1) + 3 * s)
            v = math.cos(phi) * r + math.sin(phi) * q + noise * torch.randn(D, generator=gen)
            rows.append((1 + layer) * v)
            keys.append(CandidateKey(site, layer, -1))
    return Candidates(torch.stack(rows), keys, "unit", "hash")


def b1_key(cands: Candidates) -> CandidateKey:
    """The candidate closest to r (mid-depth), standing in for max_sim's choice."""
    r, _ = frame_vectors()
    return cands.keys[int((cands.unit() @ r).argmax())]


def circ_dist(a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
    diff = (torch.as_tensor(a, dtype=torch.float64) - b) % 360
    return torch.minimum(diff, 360 - diff)


@pytest.mark.parametrize("norm", ["raw", "unit"])
def test_pca_matches_svd_reference(norm):
    """PC1 = the top right-singular vector of the centred candidate matrix: the candidates as they
    are (``raw``, the study) or rescaled to unit length (``unit``)."""
    cands = arc_candidates()
    rows = (cands.vectors if norm == "raw" else cands.unit()).double()
    centred = rows - rows.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    ratio = s**2 / (s**2).sum()
    components, pca_ratio = principal_components(rows)
    assert abs(float(components[0] @ vh[0])) > 1 - 1e-6
    assert torch.allclose(pca_ratio, ratio, atol=1e-6)
    plane = build_plane(cands, b1_key(cands), candidate_norm=norm)
    assert plane.report["candidate_norm"] == norm and plane.report["candidate_sites"] == list(SITES)
    assert plane.pc1_explained_variance == pytest.approx(float(ratio[0]), abs=1e-6)
    b1 = plane.b1.double()
    expected_b2 = vh[0] - (vh[0] @ b1) * b1
    assert abs(float(plane.b2.double() @ expected_b2 / expected_b2.norm())) > 1 - 1e-6
    expected_angle = math.degrees(math.acos(abs(float(vh[0] @ b1))))
    assert plane.angle_pc1_b1_deg == pytest.approx(expected_angle, abs=1e-4)
    assert 0 <= plane.angle_pc1_b1_deg <= 90


def test_basis_orthonormal_and_b1_exact():
    cands = arc_candidates()
    key = b1_key(cands)
    plane = build_plane(cands, key)
    assert plane.basis.shape == (2, D) and plane.basis.dtype == torch.float32
    assert plane.basis_max_abs_gram_error() < 1e-6
    assert torch.equal(plane.b1, cands.unit()[cands.index(key.site, key.layer, key.pos)])
    assert plane.b1_key == key and plane.variant == "pc1" and plane.sign_rule == SIGN_RULE
    # b1 as a Direction or a tensor gives the same plane
    as_direction = build_plane(cands, cands.direction(key))
    as_tensor = build_plane(cands, cands.vectors[cands.index(key.site, key.layer, key.pos)])
    assert torch.equal(as_direction.basis, plane.basis) and torch.equal(as_tensor.basis, plane.basis)
    assert as_direction.b1_key == key and as_tensor.b1_key is None


def test_angle_convention():
    plane = build_plane(arc_candidates(), b1_key(arc_candidates()))
    b1, b2 = plane.b1, plane.b2
    for vec, want in ((b1, 0.0), (b2, 90.0), (-b1, 180.0), (-b2, 270.0)):
        angle, radius = plane.coords(3.0 * vec)
        assert circ_dist(angle, want) < 1e-4 and radius == pytest.approx(3.0, rel=1e-5)
    thetas = torch.arange(0.0, 360.0, 7.5, dtype=torch.float64)
    rad = torch.deg2rad(thetas)[:, None]
    x = 2.5 * (torch.cos(rad) * b1.double() + torch.sin(rad) * b2.double())
    x = x + 0.1 * torch.randn(len(thetas), D, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) @ (
        torch.eye(D, dtype=torch.float64) - plane.basis.double().T @ plane.basis.double()
    )  # off-plane part ignored
    angle, radius = plane.coords(x.float())
    assert angle.shape == thetas.shape and (angle >= 0).all() and (angle < 360).all()
    assert circ_dist(angle, thetas).max() < 1e-3
    assert torch.allclose(radius.double(), torch.full_like(thetas, 2.5), atol=1e-5)
    frame = plane.candidate_coords(arc_candidates())
    assert list(frame.columns) == ["site", "layer", "pos", "angle_deg", "radius"]
    own = frame[(frame.site == plane.b1_key.site) & (frame.layer == plane.b1_key.layer)]
    assert circ_dist(own.angle_deg.item(), 0.0) < 1e-3 and own.radius.item() == pytest.approx(1.0, abs=1e-5)


def test_sign_rule_and_stability():
    cands = arc_candidates()
    key = b1_key(cands)
    plane = build_plane(cands, key)
    deep = torch.tensor([k.layer >= N_LAYERS - 4 for k in cands.keys])  # top third of 12 layers
    assert float((cands.unit()[deep] @ plane.b2).mean()) >= 0
    # late layers at positive angles, early layers at negative ones (as in the reference's plots)
    frame = plane.candidate_coords(cands)
    assert (frame[frame.layer == N_LAYERS - 1].angle_deg.between(1, 179)).all()
    assert (frame[frame.layer == 0].angle_deg.between(181, 359)).all()
    assert torch.equal(build_plane(cands, key).basis, plane.basis)
    reversed_cands = Candidates(cands.vectors.flip(0), cands.keys[::-1], cands.kind, cands.prompt_hash)
    assert torch.allclose(build_plane(reversed_cands, key).basis, plane.basis, atol=1e-5)
    # flipping every candidate's q-component mirrors the arc; the rule still puts late layers at > 0
    r, q = frame_vectors()
    mirrored = cands.vectors - 2 * (cands.vectors @ q)[:, None] * q
    mirror = build_plane(Candidates(mirrored, cands.keys, "unit", "hash"), key)
    mframe = mirror.candidate_coords(Candidates(mirrored, cands.keys, "unit", "hash"))
    assert (mframe[mframe.layer == N_LAYERS - 1].angle_deg.between(1, 179)).all()


def test_degenerate_plane_raises():
    r, _ = frame_vectors()
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0, -1.5, 2.5])
    vectors = scales[:, None] * r + 1e-4 * torch.randn(len(scales), D, generator=gen)
    cands = Candidates(vectors, [CandidateKey("resid_pre", i, -1) for i in range(len(scales))], "raw", "h")
    with pytest.raises(ValueError, match="degenerate plane: PC1 is parallel to b1 .*variant='per_sample'"):
        build_plane(cands, CandidateKey("resid_pre", 3, -1))


def test_input_errors():
    cands = arc_candidates()
    key = b1_key(cands)
    with pytest.raises(ValueError, match="zero-norm b1"):
        build_plane(cands, torch.zeros(D))
    with pytest.raises(ValueError, match="d_model=16 but the model has d_model=48"):
        build_plane(cands, torch.ones(16))
    with pytest.raises(ValueError, match="at least 2"):
        build_plane(cands.subset(sites=["resid_mid"]), key, layer_range=(3, 3))
    with pytest.raises(ValueError, match="unknown plane variant"):
        build_plane(cands, key, variant="pc2")
    with pytest.raises(ValueError, match="per_sample"):
        build_plane(cands, key, variant="per_sample")
    with pytest.raises(KeyError):
        build_plane(cands, CandidateKey("resid_pre", 0, -1))
    zero = Candidates(
        torch.cat([torch.zeros(1, D), cands.vectors]), [CandidateKey("resid_pre", 0, -1), *cands.keys], "unit", "hash"
    )
    plane = build_plane(zero, key)  # the zero row is excluded, not a NaN source
    assert plane.report["n_candidates_used"] == len(cands) and not plane.basis.isnan().any()
    with pytest.raises(ValueError, match="zero-norm b1"):
        build_plane(zero, CandidateKey("resid_pre", 0, -1))


def test_last_two_pcs_reports_little_variance():
    cands = arc_candidates()
    key = b1_key(cands)
    pc1 = build_plane(cands, key)
    last = build_plane(cands, key, variant="last_two_pcs")
    spectrum = last.report["explained_variance_ratio"]
    assert len(spectrum) <= 30 and spectrum == pytest.approx(pc1.report["explained_variance_ratio"])
    first, second = last.report["components"]
    assert second == len(cands) - 2  # M centred rows carry at most M − 1 components
    assert last.pc1_explained_variance == pytest.approx(spectrum[first])
    assert last.pc1_explained_variance < 0.05 * pc1.pc1_explained_variance
    assert last.report["reference_b1_in_plane_norm"] < 0.5  # the plane misses the refusal direction
    assert last.b1_key is None and last.basis_max_abs_gram_error() < 1e-6
    assert float(last.b1 @ pc1.b1) >= 0  # 0° still on the refusal side


def test_layer_range_restricts():
    cands = arc_candidates()
    key = b1_key(cands)
    full = build_plane(cands, key)
    mid = build_plane(cands, key, layer_range=(3, 8))
    assert mid.report["n_candidates_used"] == 2 * 6 and full.report["n_candidates_used"] == len(cands)
    assert mid.report["layer_range"] == [3, 8]
    subset = cands.subset(layers=list(range(3, 9)))
    assert mid.pc1_explained_variance == pytest.approx(build_plane(subset, key).pc1_explained_variance, abs=1e-9)
    assert torch.allclose(mid.basis, build_plane(subset, key).basis, atol=1e-6)
    assert not torch.allclose(mid.basis, full.basis, atol=1e-3)


def test_per_sample_variant():
    cands = arc_candidates()
    key = b1_key(cands)
    r, q = frame_vectors()
    gen = torch.Generator().manual_seed(5)
    # within-class spread mostly along a third direction w ⟂ r, q
    w = torch.randn(D, generator=gen)
    w -= (w @ r) * r + (w @ q) * q
    w /= w.norm()
    rows = 3 * r + 2.0 * torch.randn(64, 1, generator=gen) * w + 0.1 * torch.randn(64, D, generator=gen)
    plane = build_plane(cands, key, variant="per_sample", per_sample=rows)
    assert plane.variant == "per_sample" and plane.report["n_rows_pca"] == 64
    assert abs(float(plane.b2 @ w)) > 0.95 and plane.basis_max_abs_gram_error() < 1e-6
    assert torch.equal(plane.b1, cands.unit()[cands.index(key.site, key.layer, key.pos)])
    with pytest.raises(ValueError, match="d_model"):
        build_plane(cands, key, variant="per_sample", per_sample=torch.randn(4, 8))


def test_save_load_and_report(tmp_path):
    cands = arc_candidates()
    plane = build_plane(cands, b1_key(cands), model="toy")
    path = plane.save(tmp_path / "plane.safetensors")
    loaded = Plane.load(path, d_model=D)
    assert torch.equal(loaded.basis, plane.basis)
    for f in (
        "b1_key",
        "variant",
        "pc1_explained_variance",
        "angle_pc1_b1_deg",
        "sign_rule",
        "model",
        "prompt_hash",
        "versions",
        "report",
    ):
        assert getattr(loaded, f) == getattr(plane, f), f
    with pytest.raises(ValueError, match="plane has d_model=48 but the model has d_model=896"):
        Plane.load(path, d_model=896)
    with pytest.raises(ValueError, match="not a Direction"):
        Direction.load(path)
    report = plane_report(plane)
    assert report["b1"] == str(plane.b1_key) and report["variant"] == "pc1"
    assert report["basis_max_abs_gram_error"] < 1e-6 and report["sign_rule"] == SIGN_RULE
    assert {"pc1_explained_variance", "angle_pc1_b1_deg"} <= set(report)


def test_raw_and_unit_planes_differ_when_norms_grow_with_depth():
    """Candidates whose length grows with depth weigh late layers more in the raw PCA."""
    cands = arc_candidates()
    raw, unit = (build_plane(cands, b1_key(cands), candidate_norm=n) for n in ("raw", "unit"))
    assert torch.equal(raw.b1, unit.b1)
    assert abs(float(raw.b2 @ unit.b2)) < 0.995
    assert raw.pc1_explained_variance != pytest.approx(unit.pc1_explained_variance, abs=1e-2)
    with pytest.raises(ValueError, match="candidate_norm must be 'raw'"):
        build_plane(cands, b1_key(cands), candidate_norm="scaled")


def test_repr_names_the_axes_not_the_basis():
    cands = arc_candidates()
    key = b1_key(cands)
    plane = build_plane(cands, key, model="organism")
    text = repr(plane)
    assert text.startswith(f"Plane(pc1, b1={key}, b2=PC1 of {len(cands)} candidates at resid_mid, resid_post ⟂ b1, ")
    assert f"PC1 explains {plane.pc1_explained_variance:.0%}, {plane.angle_pc1_b1_deg:.1f}° from b1" in text
    assert f"d_model={D}" in text and "model=organism" in text and "prompt_hash=hash" in text
    unit = repr(build_plane(cands, key, candidate_norm="unit"))
    assert f"b2=PC1 of {len(cands)} candidates at resid_mid, resid_post (rescaled to unit length) ⟂ b1" in unit
    two = repr(build_plane(cands, key, variant="last_two_pcs"))
    assert two.startswith("Plane(last_two_pcs, b1, b2=the last two PCs of ") and "from the given b1" in two
    assert "tensor(" not in text + two and max(len(text), len(two)) < 300
