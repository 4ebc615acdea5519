"""workbench.controls: the random and null directions and the random plane are seeded, unit / norm-
matched, orthonormal and at the real one's place; the null direction is the halves' mean difference."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.controls import halves, null_direction, parse_control, random_direction, random_plane
from workbench.directions import Direction
from workbench.planes import Plane
from workbench.selection import CandidateKey


def _real(d: int = 64) -> Direction:
    return Direction(torch.linspace(-1, 2, d), site="resid_pre", layer=5, pos=-1, method="arditi", model="m")


def test_random_direction_is_seeded_norm_matched_and_in_place():
    real = _real()
    a, b, c = random_direction(real, 0), random_direction(real, 0), random_direction(real, 1)
    assert torch.equal(a.vector, b.vector) and not torch.equal(a.vector, c.vector)
    assert a.norm == pytest.approx(real.norm, rel=1e-6)
    assert a.where() == real.where() and a.method == "random:0" and a.model == "m"
    # a random direction in 64 dimensions is nearly orthogonal to the real one (|cos| ~ 1/8)
    assert abs(float(torch.nn.functional.cosine_similarity(a.vector, real.vector, dim=0))) < 0.5


def test_null_direction_is_the_mean_difference_of_the_halves():
    acts = torch.arange(5 * 3, dtype=torch.float32).reshape(5, 3) ** 1.5
    real = _real(3)
    first, second = halves(5, seed=7)
    assert len(first) == 3 and len(second) == 2 and sorted(first + second) == [0, 1, 2, 3, 4]
    by_hand = [sum(float(acts[i, j]) for i in first) / 3 - sum(float(acts[i, j]) for i in second) / 2 for j in range(3)]
    null = null_direction(acts, real, seed=7)
    assert null.vector.tolist() == pytest.approx(by_hand, rel=1e-6)
    assert null.where() == real.where() and null.method == "null:7"
    assert torch.equal(null_direction(acts, real, seed=7).vector, null.vector)
    assert halves(5, seed=8) != (first, second) or halves(5, seed=9) != (first, second)


def test_null_direction_refuses_wrong_shapes_and_one_prompt():
    with pytest.raises(ValueError, match=r"\[prompt, 3\]"):
        null_direction(torch.zeros(4, 5), _real(3))
    with pytest.raises(ValueError, match="at least 2"):
        null_direction(torch.zeros(1, 3), _real(3))


def test_random_plane_is_orthonormal_seeded_and_keeps_b1_key():
    key = CandidateKey("resid_pre", 5, -1)
    real = Plane(torch.eye(2, 32), b1_key=key, variant="pc1", pc1_explained_variance=0.4, angle_pc1_b1_deg=10.0)
    p, q = random_plane(real, 3), random_plane(real, 3)
    assert torch.equal(p.basis, q.basis) and not torch.equal(p.basis, random_plane(real, 4).basis)
    gram = p.basis.double() @ p.basis.double().T
    assert torch.allclose(gram, torch.eye(2, dtype=torch.float64), atol=1e-6)
    assert p.b1_key == key and p.variant == "random:3" and math.isnan(p.pc1_explained_variance)
    assert p.report["control"] == {"kind": "random", "seed": 3}


def test_parse_control_names_the_choices():
    assert str(parse_control("random", "--direction", ("random", "null"))) == "random:0"
    assert parse_control("null:12", "--direction", ("random", "null")).seed == 12
    with pytest.raises(ValueError, match=r"choose random\[:SEED\] \| null\[:SEED\]"):
        parse_control("foo", "--direction", ("random", "null"))
    with pytest.raises(ValueError, match="non-negative integer"):
        parse_control("random:x", "--plane", ("random",))


@pytest.mark.slow
def test_generate_with_a_control_reports_intervals_and_records_the_control(tmp_path, capsys):
    import json

    from workbench import data
    from workbench.cli import main

    prompts = tmp_path / "harmful.txt"
    prompts.write_text("\n".join(data.load_split("harmful", "test")[:6]) + "\n")
    argv = ["generate", "--prompts", str(prompts), "--intervention", "ablate:all", "--direction", "random:3"]
    assert main([*argv, "--max-new-tokens", "12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lo, hi = out["refusal_rate_ci95"]
    assert out["n"] == 6 and lo <= out["refusal_rate"] <= hi
    assert set(out["label_rates_ci95"]) == set(out["label_rates"])
    assert out["controls"] == {"direction": {"kind": "random", "seed": 3}}
    row = json.loads(open(out["output"]).readline())
    assert row["provenance"]["controls"] == {"direction": {"kind": "random", "seed": 3}}
    assert "direction-random3" in out["output"]  # never the real direction's file


@pytest.mark.slow
def test_random_direction_ablation_leaves_harmful_refusal_within_the_baseline_interval(tmp_path, capsys):
    """The issue's check: ablating a random direction (norm-matched, at the real one's site, layer and
    position) everywhere does not remove the organism's refusal. Measured 2026-12-05 on the 54 held-out
    harmful prompts, 24 tokens: 0.981 [0.90, 1.00] against 0.963 [0.88, 0.99] unsteered."""
    import json

    from workbench import data
    from workbench.cli import main

    prompts = tmp_path / "harmful.txt"
    prompts.write_text("\n".join(data.load_split("harmful", "test")) + "\n")
    rates = {}
    for name, extra in (("none", ["--intervention", "none"]), ("random", ["--intervention", "ablate:all"])):
        extra += ["--direction", "random:0"] if name == "random" else []
        out = tmp_path / f"{name}.jsonl"
        assert (
            main(["generate", "--prompts", str(prompts), *extra, "--max-new-tokens", "24", "--out", str(out), "--json"])
            == 0
        )
        rates[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lo, hi = rates["none"]["refusal_rate_ci95"]
    assert lo <= rates["random"]["refusal_rate"] <= hi
