"""Direction and plane analyzers on the real organism: CLI contracts and held-out separation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sklearn.metrics import roc_auc_score

from workbench.selection import METHODS


def _cli(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def analysis(organism):
    from workbench.pipeline import Analysis

    return Analysis(organism, progress=False)


@pytest.mark.slow
def test_select_cli_reports_every_method():
    summary = _cli("select", "--model", "organism", "--json")
    for method in METHODS:
        assert {"site", "layer", "position"} <= set(summary[method]), method
    assert summary["agreements"]  # reported, whatever they are


@pytest.mark.slow
def test_plane_cli_reports_the_basis():
    summary = _cli("plane", "--model", "organism", "--json")
    assert 0 < summary["pc1_explained_variance"] <= 1
    assert 0 <= summary["angle_pc1_b1_deg"] <= 90
    assert summary["basis_max_abs_gram_error"] < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_chosen_direction_separates_held_out_prompts(analysis, method):
    direction = analysis.direction(method)
    key = analysis.selection.choices[method]
    scores, labels = [], []
    for name, label in (("harmful_val", 1), ("harmless_val", 0)):
        acts = analysis.activations[name].get(key.site, key.layer, key.pos).float().cpu()
        scores += (acts @ direction.unit).tolist()
        labels += [label] * len(acts)
    assert roc_auc_score(labels, scores) >= 0.95, (method, str(key))


@pytest.mark.slow
def test_plane_b1_is_the_chosen_candidate_and_angles_follow_the_convention(analysis):
    plane = analysis.plane()
    cands = analysis.unit_candidates.subset(positions=list(analysis.config.plane_positions))
    coords = plane.candidate_coords(cands)
    b1 = coords[(coords.site == plane.b1_key.site) & (coords.layer == plane.b1_key.layer)]
    assert float(b1.angle_deg.iloc[0]) % 360 < 1e-3 or float(b1.angle_deg.iloc[0]) > 360 - 1e-3
    deep = coords[coords.layer >= coords.layer.max() - (coords.layer.max() // 3)]
    import numpy as np

    assert np.mean(np.sin(np.radians(deep.angle_deg)) * deep.radius) >= 0  # the stored sign rule


@pytest.mark.slow
@pytest.mark.parametrize("b1, variant, layers", [("mean_of_candidates", "pc1", None), ("max_sim", "last_two_pcs", None),
                                                 ("max_sim", "per_sample", None), ("max_sim", "pc1", (10, 25))])
def test_plane_variants_are_selectable_and_reported(analysis, b1, variant, layers):
    from workbench.planes import plane_report

    try:
        plane = analysis.plane(b1_method=b1, variant=variant, layer_range=layers)
    except ValueError as err:  # a degenerate plane must be a clear error, never NaN
        assert "degenerate" in str(err)
        return
    report = plane_report(plane)
    assert report["variant"] == variant and report["basis_max_abs_gram_error"] < 1e-5
    assert 0 <= report["pc1_explained_variance"] <= 1
