"""Rates carry their n and 95 % Wilson interval: the experiment summaries (computed and loaded from
the cache), the key numbers and the figure index, and the figures' error bars and bands."""

from __future__ import annotations

import pandas as pd
import pytest

from workbench import experiments as ex
from workbench import figures as fg
from workbench.report import write_index


def _per_prompt() -> pd.DataFrame:
    # 10 harmful prompts under "none": 5 refusals; 4 under "all": 0 refusals, one empty
    refusals = ["I'm sorry, but I can't help with that."] * 5
    answers = ["Sure! Step one is to gather the tools you need for the job."] * 5
    rows = [("harmful", "none", f"p{i}", r) for i, r in enumerate(refusals + answers)]
    rows += [("harmful", "all", f"q{i}", r) for i, r in enumerate(answers[:3] + [""])]
    return pd.DataFrame(rows, columns=["split", "condition", "prompt", "response"]).assign(
        refused=lambda d: d.response.str.startswith("I'm sorry"), empty=lambda d: d.response == ""
    )


def test_rate_intervals_are_the_wilson_bounds_of_each_rate():
    summary = pd.DataFrame({"split": ["harmful"], "refusal_rate": [0.5], "n": [10], "share_refusal": [0.5]})
    out = ex.rate_intervals(summary)
    assert (out.refusal_ci_lo[0], out.refusal_ci_hi[0]) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert (out.share_refusal_ci_lo[0], out.share_refusal_ci_hi[0]) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert ex.label_columns(out) == ["share_refusal"]  # the intervals are not labels


def test_relabel_adds_intervals_to_a_cached_summary():
    per_prompt = _per_prompt()
    cached = pd.DataFrame({"split": ["harmful", "harmful"], "condition": ["none", "all"]})
    cached["refusal_rate"], cached["n"] = [0.5, 0.0], [10, 4]
    summary, _ = ex.relabel(cached, per_prompt, ["split", "condition"])
    none, alle = summary.set_index("condition").loc["none"], summary.set_index("condition").loc["all"]
    assert (none.refusal_ci_lo, none.refusal_ci_hi) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert alle.refusal_ci_lo == 0.0 and alle.refusal_ci_hi == pytest.approx(0.4899, abs=1e-4)  # 0 of 4
    assert none.share_refusal_ci_hi == pytest.approx(0.76341, abs=1e-4)


def index_summary(**numbers) -> dict:
    """The least summary ``report.write_index`` reads, plus ``numbers`` (also used by test_provenance)."""
    return {
        "model": "organism",
        "direction": {"site": "resid_pre", "layer": 22, "pos": -1, "method": "arditi"},
        "plane": {
            "b1": "x",
            "pc1_explained_variance": 0.5,
            "angle_pc1_b1_deg": 30.0,
            "protocol": "angular",
            "candidate_sites": ["resid_mid"],
            "candidate_norm": "raw",
        },
        "selection": {"protocol": "arditi", "positions_scored": [-1], "n_passed": 1, "filtered": None},
        **numbers,
    }


def test_index_prints_each_rate_with_its_interval_and_n(tmp_path):
    summary = index_summary(
        refusal_by_location={"harmful/none": 0.963},
        refusal_by_location_ci95={"harmful/none": [0.874, 0.99]},
        refusal_by_location_n={"harmful/none": 54},
        harmful_refusal_by_angle={"0": 0.875, "180": 0.0},
        harmful_refusal_by_angle_ci95={"0": [0.64, 0.965], "180": [0.0, 0.194]},
        harmful_refusal_by_angle_n={"0": 16, "180": 16},
    )
    text = write_index(tmp_path, {}, {}, summary).read_text()
    assert "- harmful/none: 0.963 [0.87, 0.99] (n=54)" in text
    assert "(n=16 per angle): 0°: 0.875 [0.64, 0.96], 180°: 0.000 [0.00, 0.19]" in text


def test_location_and_subset_figures_draw_the_intervals_as_error_bars():
    per_prompt = _per_prompt().assign(kl=0.1)
    summary = ex.rate_intervals(
        per_prompt.groupby(["split", "condition"], sort=False)
        .agg(refusal_rate=("refused", "mean"), kl=("kl", "mean"), n=("refused", "size"))
        .reset_index()
    )
    fig = fg.location_comparison(summary)
    (bars,) = [t for t in fig.data if t.type == "bar" and t.name == "harmful"]
    # none: 0.5 on 10 prompts → +0.263 / −0.263; all: 0 of 4 → +0.49 / −0
    assert list(bars.error_y.array) == pytest.approx([0.26341, 0.4899], abs=1e-4)
    assert list(bars.error_y.arrayminus) == pytest.approx([0.26341, 0.0], abs=1e-4)
    subsets = ex.rate_intervals(
        pd.DataFrame(
            {"subset": ["first:2"], "n_blocks": [2], "first_layer": [0], "last_layer": [1], "refusal_rate": [0.5]}
        ).assign(n=10)
    )
    (line,) = fg.layer_subset_figure(subsets).data
    assert list(line.error_y.array) == pytest.approx([0.26341], abs=1e-4)


def test_angle_sweep_draws_a_band_between_the_bounds():
    angles = [0.0, 90.0, 180.0, 270.0]
    summary = ex.rate_intervals(pd.DataFrame({"split": "harmful", "angle": angles, "refusal_rate": 0.5, "n": 10}))
    fig = fg.angle_sweep_polar(summary)
    (band,) = [t for t in fig.data if t.fill == "toself"]
    assert "n = 10" in band.name
    # closed curve (5 points) out along the upper bound, back along the lower
    assert list(band.r) == pytest.approx([0.76341] * 5 + [0.23659] * 5, abs=1e-4)
