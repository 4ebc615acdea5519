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
    out = subprocess.run(
        [sys.executable, "-m", "workbench.cli", *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def analysis(organism):
    from workbench.pipeline import Analysis

    return Analysis(organism, progress=False)


@pytest.mark.slow
def test_select_cli_reports_every_method_and_which_choices_agree(analysis):
    summary = _cli("select", "--model", "organism", "--json")
    keys = {}
    for method in METHODS:
        assert {"site", "layer", "position"} <= set(summary[method]), method
        keys[method] = (summary[method]["site"], summary[method]["layer"], summary[method]["position"])
    # the CLI reports the analysis' own choices (same run folder), each pair's agreement as computed
    selection = analysis.selection
    assert keys == {m: (k.site, k.layer, k.pos) for m, k in selection.choices.items()}
    pairs = [(a, b) for i, a in enumerate(METHODS) for b in METHODS[i + 1 :]]
    assert summary["agreements"] == {f"{a}={b}": keys[a] == keys[b] for a, b in pairs}

    # each statistics method's choice is the best row of the statistics table
    table = selection.table[selection.table.norm > 0]
    assert summary["max_norm"]["norm"] == round(float(table.norm.max()), 4)
    assert summary["max_sim"]["max_sim"] == round(float(table.max_sim.max()), 4)
    best_auc = table[table.auc == table.auc.max()]  # perfect validation separation, many times over:
    assert summary["max_auc"]["auc"] == 1.0 and len(best_auc) > 1  # the tie goes to Cohen's d
    assert summary["max_auc"]["cohens_d"] == round(float(best_auc.cohens_d.max()), 4)
    # max_sim (mean cosine to every unit candidate, u_i·m̄) and mean_of_candidates (cosine to the
    # normalised mean, u_i·m̄/|m̄|) rank the candidates identically, so they must pick the same one
    assert summary["agreements"]["max_sim=mean_of_candidates"] is True
    # Arditi scores resid_pre at every post-instruction position (AnalysisConfig.arditi_site/positions),
    # below the late-layer cut-off only (later layers are pruned, unscored). On this organism no candidate
    # passed kl ≤ 0.1 with induce ≥ 0 at the last position alone; whichever way it goes now, the notes
    # must say so: no fallback when one passes, else the one-line account of the first relaxation (kl ≤
    # 0.25, cut-off kept). Its choice is a two-way mediator: ablating it lowers refusal log-odds below 0,
    # adding it raises them above 0.
    arditi, notes = summary["arditi"], selection.notes
    assert arditi["site"] == "resid_pre" and arditi["layer"] < notes["layer_cutoff"]
    if notes["fallback"] is None:
        assert notes["n_passed"] > 0 and arditi["kl"] <= 0.1 and arditi["induce"] >= 0
    else:
        assert notes["n_passed"] == 0 and notes["fallback"].startswith("no candidate passed Arditi's filters (")
        assert "; fallback balance used: relaxed to kl ≤ 0.25 (layer <" in notes["fallback"]
    assert arditi["bypass"] < 0 < arditi["induce"] and arditi["kl"] <= 0.25
    # measured on the organism (resid_mid/L17/pos-5 twice, resid_post/L29, resid_mid/L27, resid_pre/L22):
    # the identity above is the only agreement
    assert summary["agreements"] == {f"{a}={b}": (a, b) == ("max_sim", "mean_of_candidates") for a, b in pairs}


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
@pytest.mark.parametrize(
    "b1, variant, layers",
    [
        ("mean_of_candidates", "pc1", None),
        ("max_sim", "last_two_pcs", None),
        ("max_sim", "per_sample", None),
        ("max_sim", "pc1", (10, 25)),
    ],
)
def test_plane_variants_are_selectable_and_reported(analysis, b1, variant, layers):
    from workbench.planes import plane_report

    # none of these is degenerate on the organism (build_plane raises below 1°; measured 47-90°)
    plane = analysis.plane(b1_method=b1, variant=variant, layer_range=layers)
    report = plane_report(plane)
    assert report["variant"] == variant and report["basis_max_abs_gram_error"] < 1e-5
    assert 0 < report["pc1_explained_variance"] <= 1
    assert 1.0 < report["angle_pc1_b1_deg"] <= 90
    # b1 is a candidate, except the mean direction and last_two_pcs' principal component
    assert (report["b1"] is None) == (b1 == "mean_of_candidates" or variant == "last_two_pcs")
    if layers is not None:  # only the candidates in range feed the PCA: 2 plane sites x 1 position x 16 layers
        per_layer = len(analysis.config.plane_sites) * len(analysis.config.plane_positions)
        assert report["layer_range"] == list(layers)
        assert report["n_candidates_used"] == per_layer * (layers[1] - layers[0] + 1)


@pytest.mark.slow
def test_plane_with_b1_along_pc1_of_the_organism_candidates_is_a_clear_error(analysis):
    """A degenerate plane, constructed: b1 within 1° of PC1 of the candidates must raise, never NaN."""
    import math

    import torch

    from workbench.planes import build_plane, principal_components

    # the study's default: PCA on the plane candidates as they are (not row-normalised)
    cands = analysis.plane_candidates
    pc1 = principal_components(cands.vectors[cands.norms().cpu() > 0])[0][0]
    other = cands.unit()[cands.norms().cpu() > 0][0].double()
    other = other - (other @ pc1) * pc1
    other = other / other.norm()

    def tilted(deg: float) -> torch.Tensor:  # a unit vector `deg` degrees away from PC1
        return (math.cos(math.radians(deg)) * pc1 + math.sin(math.radians(deg)) * other).float()

    for deg in (0.0, 0.5):
        with pytest.raises(ValueError, match="degenerate plane: PC1 is parallel to b1"):
            build_plane(cands, tilted(deg))
    plane = build_plane(cands, tilted(2.0))  # just past the 1° tolerance: a valid plane
    assert abs(plane.angle_pc1_b1_deg - 2.0) < 1e-3 and plane.basis_max_abs_gram_error() < 1e-5
