"""Direction stability (bootstrap of direction_train): seeded draws, the identity resample, the
statistics on hand-made cases, the figure, the main job's settings, and the organism's numbers (slow)."""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.activations import Activations
from workbench.config import AnalysisConfig, RunConfig
from workbench.directions import CandidateKey, diff_in_means
from workbench.figures import stability_figure
from workbench.planes import build_plane
from workbench.selection import candidate_stats, select
from workbench.stability import (
    GENERATION_FREE_METHODS,
    StabilityInputs,
    class_resamples,
    cosine_stats,
    direction_stability,
    resample_indices,
    resampled_candidates,
    summarise,
)

SITES, LAYERS, POSITIONS, D = ("resid_pre", "resid_mid", "resid_post"), list(range(6)), [-2, -1], 16
DIRECTION_KEY = CandidateKey("resid_pre", 3, -1)


def synthetic_acts(n: int, shift: float, noise: float, seed: int) -> Activations:
    """``n`` prompts whose activations are ``shift`` times a refusal direction that turns with depth
    (so the plane's PCA has a drift to find), plus isotropic ``noise``."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    acts = {}
    for s, site in enumerate(SITES):
        per_layer = []
        for layer in LAYERS:
            phi = math.radians(-60 + 20 * layer + 2 * s)
            r = (math.cos(phi) * q[:, 0] + math.sin(phi) * q[:, 1]).float()
            base = 1.0 + torch.randn(n, len(POSITIONS), D, generator=gen) * noise
            per_layer.append(base + shift * (1 + layer) * r)
        acts[site] = torch.stack(per_layer)  # [layer, prompt, pos, d]
    return Activations(acts, LAYERS, POSITIONS, ["a", "b"], [f"p{seed}-{i}" for i in range(n)])


def synthetic_inputs(noise: float = 0.5, kept: bool = True, n: int = 12) -> StabilityInputs:
    """Inputs built the way the analysis builds its direction and plane (max_sim's b1)."""
    harmful, harmless = synthetic_acts(n, 1.0, noise, 1), synthetic_acts(n, 0.0, noise, 2)
    val_h, val_s = synthetic_acts(8, 1.0, noise, 3), synthetic_acts(8, 0.0, noise, 4)
    rows = (list(range(1, n)), list(range(n))) if kept else None  # the filter dropped harmful prompt 0
    used = (harmful.select_prompts(rows[0]), harmless.select_prompts(rows[1])) if rows else (harmful, harmless)
    raw = diff_in_means(*used)
    cands = diff_in_means(harmful, harmless, kind="unit").subset(sites=["resid_mid", "resid_post"], positions=[-1])
    b1 = select(cands, candidate_stats(cands, val_h, val_s)).choices["max_sim"]
    plane = build_plane(cands, b1)
    direction = raw.direction(DIRECTION_KEY)
    return StabilityInputs(harmful, harmless, val_h, val_s, direction, plane, kept=rows)


def test_resampling_with_a_fixed_seed_is_reproducible():
    a, b = resample_indices(30, 20, 0), resample_indices(30, 20, 0)
    assert a.shape == (20, 30) and a.dtype == torch.int64 and torch.equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) <= 29
    assert not torch.equal(a, resample_indices(30, 20, 1))
    # with replacement: some prompts drawn twice, so a row is no permutation
    assert any(len(set(row.tolist())) < 30 for row in a)
    harmful, harmless = class_resamples(30, 30, 20, 0)
    assert torch.equal(harmful, a) and not torch.equal(harmless, a)  # one generator: harmless draws continue it
    first = direction_stability(synthetic_inputs(), n_resamples=5, seed=0)
    again = direction_stability(synthetic_inputs(), n_resamples=5, seed=0)
    pd.testing.assert_frame_equal(first.table, again.table, check_exact=True)
    assert first.summary == again.summary
    other = direction_stability(synthetic_inputs(), n_resamples=5, seed=1)
    assert not np.array_equal(first.table["cosine"].to_numpy(), other.table["cosine"].to_numpy())


@pytest.mark.parametrize("kept", [True, False])
def test_identity_resamples_give_the_full_sample_candidates_exactly(kept):
    inputs = synthetic_inputs(kept=kept)
    n = inputs.harmful.n_prompts
    raw, unit, plane = resampled_candidates(inputs, torch.arange(n), torch.arange(n))
    rows = inputs.kept or (range(n), range(n))
    full = diff_in_means(inputs.harmful.select_prompts(list(rows[0])), inputs.harmless.select_prompts(list(rows[1])))
    assert raw.keys == full.keys and torch.equal(raw.vectors, full.vectors)
    assert torch.equal(raw.direction(DIRECTION_KEY).vector, inputs.direction.vector)
    full_unit = diff_in_means(inputs.harmful, inputs.harmless, kind="unit")
    full_plane = full_unit.subset(sites=["resid_mid", "resid_post"], positions=[-1])
    assert plane.keys == full_plane.keys and torch.equal(plane.vectors, full_plane.vectors)
    # a real resample moves them
    draws = resample_indices(n, 1, 0)[0]
    moved, _, _ = resampled_candidates(inputs, draws, draws)
    assert not torch.equal(moved.vectors, full.vectors)


def test_without_noise_every_resample_chooses_the_same_and_cosines_are_one():
    # every prompt of a class identical: any resample has the same means, so nothing can move
    result = direction_stability(synthetic_inputs(noise=0.0), n_resamples=4, seed=0)
    assert np.allclose(result.table["cosine"], 1.0, atol=1e-6)
    assert (result.table["key"] == result.table["full_key"]).all()
    summary = result.summary
    assert summary["n_resamples"] == 4 and summary["seed"] == 0
    assert summary["direction"]["key"] == "resid_pre/L3/pos-1"
    assert set(summary["methods"]) == set(GENERATION_FREE_METHODS)
    assert all(m["chosen_frequency"] == 1.0 for m in summary["methods"].values())
    assert summary["plane"]["b1"]["chosen_frequency"] == 1.0
    assert "11/12 harmful" in summary["resampled"] and "not rescored" in summary["arditi"]


def test_noise_moves_the_direction_and_is_reported():
    result = direction_stability(synthetic_inputs(noise=3.0), n_resamples=8, seed=0)
    cos = result.table.query("quantity == 'direction'")["cosine"]
    assert len(cos) == 8 and cos.max() < 1 - 1e-4 and cos.min() > 0  # moved, but the same side
    assert result.summary["direction"]["cosine"] == cosine_stats(cos)
    json.dumps(result.summary)  # JSON-ready


def test_cosine_statistics_of_a_hand_made_table():
    stats = cosine_stats([1.0, 0.5, 0.0, -0.5])
    assert stats["mean"] == 0.25 and stats["min"] == -0.5
    # numpy's linear percentile: 2.5 % of the way over 3 gaps from -0.5, and symmetrically from the top
    assert stats["ci95"] == [round(-0.5 + 0.075 * 0.5, 4), round(1.0 - 0.075 * 0.5, 4)]
    rows = [
        (0, "direction", "a/L1/pos-1", "a/L1/pos-1", 0.9),
        (1, "direction", "a/L1/pos-1", "a/L1/pos-1", 0.7),
        (0, "max_sim", "a/L2/pos-1", "a/L2/pos-1", 1.0),
        (1, "max_sim", "a/L3/pos-1", "a/L2/pos-1", 0.6),
        (0, "b1", "m/L2/pos-1", "m/L2/pos-1", 1.0),
        (1, "b1", "m/L2/pos-1", "m/L2/pos-1", 0.98),
        (0, "b2", "", "", 0.9),
        (1, "b2", "", "", -0.9),
        (0, "span", "", "", 1.0),
        (1, "span", "", "", 0.9),
    ]
    table = pd.DataFrame(rows, columns=["resample", "quantity", "key", "full_key", "cosine"])
    out = summarise(table)
    assert out["direction"] == {"key": "a/L1/pos-1", "cosine": cosine_stats([0.9, 0.7])}
    assert out["direction"]["cosine"]["mean"] == 0.8
    ms = out["methods"]["max_sim"]
    assert ms["chosen"] == "a/L2/pos-1" and ms["chosen_frequency"] == 0.5
    assert ms["counts"] == {"a/L2/pos-1": 1, "a/L3/pos-1": 1} and ms["cosine_to_chosen"]["min"] == 0.6
    assert out["plane"]["b1"]["chosen_frequency"] == 1.0 and out["plane"]["b2"]["cosine"]["mean"] == 0.0
    assert "signed" in out["plane"]["b2"]["sign"] and out["plane"]["span"]["cosine"]["mean"] == 0.95


def test_the_span_cosine_ignores_turns_within_the_plane():
    from workbench.stability import _span_cosine

    e = torch.eye(4, dtype=torch.float64)
    turned = torch.stack([e[0] + e[1], e[0] - e[1]]) / math.sqrt(2)  # b1, b2 turned 45° and b2 flipped
    assert _span_cosine(turned, e[:2]) == pytest.approx(1.0, abs=1e-12)
    tilted = torch.stack([e[0], math.cos(0.3) * e[1] + math.sin(0.3) * e[2]])  # one axis out by 0.3 rad
    assert _span_cosine(tilted, e[:2]) == pytest.approx(math.cos(0.3), abs=1e-12)
    assert _span_cosine(torch.stack([e[0], e[3]]), e[:2]) == pytest.approx(0.0, abs=1e-12)


def test_a_plane_from_other_candidates_is_refused():
    inputs = synthetic_inputs()
    other = synthetic_inputs(noise=2.0)
    bad = StabilityInputs(
        inputs.harmful, inputs.harmless, inputs.harmful_val, inputs.harmless_val, inputs.direction, other.plane
    )
    with pytest.raises(ValueError, match="plane given is not the one these activations"):
        direction_stability(bad, n_resamples=2)
    with pytest.raises(ValueError, match="n_resamples must be a positive integer"):
        resample_indices(5, 0, 0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        resample_indices(5, 3, -1)


def test_the_figure_draws_choice_bars_and_cosine_boxes():
    result = direction_stability(synthetic_inputs(noise=3.0), n_resamples=6, seed=0)
    fig = stability_figure(result.table, model="synthetic")
    boxes = [t for t in fig.data if t.type == "box"]
    bars = [t for t in fig.data if t.type == "bar"]
    # one box per quantity: the direction, every method, b1, b2; six points each
    assert [b.name for b in boxes] == [
        "direction at resid_pre/L3/pos-1",
        *GENERATION_FREE_METHODS,
        "plane b1",
        "plane b2",
        "plane (span)",
    ]
    assert all(len(b.x) == 6 and b.boxpoints == "all" for b in boxes)
    # bars: per method and b1, one segment per key chosen, adding up to the resamples
    chosen = result.table[~result.table["quantity"].isin(["direction", "b2", "span"])]
    # (the full sample's key has its segment even when no resample chose it)
    assert len(bars) == sum(len({*rows["key"], *rows["full_key"]}) for _, rows in chosen.groupby("quantity"))
    per_row: dict[str, int] = {}
    for bar in bars:
        per_row[bar.y[0]] = per_row.get(bar.y[0], 0) + int(bar.x[0])
    assert per_row == dict.fromkeys([*GENERATION_FREE_METHODS, "plane b1"], 6)
    assert [t.name for t in bars if t.showlegend][0] == "the full sample's choice"
    with pytest.raises(ValueError, match="lacks column"):
        stability_figure(result.table.drop(columns=["cosine"]))


def test_the_figure_index_says_it_in_sentences(tmp_path):
    from test_intervals import index_summary

    from workbench.report import write_index

    stability = direction_stability(synthetic_inputs(noise=3.0), n_resamples=5, seed=0).summary
    text = write_index(tmp_path, {}, {}, index_summary(refusal_by_location={}, stability=stability)).read_text()
    ms, d = stability["methods"]["max_sim"], stability["direction"]["cosine"]
    times = round(ms["chosen_frequency"] * 5)
    assert "Direction stability (figure 13" in text
    assert "Over 5 bootstrap resamples of direction_train (seed 0)" in text
    assert f"`resid_pre/L3/pos-1` had cosine {d['mean']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]" in text
    assert f"- max_sim chose `{ms['chosen']}` in {times}/5" in text
    assert "the cosine of the mean direction to the full sample's" in text and "- Plane: b1 (max_sim) was" in text
    assert "Direction stability" not in write_index(tmp_path, {}, {}, index_summary(refusal_by_location={})).read_text()


def test_the_main_job_settings_are_validated_and_leave_the_default_key_alone():
    from workbench.run import _config_fields

    assert RunConfig().stability_resamples == 20 and RunConfig().stability_seed == 0
    assert "stability_resamples" not in _config_fields(RunConfig())
    assert _config_fields(RunConfig(stability_seed=3))["stability_seed"] == 3
    with pytest.raises(ValueError, match="stability_resamples must be at least 1"):
        RunConfig(stability_resamples=0)
    with pytest.raises(ValueError, match="stability_seed must be an integer"):
        RunConfig(stability_seed=1.5)  # type: ignore[arg-type]


def test_the_command_prints_the_summary_and_checks_its_options(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from tiny_models import save_tiny_chat_folder

    from workbench import cli
    from workbench.artifacts import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    folder = str(save_tiny_chat_folder(tmp_path / "model"))  # random weights: refuses nothing
    data = Path(__file__).parent / "data"
    prompts = ["--harmful", str(data / "unseen_harmful.txt"), "--harmless", str(data / "unseen_harmless.txt")]
    argv = ["stability", "--model", folder, *prompts, "--resamples", "3", "--seed", "2", "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n_resamples"] == 3 and out["seed"] == 2 and "refuses nothing" in out["arditi"]
    assert set(out["methods"]) == set(GENERATION_FREE_METHODS) and "span" in out["plane"]
    assert (Path(out["run_dir"]) / "stability-3-2.json").exists()
    assert cli.main([*argv[:-5], "--resamples", "0"]) == 2
    assert "--resamples must be a positive integer" in capsys.readouterr().err


# ---------------------------------------------------------------- on the organism (slow)

_STAGE_FILES = (
    "config.json",
    "activations.safetensors",
    "activations.json",
    "refusal_tokens.json",
    "prompt_filter.json",
    "arditi_scores.csv",
    "direction-arditi.safetensors",
    "direction-arditi.json",
    "plane-max_sim-pc1.safetensors",
    "plane-max_sim-pc1.json",
)


def _cached_default_run(organism, tmp_path):
    """A copy (hard links where possible) of the organism's cached default analysis in ``tmp_path``,
    so the test reads the cache and writes nothing there; what is missing is computed in the copy."""
    from workbench.artifacts import cache_root, sha256_text
    from workbench.pipeline import _jsonable, model_key

    key = sha256_text(json.dumps(_jsonable(AnalysisConfig()), sort_keys=True))
    source = cache_root() / "runs" / model_key(organism) / key[:8]
    for name in _STAGE_FILES:
        if (source / name).exists():
            try:
                os.link(source / name, tmp_path / name)
            except OSError:
                shutil.copy(source / name, tmp_path / name)
    return tmp_path


@pytest.mark.slow
def test_on_the_organism_the_refusal_direction_is_stable(organism, tmp_path, capsys):
    from workbench.pipeline import Analysis

    analysis = Analysis(organism, run_dir=_cached_default_run(organism, tmp_path), progress=False)
    analysis.direction(), analysis.plane()  # loaded from the copy (computed there on a cold cache)
    t0 = time.perf_counter()
    result = analysis.stability(20, 0)
    seconds = time.perf_counter() - t0
    s = result.summary
    with capsys.disabled():
        print(f"\n[stability] 20 resamples on the organism: {seconds:.1f} s")
        print(json.dumps(s, indent=1))
    assert seconds < 120  # seconds, not the minutes of a forward pass per candidate
    assert (tmp_path / "stability-20-0.json").exists() and (tmp_path / "stability-20-0.csv").exists()
    assert s["direction"]["key"] == str(CandidateKey(*analysis.direction().where()))
    assert s["direction"]["cosine"]["min"] > 0.9  # a real refusal direction barely moves
    assert s["plane"]["b1"]["cosine"]["mean"] > 0.9
    for method, m in s["methods"].items():
        assert m["chosen"] == str(analysis.selection.choices[method])
        assert sum(m["counts"].values()) == 20
    # reopened, the stage loads the same numbers
    again = Analysis(organism, run_dir=tmp_path, progress=False).stability(20, 0)
    assert again.summary == s
    pd.testing.assert_frame_equal(again.table, result.table, check_dtype=False)
