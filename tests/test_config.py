"""One config module: every dataclass and the file loader; bad files are named with the bad field."""

from __future__ import annotations

import json

import pytest

from workbench.config import AnalysisConfig, Recipe, RunConfig, from_dict, load_configs


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
        ({"adaptive": 1}, r"RunConfig.adaptive .* must be true or false"),
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
