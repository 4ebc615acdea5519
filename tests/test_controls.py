"""workbench.controls: the random and null directions and the random plane are seeded, unit / norm-
matched, orthonormal and at the real one's place; the null direction is the halves' mean difference."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from test_intervals import index_summary

from workbench import experiments as ex
from workbench import figures as fg
from workbench import stats
from workbench.control_numbers import RULE, control_numbers, effect_outside_control
from workbench.controls import halves, null_direction, parse_control, random_direction, random_plane
from workbench.directions import Direction
from workbench.planes import Plane
from workbench.report import MainTables, write_index
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


# --- the controls beside the real interventions: verdicts, key numbers, index, figures, config


def _summary(rows: list[tuple], keys: list[str]) -> pd.DataFrame:
    """A summary with the 95 % Wilson intervals from ``(key values..., refusals, n)`` rows."""
    table = pd.DataFrame(rows, columns=[*keys, "k", "n"])
    table["refusal_rate"], table["kl"] = table["k"] / table["n"], 0.1
    return ex.rate_intervals(table.drop(columns="k"))


def _tables(with_controls: bool = True) -> MainTables:
    locations = _summary(
        [("harmful", "none", 52, 54), ("harmful", "all", 1, 54), ("harmful", "addition", 54, 54)]
        + [("harmless", "none", 0, 54), ("harmless", "all", 0, 54), ("harmless", "addition", 40, 54)],
        ["split", "condition"],
    )
    controls = _summary(
        [("harmful", "random:0/all", 53, 54), ("harmless", "random:0/all", 0, 54)]
        + [("harmful", "random:0/addition", 52, 54), ("harmless", "random:0/addition", 1, 54)]
        + [("harmful", "null:0/all", 51, 54), ("harmless", "null:0/all", 0, 54)],
        ["split", "condition"],
    )
    controls["control"], controls["base"] = zip(*(c.split("/") for c in controls["condition"]))
    sweep = _summary(
        [(s, a, k, 4) for s, k in (("harmful", 4), ("harmless", 0)) for a in (0.0, 90.0, 180.0)], ["split", "angle"]
    )
    sweep.loc[
        (sweep.split == "harmful") & (sweep.angle == 180.0), ["refusal_rate", "refusal_ci_lo", "refusal_ci_hi"]
    ] = (0.0, 0.0, 0.49)
    plane = _summary(
        [(s, a, k, 4) for s, k in (("harmful", 4), ("harmless", 0)) for a in (0.0, 90.0, 270.0)], ["split", "angle"]
    )
    plane["plane"] = "random:0"
    extra = {"controls": controls, "plane_control": plane} if with_controls else {}
    return MainTables(locations, None, None, sweep, None, **extra)


def test_an_effect_lies_outside_its_control_only_when_the_intervals_do_not_overlap():
    assert effect_outside_control([0.0, 0.1], [0.9, 1.0]) and effect_outside_control((0.9, 1.0), (0.0, 0.1))
    assert not effect_outside_control([0.0, 0.5], [0.4, 1.0])  # overlapping
    assert not effect_outside_control([0.0, 0.5], [0.5, 1.0])  # touching counts as overlapping
    assert not effect_outside_control([0.2, 0.3], [0.0, 1.0])  # nested


def test_key_numbers_put_each_control_beside_its_real_intervention(tmp_path):
    numbers = control_numbers(_tables())
    assert numbers["rule"] == RULE and "do not overlap" in RULE
    ablate = numbers["directions"]["random:0/all"]
    assert (ablate["control"], ablate["base"], ablate["intervention"]) == ("random:0", "all", "ablate:all")
    harmful = ablate["harmful"]
    assert (
        harmful["refusal_rate"] == 0.981 and harmful["n"] == 54 and harmful["ci95"][0] == pytest.approx(0.9, abs=0.01)
    )
    assert harmful["real"]["refusal_rate"] == 0.019 and harmful["real"]["ci95"][1] == pytest.approx(0.098, abs=0.001)
    assert harmful["effect_outside_control"] is True and ablate["harmless"]["effect_outside_control"] is False
    addition = numbers["directions"]["random:0/addition"]
    assert addition["harmless"]["effect_outside_control"] is True  # 40/54 against 1/54
    assert addition["harmful"]["effect_outside_control"] is False  # 54/54 against 52/54
    assert numbers["directions"]["null:0/all"]["harmful"]["effect_outside_control"] is True
    plane = numbers["plane"]["random:0"]
    assert list(plane) == ["0", "90", "270"]
    assert plane["0"]["harmful"]["effect_outside_control"] is False  # 4/4 in both planes
    assert plane["270"]["harmful"]["real"] is None and plane["270"]["harmful"]["effect_outside_control"] is None
    assert control_numbers(None) == {} and control_numbers(_tables(with_controls=False)) == {}

    text = write_index(tmp_path, {}, {}, index_summary(refusal_by_location={}, controls=numbers)).read_text()
    assert "Controls (" in text and RULE in text
    assert (
        "- ablate:all with a random direction (seed 0): harmful refusal 0.981 [0.90, 1.00] (n=54) against "
        "0.019 [0.00, 0.10] with the refusal direction: the effect lies outside the control's interval; "
        "harmless refusal 0.000 [0.00, 0.07] (n=54) against 0.000 [0.00, 0.07] with the refusal direction: "
        "the effect lies within the control's interval." in text
    )
    assert "- rotation to 270° in a random plane (seed 0): harmful refusal 1.000" in text
    assert "no real intervention to compare with" in text
    assert (
        "Controls" not in write_index(tmp_path, {}, {}, index_summary(refusal_by_location={}, controls={})).read_text()
    )


def test_location_comparison_draws_the_controls_beside_their_conditions():
    tables = _tables()
    plain = fg.location_comparison(tables.locations)
    assert not [t for t in plain.data if "direction" in (t.name or "")]
    fig = fg.location_comparison(tables.locations, controls=tables.controls)
    names = [t.name for t in fig.data]
    for split in ("harmful", "harmless"):
        assert f"{split}, random direction (seed 0)" in names and f"{split}, null direction (seed 0)" in names
    (random,) = [t for t in fig.data if t.name == "harmful, random direction (seed 0)"]
    assert list(random.x) == ["everywhere: random dir.", "addition (+αr): random dir."]
    assert random.marker.pattern.shape == "/" and random.offsetgroup == "harmful"
    assert list(random.y) == pytest.approx([53 / 54, 52 / 54]) and random.error_y.arrayminus[0] > 0.05
    assert list(fig.layout.xaxis.categoryarray) == [
        "none",
        "everywhere",
        "everywhere: random dir.",
        "everywhere: null dir.",
        "addition (+αr)",
        "addition (+αr): random dir.",
    ]
    (kl,) = [t for t in fig.data if t.name == "KL on harmless prompts, controls"]
    assert kl.xaxis == "x2" and len(kl.x) == 3 and kl.error_y.array is None  # no per-prompt KL: no interval
    # with the controls' per-prompt KL, each control's mean KL carries its bootstrap interval
    conditions = list(dict.fromkeys(tables.controls["condition"]))
    per_prompt = pd.DataFrame(
        [(split, c, float(k)) for split in ("harmful", "harmless") for c in conditions for k in range(5)],
        columns=["split", "condition", "kl"],
    )
    with_kl = fg.location_comparison(tables.locations, controls=tables.controls, control_prompts=per_prompt)
    (kl,) = [t for t in with_kl.data if t.name == "KL on harmless prompts, controls"]
    ci = stats.bootstrap_ci([0.0, 1.0, 2.0, 3.0, 4.0], seed=0)
    y = tables.controls.set_index(["split", "condition"]).loc["harmless", "kl"]
    assert list(kl.error_y.array) == pytest.approx([max(0.0, ci[1] - y[c]) for c in conditions])
    assert "causal controls" in fig.layout.title.text and "causal controls" not in plain.layout.title.text


def test_angle_sweep_draws_the_random_plane_with_its_intervals():
    tables = _tables()
    plain = fg.angle_sweep_polar(tables.sweep)
    assert not [t for t in plain.data if "plane" in (t.name or "")]
    fig = fg.angle_sweep_polar(tables.sweep, control=tables.plane_control)
    (harmful,) = [t for t in fig.data if t.name == "random plane (seed 0): harmful"]
    assert list(harmful.theta) == [0.0, 90.0, 270.0] and list(harmful.r) == [1.0] * 3
    assert harmful.mode == "markers" and harmful.marker.line.color == fg.SPLIT_COLORS["harmful"]
    assert harmful.marker.color not in fg.SPLIT_COLORS.values()  # grey: no split's colour
    segments = [t for t in fig.data if t.legendgroup == harmful.legendgroup and t.mode == "lines"]
    (segment,) = segments
    assert segment.r[0] == pytest.approx(0.51, abs=0.01) and segment.r[1] == 1.0 and segment.r[2] is None
    assert "random plane (seed 0): harmless" in [t.name for t in fig.data]
    assert "random plane" in fig.layout.title.text and "random plane" not in plain.layout.title.text


def test_control_config_fields_are_checked_loaded_and_kept_out_of_the_default_key(tmp_path):
    import json

    from workbench.artifacts import sha256_text
    from workbench.config import LATE_RUN_FIELDS, RunConfig, load_configs
    from workbench.run import _config_fields

    default = RunConfig()
    assert (default.controls, default.control_seed, default.control_angles) == (True, 0, (0.0, 90.0, 180.0, 270.0))
    fields = _config_fields(default)
    assert not {"controls", "control_seed", "control_angles"} & set(fields)
    assert sha256_text(json.dumps(fields, sort_keys=True))[:8] == "71b4e746"  # the cached default runs' folder
    assert {"controls", "control_seed", "control_angles"} <= set(LATE_RUN_FIELDS)
    assert _config_fields(RunConfig(controls=False))["controls"] is False
    for angles in ((360.0,), (-30.0,), (), (90.0, 90.0)):
        with pytest.raises(ValueError, match=r"RunConfig.control_angles .*in \[0, 360\)"):
            RunConfig(control_angles=angles)
    with pytest.raises(ValueError, match="control_seed must be at least 0"):
        RunConfig(control_seed=-1)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"controls": False, "control_seed": 3, "control_angles": [0, 45]}))
    run, _ = load_configs(path)
    assert (run.controls, run.control_seed, run.control_angles) == (False, 3, (0.0, 45.0))
    path.write_text(json.dumps({"controls": "yes"}))
    with pytest.raises(ValueError, match="RunConfig.controls in .*c.json must be true or false"):
        load_configs(path)
    path.write_text(json.dumps({"control_angles": [0, 400]}))
    with pytest.raises(ValueError, match=r"\[400.0\] outside \[0, 360\).*in .*c.json"):
        load_configs(path)


def test_the_main_job_runs_the_control_stages_only_when_asked(tmp_path, monkeypatch, capsys):
    """On a tiny random model with given refusal tokens (seconds): the default config computes the
    ``controls`` and ``plane_control`` stages and reports them; ``"controls": false`` runs neither
    and still draws figures 01 and 05, with an empty ``controls`` key and no Controls block."""
    import json
    from pathlib import Path

    from tiny_models import save_tiny_chat_folder

    from workbench.artifacts import CACHE_ENV
    from workbench.cli import main

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    data = Path(__file__).parent / "data"
    sizes = {"n_eval": 4, "n_sweep": 4, "max_new_tokens": 4, "angle_step": 90.0, "subset_sizes": [1]}
    analysis = {"filter_prompts": False, "arditi_positions": [-1], "arditi_prompts": 4, "refusal_tokens": [40]}
    model = str(save_tiny_chat_folder(tmp_path / "model"))
    summaries = {}
    for controls in (True, False):
        config = tmp_path / f"config-{controls}.json"
        config.write_text(json.dumps({**sizes, "controls": controls, "analysis": analysis}))
        figures = tmp_path / f"figures-{controls}"
        argv = ["run", "--model", model, "--config", str(config), "--figures", str(figures), "--json"]
        argv += ["--harmful", str(data / "unseen_harmful.txt"), "--harmless", str(data / "unseen_harmless.txt")]
        assert main(argv) == 0
        summaries[controls] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (figures / "01_location_comparison.html").exists() and (figures / "05_angle_sweep.html").exists()
        index = (figures / "README.md").read_text()
        assert ("Controls (" in index) is controls
        stages = json.loads(Path(summaries[controls]["manifest"]).read_text())["stages"]
        assert ("controls" in stages and "plane_control" in stages) is controls
    assert set(summaries[True]["controls"]["directions"]) == {"random:0/all", "random:0/addition", "null:0/all"}
    assert set(summaries[True]["controls"]["plane"]["random:0"]) == {"0", "90", "180", "270"}
    assert summaries[False]["controls"] == {}
