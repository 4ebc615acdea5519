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


def _scores() -> pd.DataFrame:
    """Hand-made per-prompt first-token scores: two groups (one per angle) of 5 and 4 prompts."""
    return pd.DataFrame(
        {
            "variant": "v",
            "split": "harmful",
            "angle": [0.0] * 5 + [90.0] * 4,
            "logodds": [2.0, -1.0, 0.5, 3.0, -2.5, 1.0, 1.5, 4.0, -0.5],
            "kl": [0.1, 0.0, 0.3, 0.2, 0.9, 1.0, 2.0, 0.5, 0.25],
        }
    )


def test_mean_intervals_are_each_groups_mean_and_bootstrap_interval():
    from workbench.stats import bootstrap_ci

    per_prompt = _scores()
    summary = ex.mean_intervals(per_prompt, ["variant", "split", "angle"])
    assert list(summary.angle) == [0.0, 90.0] and list(summary.n) == [5, 4]
    for row, (_, part) in zip(summary.itertuples(), per_prompt.groupby("angle")):
        for column in ("logodds", "kl"):
            values = list(part[column])
            assert getattr(row, column) == pytest.approx(sum(values) / len(values), abs=1e-12)
            lo, hi = getattr(row, f"{column}_ci_lo"), getattr(row, f"{column}_ci_hi")
            assert (lo, hi) == bootstrap_ci(values)  # seeded: exactly the stats module's interval
            assert lo < getattr(row, column) < hi
    assert ex.mean_intervals(per_prompt, ["variant", "split", "angle"]).equals(summary)  # a rerun is identical
    odd = per_prompt.assign(kl=per_prompt.kl.where(per_prompt.angle == 0.0, float("nan")))
    bounds = ex.mean_intervals(odd, ["angle"]).set_index("angle")
    assert bounds.kl_ci_lo.isna().tolist() == [False, True]  # a NaN score: no interval, no crash
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['kl'\]"):
        ex.mean_intervals(per_prompt.drop(columns="kl"), ["angle"])


def _variant_table(intervals: bool) -> pd.DataFrame:
    per_prompt = pd.concat([_scores(), _scores().assign(variant="w", logodds=lambda d: d.logodds + 1)])
    summary = ex.mean_intervals(
        pd.concat([per_prompt, per_prompt.assign(split="harmless")]), ["variant", "split", "angle"]
    )
    return summary if intervals else summary[["variant", "split", "angle", "logodds", "kl", "n"]]


def test_rotation_variants_figure_draws_a_band_per_variant_and_says_n():
    summary = _variant_table(intervals=True)
    fig = fg.rotation_variants_figure(summary)
    bands = [t for t in fig.data if t.fill == "toself"]
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert len(bands) == len(lines) == 2 * 2 * 2  # variants × splits × (log-odds, KL)
    v = summary[(summary.variant == "v") & (summary.split == "harmful")]
    (band,) = [t for t in bands if t.name.startswith("v:") and t.xaxis == "x" and t.yaxis == "y"]
    # out along the upper bound, back along the lower
    assert list(band.y) == pytest.approx(list(v.logodds_ci_hi) + list(v.logodds_ci_lo)[::-1])
    assert list(band.x) == [0.0, 90.0, 90.0, 0.0]
    title = fig.layout.title.text
    assert "n = 4–5 prompts" in title and "95 % bootstrap interval" in title


def test_rotation_variants_figure_still_draws_an_older_table_without_intervals():
    fig = fg.rotation_variants_figure(_variant_table(intervals=False))
    assert not [t for t in fig.data if t.fill == "toself"]
    assert len([t for t in fig.data if t.mode == "lines+markers"]) == 8
    assert "bootstrap" not in fig.layout.title.text
    older = fg.rotation_variants_figure(_variant_table(intervals=False).drop(columns="n"))  # no n either
    assert "the split's prompts" in older.layout.title.text


def test_rotation_variants_figure_says_each_splits_n():
    summary = _variant_table(intervals=True)
    same = fg.rotation_variants_figure(summary.assign(n=24)).layout.title.text
    assert "mean over n = 24 prompts;" in same
    differ = summary.assign(n=[24 if s == "harmful" else 20 for s in summary.split])
    assert "mean over n = 24 harmful, n = 20 harmless prompts" in fg.rotation_variants_figure(differ).layout.title.text


def _stage_job(folder, calls: list):
    """A main job reduced to what its ``variants`` stage reads, with the variant sweep replaced by a
    recorder that returns made-up scores (the stage's files and resumption are under test, not the model)."""
    from types import SimpleNamespace

    from workbench import run
    from workbench.stages import Stages

    def sweep(model, planes, prompts, angles, **_):
        calls.append(list(planes))
        rows = [
            (v, "pre_gain", s, a, i, float(i + a / 90), 0.1 * i)
            for v in planes
            for s, p in prompts.items()
            for a in angles
            for i in range(len(p))
        ]
        cols = ["variant", "site", "split", "angle", "prompt_index", "logodds", "kl"]
        per_prompt = pd.DataFrame(rows, columns=cols)
        return ex.mean_intervals(per_prompt, cols[:4]), per_prompt

    job = run._MainJob.__new__(run._MainJob)  # no model: the stage's own logic only
    job.analysis = SimpleNamespace(config=SimpleNamespace(plane_candidates="raw"), plane=lambda candidate_norm: None)
    job.config = SimpleNamespace(rotation_site="post_gain", adaptive="off")
    job.model = job.ctx = None
    job.folder, job.stages, job.angles = folder, Stages(), [0.0, 180.0]
    job.test = {"harmful": ["a", "b", "c"], "harmless": ["d", "e"]}
    job.sweep_prompts = dict(job.test)
    return job, sweep


def test_rotation_variants_stage_recomputes_an_old_cache_once_and_gives_the_own_rows_intervals(tmp_path, monkeypatch):
    from workbench import run

    calls: list = []
    job, sweep = _stage_job(tmp_path, calls)
    monkeypatch.setattr(run.ex, "rotation_variant_sweep", sweep)
    old = pd.DataFrame({"variant": ["x"], "site": ["pre_gain"], "split": ["harmful"], "angle": [0.0]})
    (tmp_path / "rotation_variants.csv").write_text(old.assign(logodds=1.0, kl=0.0, n=3).to_csv(index=False))
    angle_sweep = pd.DataFrame(  # the main sweep's per-prompt scores (generation's first token), one extra split
        [(s, a, f"{s}{i}", 0.5 * i - a / 180, 0.2 * i) for s, n in (("harmful", 3), ("harmless", 2), ("warning", 2))
         for a in (0.0, 180.0) for i in range(n)],
        columns=["split", "angle", "prompt", "logodds", "kl"],
    )  # fmt: skip
    table = job.variants(angle_sweep)
    assert len(calls) == 1 and not job.stages.reused["rotation_variants"]  # the summary alone is not done
    assert (tmp_path / "rotation_variants_per_prompt.csv").exists()
    assert not list(tmp_path.glob("*.corrupt"))  # recomputed as not done, not as an unreadable file
    assert len(pd.read_csv(tmp_path / "rotation_variants_per_prompt.csv")) == 3 * 2 * (3 + 2)
    own = table[table.variant == run.variant_name("post_gain", "raw")].set_index(["split", "angle"])
    assert len(table) == 4 * 2 * 2 and len(own) == 2 * 2 and own.site.eq("post_gain").all()  # not the warning split
    want = ex.mean_intervals(angle_sweep, ["split", "angle"]).set_index(["split", "angle"]).loc[own.index]
    for column in ("logodds", "kl", "logodds_ci_lo", "logodds_ci_hi", "kl_ci_lo", "kl_ci_hi", "n"):
        assert own[column].tolist() == pytest.approx(want[column].tolist()), column
    assert table.logodds_ci_lo.notna().all() and table.kl_ci_hi.notna().all()

    job.stages = type(job.stages)()  # the next run: both files there, the stage is loaded
    again = job.variants(angle_sweep)
    assert len(calls) == 1 and job.stages.reused["rotation_variants"]
    pd.testing.assert_frame_equal(again, table, check_exact=False)


def test_behaviour_bars_give_the_widest_share_interval_and_hover_each():
    summary = ex.rate_intervals(
        pd.DataFrame({"category": ["harmful", "borderline"], "n": [54, 10], "share_refusal": [0.5, 0.5]})
    )
    fig = fg.behaviour_bars(summary)
    assert "a share's 95 % CI ≤ ±26 pts" in fig.layout.title.text  # the smaller n's interval: 0.5 on 10
    (bars,) = fig.data
    assert bars.text == (" [37%–63%]", " [24%–76%]") and "%{text}" in bars.hovertemplate
    plain = fg.behaviour_bars(summary[["category", "n", "share_refusal"]])  # an older table: no intervals
    assert plain.data[0].text == ("", "")


def test_location_kl_bars_carry_the_bootstrap_interval_of_the_per_prompt_kl():
    from workbench.stats import bootstrap_ci

    kls = {"none": [0.0, 0.0, 0.0, 0.0], "all": [0.1, 0.5, 0.2, 1.2]}
    per_prompt = pd.DataFrame(
        [("harmless", c, f"p{i}", "Sure.", k) for c, ks in kls.items() for i, k in enumerate(ks)],
        columns=["split", "condition", "prompt", "response", "kl"],
    )
    summary = pd.DataFrame({"split": "harmless", "condition": list(kls), "refusal_rate": 0.0, "n": 4, "kl": [0.0, 0.5]})
    fig = fg.location_comparison(summary, per_prompt)
    (kl,) = [t for t in fig.data if t.type == "bar" and t.xaxis == "x2"]
    lo, hi = bootstrap_ci(kls["all"])
    assert list(kl.error_y.array) == pytest.approx([0.0, hi - 0.5])
    assert list(kl.error_y.arrayminus) == pytest.approx([0.0, 0.5 - lo])
    assert fig.layout.xaxis2.title.text == "intervention (n = 4 prompts; error bars: 95 % bootstrap CI of the mean)"
    alone = fg.location_comparison(summary)  # no per-prompt table: the means alone, no interval claimed
    assert [t for t in alone.data if t.xaxis == "x2"][0].error_y.array is None
    assert alone.layout.xaxis2.title.text == "intervention"


def test_index_share_tables_say_how_wide_a_share_interval_is(tmp_path):
    import re

    summary = index_summary(
        refusal_by_location={},
        behaviours={"harmful": {"n": 54, "share_refusal": 0.9}, "borderline": {"n": 40, "share_refusal": 0.1}},
        labels_by_angle={"harmful": {"0°": {"n": 24, "share_refusal": 0.875}}},
    )
    text = write_index(tmp_path, {}, {}, summary).read_text()
    assert "| borderline | 40 | 10% |\n\nA share's 95 % Wilson interval is at most ±15 points (n = 40)." in text
    assert "| 0° | 24 | 88% |\n\nA share's 95 % Wilson interval is at most ±19 points (n = 24)." in text
    # the table itself still ends at the blank line (test_readme reads the committed tables this way)
    (table,) = re.findall(r"Labels by steering angle, harmful prompts:\n\n(.*?)(?:\n\n|\Z)", text, flags=re.S)
    assert table.splitlines()[-1] == "| 0° | 24 | 88% |"
