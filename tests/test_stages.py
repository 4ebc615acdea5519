"""One stage mechanism: computed once, reused when its files exist, timed, recorded in the manifest."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from workbench.artifacts import Manifest, atomic_write_text
from workbench.stages import Stages, load_tables, save_tables, table_files


def _stage(stages: Stages, path, calls: list[str], name: str = "a"):
    def compute():
        calls.append("compute")
        atomic_write_text(path, "42")
        return 42

    return stages.run(name, [path], compute, lambda: calls.append("load") or int(path.read_text()))


def test_computes_once_then_loads_and_records_both_in_the_manifest(tmp_path):
    calls: list[str] = []
    manifest = Manifest(tmp_path / "manifest.json")
    stages = Stages(manifest=manifest)
    assert _stage(stages, tmp_path / "a.txt", calls) == 42
    assert calls == ["compute"] and stages.reused == {"a": False}
    record = json.loads(manifest.path.read_text())["stages"]["a"]
    assert record["reused"] is False and list(record["files"]) == ["a.txt"]

    again = Stages(manifest=Manifest(tmp_path / "manifest.json"))  # a resumed run
    assert _stage(again, tmp_path / "a.txt", calls) == 42
    assert calls == ["compute", "load"] and again.reused == {"a": True}
    assert json.loads(manifest.path.read_text())["stages"]["a"]["reused"] is True


def test_a_stage_asked_for_again_in_the_same_run_keeps_its_computed_record(tmp_path):
    calls: list[str] = []
    manifest = Manifest(tmp_path / "manifest.json")
    stages = Stages(manifest=manifest)
    assert _stage(stages, tmp_path / "a.txt", calls) == 42 and _stage(stages, tmp_path / "a.txt", calls) == 42
    assert calls == ["compute", "load"] and stages.reused == {"a": False}
    assert json.loads(manifest.path.read_text())["stages"]["a"]["reused"] is False


def test_a_failed_compute_leaves_the_stage_undone(tmp_path):
    stages = Stages()

    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stages.run("b", [tmp_path / "b.txt"], boom, lambda: None)
    assert "b" not in stages.seconds
    calls: list[str] = []
    assert _stage(stages, tmp_path / "b.txt", calls, "b") == 42 and calls == ["compute"]


def test_nested_stages_are_recorded_but_only_top_level_times_add_up(tmp_path):
    stages = Stages()
    calls: list[str] = []
    outer = stages.run(
        "outer", [tmp_path / "o.txt"], lambda: _stage(stages, tmp_path / "i.txt", calls, "inner") + 1, lambda: None
    )
    assert outer == 43
    assert set(stages.seconds) == {"inner", "outer"} and list(stages.top_level()) == ["outer"]
    stages.record("figures", 1.234)
    assert stages.top_level() == {"outer": stages.seconds["outer"], "figures": 1.2}


def test_table_stages_write_the_summary_last_and_read_back_equal(tmp_path):
    files = table_files(tmp_path, "sweep")
    assert files[-1].name == "sweep.csv"  # its presence marks the stage done
    per_prompt, summary = pd.DataFrame({"a": [1, 2]}), pd.DataFrame({"rate": [0.5]})
    save_tables(files, (per_prompt, summary))
    got = load_tables(files)
    pd.testing.assert_frame_equal(got[0], per_prompt)
    pd.testing.assert_frame_equal(got[1], summary)
    with pytest.raises(ValueError):
        save_tables(files, (per_prompt,))  # one table per file
