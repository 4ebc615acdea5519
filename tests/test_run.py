"""The main job: manifest, own prompt files, resume; end to end on the organism (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import tiny_model

from workbench.artifacts import CACHE_ENV, Manifest, cache_dir
from workbench.cli import main

DATA = Path(__file__).parent / "data"


def test_manifest_records_stages_and_keeps_them_on_reopen(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("a,b\n1,2\n")
    m = Manifest(tmp_path / "manifest.json", seeds={"torch": 0})
    m.stage("scores", 1.5, [table, tmp_path / "missing.csv"])
    rec = json.loads((tmp_path / "manifest.json").read_text())
    assert rec["seeds"] == {"torch": 0}
    assert list(rec["stages"]["scores"]["files"]) == ["t.csv"] and not rec["stages"]["scores"]["reused"]
    sha = rec["stages"]["scores"]["files"]["t.csv"]
    again = Manifest(tmp_path / "manifest.json", seeds={"torch": 0})
    again.stage("scores", 0.0, [table], reused=True)
    rec = json.loads((tmp_path / "manifest.json").read_text())
    assert rec["stages"]["scores"] == {"seconds": 0.0, "reused": True, "files": {"t.csv": sha}}


def test_run_needs_both_prompt_files(capsys):
    assert main(["run", "--harmful", str(DATA / "unseen_harmful.txt")]) == 2
    assert "pass both --harmful and --harmless" in capsys.readouterr().err


def test_config_file_sets_run_and_analysis_fields(tmp_path, capsys):
    from workbench.config import AnalysisConfig, RunConfig, load_configs

    assert load_configs(None) == (RunConfig(), AnalysisConfig())
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps({"n_eval": 16, "subset_sizes": [6, 12], "analysis": {"arditi_prompts": 12, "sites": ["resid_pre"]}})
    )
    run, analysis = load_configs(path)
    assert run == RunConfig(n_eval=16, subset_sizes=(6, 12))
    assert analysis == AnalysisConfig(arditi_prompts=12, sites=("resid_pre",))
    assert RunConfig.from_file(path) == run
    path.write_text(json.dumps({"analysis": {"arditi_promts": 12}}))
    with pytest.raises(ValueError, match=r"unknown AnalysisConfig keys \['arditi_promts'\].*arditi_prompts"):
        load_configs(path)
    path.write_text(json.dumps({"n_evl": 16}))
    assert main(["select", "--config", str(path)]) == 2  # fails before loading any model
    assert "unknown RunConfig keys ['n_evl']" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.json")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    from workbench.config import load_configs

    run, analysis = load_configs(path)
    assert 360 % run.angle_step == 0 and analysis.arditi_prompts > 0


@pytest.mark.slow
def test_main_job_on_own_prompt_files_writes_manifest_and_resumes(organism, tmp_path, monkeypatch):
    models = cache_dir("models")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(models)  # the organism is built already; runs go to tmp
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "n_eval": 7,
                "n_sweep": 4,
                "max_new_tokens": 8,
                "angle_step": 90.0,
                "subset_sizes": [12],
                "analysis": {"plane_b1_method": "max_auc"},
            }
        )
    )
    argv = [
        "run",
        "--harmful",
        str(DATA / "unseen_harmful.txt"),
        "--harmless",
        str(DATA / "unseen_harmless.txt"),
        "--config",
        str(config),
        "--figures",
        str(tmp_path / "figures"),
        "--json",
    ]
    assert main(argv) == 0
    from workbench.config import RunConfig

    summary = json.loads(_last_summary(tmp_path).read_text())
    assert summary["prompts"] == "files:unseen_harmful.txt,unseen_harmless.txt;seed=0"
    # the organism's refusal and its removal hold on these prompts too
    assert summary["refusal_by_location"]["harmful/none"] >= 0.7
    assert summary["refusal_by_location"]["harmful/all"] <= 0.3
    manifest = json.loads(Path(summary["manifest"]).read_text())
    stages = manifest["stages"]
    # the selection stage runs its own (prompt filter, Arditi scores) first; the
    # rotation variants build the unit-candidate plane inside their stage
    assert list(stages) == [
        "model",
        "activations",
        "refusal_tokens",
        "prompt_filter",
        "arditi_scores",
        "selection",
        "plane",
        "locations",
        "layer_subsets",
        "angle_sweep",
        "plane-max_auc-pc1-unit",
        "rotation_variants",
        "controls",
        "plane_control",
        "damage",
        "stability",
        "figures",
    ]
    # the refusal tokens decide whether Arditi's stages run (and so the direction's method): a stage of their own
    assert list(summary["timings_s"]) == [
        "model",
        "activations",
        "refusal_tokens",
        "selection",
        "plane",
        "locations",
        "layer_subsets",
        "angle_sweep",
        "rotation_variants",
        "controls",
        "plane_control",
        "damage",
        "stability",
        "figures",
    ]
    assert [n for n, s in stages.items() if s["reused"]] == []
    assert "activations.safetensors" in "".join(stages["activations"]["files"])
    assert manifest["prompts"]["sets"]["harmful/test"]["n"] == 7 and manifest["seeds"]["splits"] == 0
    assert manifest["run_config"]["n_eval"] == RunConfig.from_file(config).n_eval
    assert manifest["analysis_config"]["plane_b1_method"] == "max_auc"
    assert Path(manifest["analysis_dir"], "plane-max_auc-pc1.safetensors").exists()
    assert (tmp_path / "figures" / "05_angle_sweep.html").exists()

    assert main(argv) == 0  # a second run reuses every stage
    stages = json.loads(Path(summary["manifest"]).read_text())["stages"]
    assert all(
        stages[s]["reused"]
        for s in (
            "activations",
            "refusal_tokens",
            "prompt_filter",
            "arditi_scores",
            "selection",
            "plane",
            "locations",
            "layer_subsets",
            "angle_sweep",
            "rotation_variants",
            "controls",
            "plane_control",
            "damage",
            "stability",
        )
    )
    _check_controls(summary, argv, tmp_path)


def _check_controls(summary: dict, argv: list[str], tmp_path: Path) -> None:
    """The causal controls of the main job above: on the organism, ablating a random direction
    everywhere leaves harmful refusal within the unsteered interval while the real ablation removes
    it (outside the control's interval); a run folder without the control stages (cached before
    they existed) computes only them, reusing the location comparison and the sweep."""
    folder = Path(summary["manifest"]).parent
    assert all((folder / f"{name}.csv").exists() for name in ("controls", "controls_per_prompt", "plane_control"))
    random = summary["controls"]["directions"]["random:0/all"]["harmful"]
    lo, hi = summary["refusal_by_location_ci95"]["harmful/none"]
    assert lo <= random["refusal_rate"] <= hi and random["effect_outside_control"] is True
    assert set(summary["controls"]["directions"]) == {"random:0/all", "random:0/addition", "null:0/all"}
    assert list(summary["controls"]["plane"]["random:0"]) == ["0", "90", "180", "270"]
    assert "Controls (" in (tmp_path / "figures" / "README.md").read_text()
    for name in ("controls", "plane_control"):
        (folder / f"{name}.csv").unlink()
    assert main(argv) == 0
    stages = json.loads(Path(summary["manifest"]).read_text())["stages"]
    assert not stages["controls"]["reused"] and not stages["plane_control"]["reused"]
    assert all(stages[s]["reused"] for s in ("locations", "layer_subsets", "angle_sweep", "rotation_variants"))


def _last_summary(tmp_path: Path) -> Path:
    return next((tmp_path / "cache" / "runs").glob("*/*/summary.json"))


def test_run_folder_names_the_dtype():
    import torch

    from workbench.pipeline import model_key

    def tiny(dtype):
        return tiny_model(
            n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=32, n_ctx=8, d_vocab=10, act_fn="relu",
            dtype=dtype, model_name="tiny/model", seed=None,
        )  # fmt: skip

    assert model_key(tiny(torch.float32)) == "tiny_model"
    assert model_key(tiny(torch.bfloat16)) == "tiny_model-bfloat16"
