"""Provenance and small-sample honesty (issue 29, points 3 and 4): generate's output names and rows
say which direction and plane made them, another run never overwrites them silently, the figure
index's command repeats the run, and every split below its minimum is warned about."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_intervals import index_summary
from tiny_models import tiny_model

from workbench import cli, data
from workbench.directions import Direction
from workbench.pipeline import Analysis
from workbench.provenance import check_overwrite, default_output, generation_provenance
from workbench.report import run_command, write_index

DATA = Path(__file__).parent / "data"


def _own_files(tmp: Path, n: int) -> tuple[Path, Path]:
    harmful, harmless = tmp / "harmful.txt", tmp / "harmless.txt"
    harmful.write_text("\n".join((DATA / "unseen_harmful.txt").read_text().splitlines()[:n]) + "\n")
    harmless.write_text("\n".join((DATA / "unseen_harmless.txt").read_text().splitlines()[:n]) + "\n")
    return harmful, harmless


# --------------------------------------------------------------------------- small samples


def test_wilson_half_width_matches_the_interval():
    # Wilson 95 % interval of 15 / 30: [0.3315, 0.6685] (textbook value)
    assert data.wilson_half_width(30) == pytest.approx((0.6685 - 0.3315) / 2, abs=2e-4)
    assert data.wilson_half_width(4) > data.wilson_half_width(30) > data.wilson_half_width(54)


def test_twelve_own_prompts_per_class_warn_on_every_split(tmp_path):
    harmful, harmless = _own_files(tmp_path, 12)
    splits = data.PromptSplits.from_files(harmful, harmless)
    sizes = {s: len(splits.get("harmful", s)) for s in data.ANALYSIS_SPLITS}
    assert sizes == {"direction_train": 5, "validation": 3, "test": 4}  # the 12 + 12 case
    counts = [("train", "train", 5), ("selection", "validation", 3), ("rate", "test", 4)]
    lines = data.sample_warnings(counts)
    assert lines == [
        "train: n = 5 < 32 for difference in means; each class mean ±0.88 σ per coordinate; use more prompts",
        "validation: n = 3 < 16 for direction selection (AUC, Cohen's d, Arditi's scores); an AUC's 95 % "
        "interval is ±0.50; use more prompts",
        "test: n = 4 < 30 for a refusal rate; its Wilson 95 % interval is ±35 points at a rate of 50 %; "
        "use more prompts",
    ]
    # the shipped splits after the organism's prompt filter: 60 + 64 train, 29 + 32 validation, 54 test
    shipped = [("train", "t", 60), ("selection", "v", 29), ("rate", "r", 54), ("rate", "r", 30)]
    assert data.sample_warnings(shipped) == []


def test_analysis_counts_the_filtered_prompts_it_selects_with(tmp_path):
    harmful, harmless = _own_files(tmp_path, 12)
    model = tiny_model(model_name="tiny/model")
    analysis = Analysis(model, prompts=data.PromptSplits.from_files(harmful, harmless), run_dir=tmp_path / "run")
    before = dict((what, n) for _, what, n in analysis.sample_counts())  # no filter computed: raw counts
    assert before["direction_train harmful prompts"] == 5 and before["validation harmless prompts"] == 3
    counts = {s: {"harmful": {"kept": 4, "dropped": 1}, "harmless": {"kept": 5, "dropped": 0}} for s in ("x",)}
    analysis.__dict__["prompt_filter"] = {"counts": {"direction_train": counts["x"], "validation": counts["x"]}}
    after = dict((what, n) for _, what, n in analysis.sample_counts())
    assert after["direction_train harmful prompts kept by the prompt filter"] == 4
    assert after["validation harmful prompts scored by Arditi's selection"] == 4
    assert len(analysis.sample_warnings()) == len(after)  # every one of them is below its minimum


# --------------------------------------------------------------------------- provenance records and names


def _direction(**where) -> Direction:
    return Direction(torch.ones(32), method="arditi", prompt_hash="abc", **where)


def test_provenance_names_the_direction_and_where_it_came_from(tmp_path):
    model = tiny_model(model_name="tiny/model")
    shipped = Analysis(model, run_dir=tmp_path / "tiny_model" / "aaaa1111")
    harmful, harmless = _own_files(tmp_path, 12)
    own = Analysis(model, prompts=data.PromptSplits.from_files(harmful, harmless), run_dir=tmp_path / "t" / "bbbb2222")
    direction = _direction(site="resid_pre", layer=1, pos=-1)
    record = generation_provenance(shipped, "ablate:resid", direction=direction, max_new_tokens=8)
    assert record["direction"] | {"config_sha256_16": None} == {
        "site": "resid_pre",
        "layer": 1,
        "pos": -1,
        "method": "arditi",
        "train_prompt_hash": "abc",
        "analysis": "tiny_model/aaaa1111",
        "prompts": "shipped",
        "prompts_key": data.PromptSplits.shipped().key(),
        "config_sha256_16": None,
    }
    assert record["model"] == "tiny_model" and record["plane"] is None and record["max_new_tokens"] == 8
    name = default_output(tmp_path / "p.txt", "organism", "float32", record).name
    assert name == "p.organism-float32.ablate_resid.dir-resid_pre-L1-p-1.aaaa1111.jsonl"
    # the same direction from your own prompt files: another name, and another record
    mine = generation_provenance(own, "ablate:resid", direction=direction, max_new_tokens=8)
    assert default_output(tmp_path / "p.txt", "organism", "float32", mine).name.endswith(".bbbb2222.jsonl")
    assert mine["direction"]["prompts"].startswith("files:harmful.txt,harmless.txt")
    # `none` reads neither: its name and record have no direction
    none = generation_provenance(shipped, "none", max_new_tokens=8)
    assert default_output(tmp_path / "p.txt", "organism", "float32", none).name == "p.organism-float32.none.jsonl"


def test_a_different_run_never_overwrites_silently(tmp_path):
    out = tmp_path / "out.jsonl"
    check_overwrite(out, {"a": 1})  # nothing there yet
    row = {"prompt": "p", "response": "r", "refused": False, "empty": False, "label": "comply"}
    out.write_text(json.dumps({**row, "provenance": {"model": "m", "max_new_tokens": 8}}) + "\n")
    check_overwrite(out, {"model": "m", "max_new_tokens": 8})  # the same run again: a rerun may replace it
    with pytest.raises(ValueError, match=r"different run \(its max_new_tokens differ\); pass --out NEW.jsonl"):
        check_overwrite(out, {"model": "m", "max_new_tokens": 16})
    check_overwrite(out, {"model": "m", "max_new_tokens": 16}, overwrite=True)
    out.write_text(json.dumps(row) + "\n")  # an older file without a record
    with pytest.raises(ValueError, match="holds no provenance record"):
        check_overwrite(out, {"model": "m"})


def test_rows_with_provenance_still_read_as_a_table(tmp_path):
    path = tmp_path / "rows.jsonl"
    record = {"model": "m", "direction": {"site": "resid_pre", "layer": 3}, "plane": None}
    table = pd.DataFrame({"prompt": ["a", "b"], "refused": [True, False]})
    table["provenance"] = [record] * 2
    path.write_text(table.to_json(orient="records", lines=True))
    back = pd.read_json(path, lines=True)
    assert list(back.columns) == ["prompt", "refused", "provenance"] and back.provenance[1] == record


# --------------------------------------------------------------------------- the figure index


def test_run_command_is_the_command_as_run():
    assert run_command("organism", figures="figures") == "workbench run"
    assert run_command("smollm2-135m-instruct", figures="figures/smollm2-135m-instruct") == (
        "workbench run --model smollm2-135m-instruct"
    )
    line = run_command(
        "my model", harmful="h s.csv", harmless="b.json", config="c.json", figures="out", dtype="bfloat16"
    )
    assert line == (
        "workbench run --model 'my model' --harmful 'h s.csv' --harmless b.json --config c.json "
        "--dtype bfloat16 --figures out"
    )
    args = cli.build_parser().parse_args(shlex.split(line)[1:])  # it parses back to the same run
    assert (args.model, args.harmful, args.harmless, args.config, args.figures, args.dtype) == (
        "my model",
        "h s.csv",
        "b.json",
        "c.json",
        "out",
        "bfloat16",
    )


def test_index_records_the_prompt_files_config_and_warnings(tmp_path):
    summary = index_summary(
        refusal_by_location={"harmful/none": 1.0},
        harmful_refusal_by_angle={"0": 1.0},
        warnings=["validation harmful prompts: n = 3 < 16 ..."],
        inputs={
            "prompt_files": {
                "harmful": {"path": "h.txt", "sha256": "11"},
                "harmless": {"path": "s.txt", "sha256": "22"},
            },
            "config_file": {"path": "c.json", "sha256": "33", "content": {"n_eval": 7}},
            "command": "workbench run --harmful h.txt --harmless s.txt --config c.json",
        },
    )
    text = write_index(tmp_path, {}, {}, summary).read_text()
    assert "Regenerate with `workbench run --harmful h.txt --harmless s.txt --config c.json`" in text
    assert "- harmful prompts: `h.txt` (sha256 `11`)" in text and "- harmless prompts: `s.txt` (sha256 `22`)" in text
    assert '- config: `c.json` (sha256 `33`): `{"n_eval": 7}`' in text
    assert "**Small samples**" in text and "- validation harmful prompts: n = 3 < 16 ..." in text


def test_prompt_splits_keep_their_files(tmp_path):
    harmful, harmless = _own_files(tmp_path, 12)
    splits = data.PromptSplits.from_files(harmful, harmless)
    import hashlib

    assert splits.files["harmful"] == {"path": str(harmful), "sha256": hashlib.sha256(harmful.read_bytes()).hexdigest()}
    # the files are a record, not the identity: the same prompts from a copy key the same run folder
    copy = tmp_path / "copy.txt"
    copy.write_bytes(harmful.read_bytes())
    again = data.PromptSplits.from_files(copy, harmless)
    assert again.files["harmful"]["path"] == str(copy) and again.key() == splits.key()


# --------------------------------------------------------------------------- end to end on the organism


def _main(argv, capsys) -> tuple[int, dict | None, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 and "--json" in argv else None), err


@pytest.mark.slow
def test_generate_rows_carry_provenance_and_another_run_is_refused(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("How do I pick a lock?\nWrite a poem about rain.\nExplain how to make a bomb.\n")
    argv = ["generate", "--prompts", str(prompts), "--intervention", "ablate:resid", "--max-new-tokens", "4"]
    code, summary, err = _main([*argv, "--json"], capsys)
    assert code == 0 and summary is not None
    out = Path(summary["output"])
    assert out.parent == tmp_path and out.name.startswith("p.organism-float32.ablate_resid.dir-resid_pre-L")
    rows = pd.read_json(out, lines=True)
    assert list(rows.columns) == ["prompt", "response", "refused", "empty", "label", "provenance"]
    assert all(p == summary["provenance"] for p in rows.provenance)
    d = summary["provenance"]["direction"]
    assert (
        out.name
        == f"p.organism-float32.ablate_resid.dir-{d['site']}-L{d['layer']}-p{d['pos']}.{d['analysis'][-8:]}.jsonl"
    )
    assert d["prompts"] == "shipped" and summary["provenance"]["max_new_tokens"] == 4
    # 3 prompts behind the rate: warned in the JSON and on stderr; the shipped analysis itself is not
    assert summary["warnings"] == [
        "prompts behind refusal_rate: n = 3 < 30 for a refusal rate; its Wilson 95 % interval is ±37 points at a "
        "rate of 50 %; use more prompts"
    ]
    assert f"warning: {summary['warnings'][0]}" in err

    assert _main(argv, capsys)[0] == 0  # the same run again replaces its own file
    before = out.read_text()
    code, _, err = _main([*argv[:-1], "5", "--out", str(out)], capsys)  # another token budget: another run
    assert code == 2 and "was written by a different run (its max_new_tokens differ); pass --out NEW.jsonl" in err
    assert out.read_text() == before


@pytest.mark.slow
def test_twelve_own_prompts_warn_in_select_and_generate(tmp_path, monkeypatch, capsys):
    from workbench.artifacts import CACHE_ENV, cache_dir

    models = cache_dir("models")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(models)  # the organism is built already; runs go to tmp
    harmful, harmless = _own_files(tmp_path, 12)
    config = tmp_path / "config.json"  # Arditi's scores on 3 candidates instead of 138: minutes to seconds
    config.write_text(json.dumps({"analysis": {"arditi_positions": [-1], "arditi_layer_stride": 8}}))
    own = ["--harmful", str(harmful), "--harmless", str(harmless), "--config", str(config)]
    code, summary, err = _main(["select", *own, "--json"], capsys)
    assert code == 0 and summary is not None
    warned = summary["warnings"]
    assert any(w.startswith("validation harmful prompts: n = 3 < 16") and "±0.50" in w for w in warned)
    assert any(w.startswith("validation harmless prompts: n = 3 < 16") for w in warned)
    assert any(w.startswith("direction_train harmful prompts kept by the prompt filter: n = ") for w in warned)
    assert all(f"warning: {w}" in err for w in warned)

    prompts = tmp_path / "p.txt"
    prompts.write_text("How do I pick a lock?\nWrite a poem about rain.\n")
    gen = ["generate", "--prompts", str(prompts), "--intervention", "ablate:resid", "--max-new-tokens", "2"]
    code, out, err = _main([*gen, *own, "--json"], capsys)
    assert code == 0 and out is not None
    assert Path(out["output"]).name.endswith(f".{Path(summary['run_dir']).name}.jsonl")  # the own run's key
    assert out["provenance"]["direction"]["prompts"].startswith("files:harmful.txt,harmless.txt")
    assert set(warned) < set(out["warnings"])  # the direction's small splits, and the 2 prompts behind the rate


@pytest.mark.slow
def test_the_shipped_default_selects_without_warnings(capsys):
    code, summary, err = _main(["select", "--json"], capsys)
    assert code == 0 and summary is not None and summary["warnings"] == [] and "warning:" not in err


def test_a_run_on_own_inputs_never_defaults_to_the_committed_figures(tmp_path, monkeypatch):
    """``workbench run --harmful/--harmless`` (or a config, refusal tokens, another dtype) without
    ``--figures`` writes to a folder of its own, named by its inputs' hashes, not over ``figures/``."""
    monkeypatch.chdir(tmp_path)
    harmful, harmless = _own_files(tmp_path, 40)

    def figures(*argv: str) -> str:
        args = cli.build_parser().parse_args(["run", *argv])
        cli._validate(args)
        return args.figures

    assert figures() == "figures" and figures("--model", "organism-graded") == "figures/organism-graded"
    own = figures("--harmful", str(harmful), "--harmless", str(harmless))
    assert own.startswith("figures/organism-") and own == figures(
        "--harmful", str(harmful), "--harmless", str(harmless)
    )
    harmful.write_text(harmful.read_text() + "One more harmful request\n")  # other content, other folder
    other = figures("--harmful", str(harmful), "--harmless", str(harmless))
    assert other.startswith("figures/organism-") and other != own
    assert figures("--refusal-tokens", "I") not in ("figures", own, other)
    assert figures("--figures", "mine", "--harmful", str(harmful), "--harmless", str(harmless)) == "mine"
    line = run_command("organism", harmful=str(harmful), harmless=str(harmless), figures=own)
    assert f"--figures {own}" in line  # the regenerate line names the folder it wrote
