"""One config module: every dataclass and the file loader; bad files are named with the bad field."""

from __future__ import annotations

import json

import pytest

from workbench.config import AnalysisConfig, Recipe, RunConfig, from_dict, load_configs, protocol_of


def test_values_are_converted_to_the_field_types():
    cfg = from_dict(RunConfig, {"angle_step": 45, "subset_sizes": [8, 16]})
    assert cfg == RunConfig(angle_step=45.0, subset_sizes=(8, 16))
    assert isinstance(cfg.angle_step, float) and isinstance(cfg.subset_sizes, tuple)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"n_eval": "16"}, r"RunConfig.n_eval in the config must be an integer, got '16'"),
        ({"n_eval": 1.5}, r"RunConfig.n_eval .* must be an integer"),
        ({"n_eval": True}, r"RunConfig.n_eval .* must be an integer, got True"),
        ({"adaptive": 1}, r"RunConfig.adaptive .* must be a string"),
        ({"adaptive": "yes"}, r"RunConfig.adaptive must be one of off, b1, b2; got 'yes'"),
        ({"rotation_site": "normalized"}, r"RunConfig.rotation_site must be one of post_gain, pre_gain, resid"),
        ({"angle_step": "30"}, r"RunConfig.angle_step .* must be a number"),
        ({"subset_sizes": 6}, r"RunConfig.subset_sizes .* must be a list of int"),
        ({"subset_sizes": [6, "x"]}, r"RunConfig.subset_sizes .* must be an integer, got 'x'"),
    ],
)
def test_wrong_types_name_the_field(values, message):
    with pytest.raises(ValueError, match=message):
        from_dict(RunConfig, values)


def test_analysis_part_is_checked_with_the_file_name(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"analysis": {"sites": "resid_pre"}}))
    with pytest.raises(ValueError, match=r'AnalysisConfig.sites in "analysis" of .*c.json must be a list of str'):
        load_configs(path)
    path.write_text(json.dumps({"analysis": ["resid_pre"]}))
    with pytest.raises(ValueError, match=r'"analysis" of .*c.json must be a JSON object of AnalysisConfig fields'):
        load_configs(path)


def test_unreadable_files_are_named(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read config file .*c.json"):
        load_configs(path)
    with pytest.raises(ValueError, match=r"cannot read config file .*missing.json"):
        load_configs(tmp_path / "missing.json")


def test_defaults_round_trip_through_a_file(tmp_path):
    from dataclasses import asdict

    path = tmp_path / "c.json"
    path.write_text(json.dumps({**asdict(RunConfig()), "analysis": asdict(AnalysisConfig())}))
    assert load_configs(path) == (RunConfig(), AnalysisConfig())
    assert from_dict(Recipe, asdict(Recipe())) == Recipe()


def test_the_default_is_the_paper_protocol_and_workbench_is_one_setting_away(tmp_path):
    run, analysis = RunConfig(), AnalysisConfig()
    assert (protocol_of("arditi", analysis), protocol_of("angular", analysis, run)) == ("arditi", "angular")
    assert analysis.arditi_positions == () and analysis.filter_prompts and analysis.plane_candidates == "raw"
    assert analysis.plane_sites == ("resid_mid", "resid_post") and run.rotation_site == "post_gain"
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"protocol": "workbench", "n_eval": 8}))
    run, analysis = load_configs(path)
    assert (protocol_of("arditi", analysis), protocol_of("angular", analysis, run)) == ("workbench", "workbench")
    assert (analysis.arditi_positions, analysis.filter_prompts, analysis.plane_candidates) == ((-1,), False, "unit")
    assert run.rotation_site == "pre_gain" and run.n_eval == 8
    # an explicit field overrides the preset, and the result is named "custom"
    path.write_text(json.dumps({"protocol": "workbench", "analysis": {"plane_candidates": "raw"}}))
    run, analysis = load_configs(path)
    assert analysis.plane_candidates == "raw" and protocol_of("angular", analysis, run) == "custom"
    assert protocol_of("arditi", analysis) == "workbench"
    path.write_text(json.dumps({"protocol": "arditi-2024"}))
    with pytest.raises(ValueError, match=r"unknown protocol 'arditi-2024' in .*c.json; choose one of"):
        load_configs(path)
    with pytest.raises(ValueError, match=r"AnalysisConfig.arditi_fallback must be one of none, balance, bypass"):
        AnalysisConfig(arditi_fallback="relax")
