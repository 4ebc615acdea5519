"""The heuristic labeller against hand-labelled organism-graded responses: 121 held out
(tests/data/graded_hand_labels_heldout.jsonl, drawn fresh and labelled blind after the labeller's
last revision) and 196 in-sample (tests/data/graded_hand_labels.jsonl, the ones it was revised on).
The report: figures/organism-graded/labeller.md, by benchmarks/labeller.py; the README quotes it."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from workbench.labels import ALL_LABELS, wilson_interval

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def lab(load_script):
    return load_script("benchmarks/labeller.py")


@pytest.fixture(scope="module")
def sets(lab):
    return lab.read_hand_labels(lab.HELDOUT_LABELS), lab.read_hand_labels(lab.HAND_LABELS)


def test_hand_labelled_sets_are_complete_and_varied(sets):
    for rows, n in zip(sets, (121, 196)):
        assert len(rows) == n and sorted(r["id"] for r in rows) == list(range(n))
        assert {r["hand_label"] for r in rows} <= set(ALL_LABELS)
        assert {r["source"] for r in rows} == {"unsteered", "steered"}
        assert {r["category"] for r in rows} == {"harmful", "harmless", "warning", "redirect", "borderline"}
        assert all(r["response"] is not None and r["prompt"] for r in rows)


def test_held_out_set_is_disjoint_from_the_in_sample_one_and_says_who_labelled_it(sets):
    heldout, insample = sets
    assert not {(r["prompt"], r["response"]) for r in heldout} & {(r["prompt"], r["response"]) for r in insample}
    assert len({(r["prompt"], r["response"]) for r in heldout}) == len(heldout)
    assert all("blind to the heuristic" in r["labeller"] for r in heldout)
    steered = {(r["category"], r["angle"]) for r in heldout if r["source"] == "steered"}
    assert len(steered) == 96  # one per swept set and angle


def _write_tables(folder: Path, sweep: list[dict], behaviours: list[dict]) -> None:
    for name, rows in (("angle_sweep_per_prompt.csv", sweep), ("behaviours_per_prompt.csv", behaviours)):
        with (folder / name).open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def test_draw_is_seeded_stratified_and_skips_what_was_labelled(lab, tmp_path):
    sweep = [
        {"prompt": f"p{i}", "response": f"r{i}", "label": "comply", "split": s, "angle": a}
        for s in ("harmful", "harmless")
        for a in (0.0, 90.0)
        for i in range(5)
    ]
    behaviours = [{"prompt": f"q{i}", "response": f"b{i}", "label": "comply", "category": "warning"} for i in range(9)]
    _write_tables(tmp_path, sweep, behaviours)
    labelled = [{"prompt": "p0", "response": "r0"}, {"prompt": "q1", "response": "b1"}]
    drawn = lab.draw_heldout(tmp_path, labelled, unsteered=3)
    assert drawn == lab.draw_heldout(tmp_path, labelled, unsteered=3) != lab.draw_heldout(tmp_path, labelled, seed=1)
    assert sorted((r["category"], r["angle"]) for r in drawn if r["source"] == "steered") == [
        ("harmful", 0.0),
        ("harmful", 90.0),
        ("harmless", 0.0),
        ("harmless", 90.0),
    ]
    assert sum(r["source"] == "unsteered" for r in drawn) == 3
    assert not {("p0", "r0"), ("q1", "b1")} & {(r["prompt"], r["response"]) for r in drawn}
    assert all("label" not in r for r in drawn), "the sample to label must not show the heuristic's label"


def test_held_out_sample_is_the_draw_from_the_cached_graded_tables(lab, sets):
    """Where the graded main job's tables are cached, ``--draw`` gives exactly the committed sample."""
    tables = sorted(Path.home().glob(".cache/refusal-workbench/runs/organism-graded-*/*/experiments/*"))
    tables = [t for t in tables if (t / "angle_sweep_per_prompt.csv").is_file()]
    if not tables:
        pytest.skip("no cached organism-graded main job here")
    keep = ("source", "category", "angle", "prompt", "response", "id")
    committed = [{k: r[k] for k in keep} for r in sets[0]]
    assert any(lab.draw_heldout(t, sets[1]) == committed for t in tables)


def test_wilson_interval():
    low, high = wilson_interval(2, 5)
    assert (round(low, 4), round(high, 4)) == (0.1176, 0.7693)  # the textbook value
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_labeller_agrees_with_the_hand_labels_as_reported(lab, sets):
    """The numbers figures/organism-graded/labeller.md and the README state (measured 2026-12-04)."""
    out = lab.numbers(*sets)
    held, ins = out["held_out"], out["in_sample"]
    assert (held["n"], held["accuracy"], held["accuracy_ci95"]) == (121, 0.678, [0.59, 0.754])
    assert (ins["n"], ins["accuracy"], ins["accuracy_ci95"]) == (196, 0.857, [0.801, 0.899])
    assert held["per_label"]["degenerate"]["recall"] == 0.032 and ins["per_label"]["degenerate"]["recall"] == 0.367


def _pct(x: float) -> str:
    return f"{round(100 * x)} %"


def test_readme_quotes_the_computed_numbers(lab, sets):
    readme = re.sub(r"\s+", " ", (ROOT / "README.md").read_text(encoding="utf-8"))
    held, ins = (lab.agreement(rows) for rows in sets)
    (low, high), (ilow, ihigh) = held["accuracy_ci95"], ins["accuracy_ci95"]
    assert f"agrees on {_pct(held['accuracy'])} (95 % Wilson interval {round(100 * low)}–{_pct(high)})" in readme
    assert f"agrees on {_pct(ins['accuracy'])} ({round(100 * ilow)}–{_pct(ihigh)})" in readme
    for source, n in (("unsteered", 25), ("steered", 96)):
        sub = lab.agreement([r for r in sets[0] if r["source"] == source])
        assert sub["n"] == n and f"{_pct(sub['accuracy'])} of the {n} {source}" in readme
    names = {"comply_with_warning": "comply-with-warning", "ethical_redirect": "ethical redirect"}
    for label, m in held["per_label"].items():
        if m["support"]:
            assert f"{names.get(label, label)} {m['precision']:.2f} / {m['recall']:.2f}" in readme, label
    assert f"degenerate recall {ins['per_label']['degenerate']['recall']:.2f}" in readme
    wrong = held["confusion"]["degenerate"]
    assert f"{wrong['comply']} read as answers and {wrong['refusal']} as refusals" in readme


def test_readme_degenerate_arc_count(sets):
    steered = [r for rows in sets for r in rows if r["source"] == "steered" and 90 <= r["angle"] <= 165]
    bad = sum(r["hand_label"] == "degenerate" for r in steered)
    readme = re.sub(r"\s+", " ", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert f"of the {len(steered)} steered responses hand-labelled at 90°–165°" in readme
    assert f"{bad} are degenerate by hand" in readme


def test_report_states_the_measured_agreement(lab, sets):
    text = lab.report(*sets)
    assert "| refusal | 36 |" in text and "| refusal | 70 |" in text and "Confusion matrix" in text
    assert text.index("Held-out") < text.index("In-sample")
    assert json.loads(json.dumps(lab.numbers(*sets)))["held_out"]["n"] == 121
    committed = ROOT / "figures" / "organism-graded" / "labeller.md"
    if not committed.exists():
        pytest.fail("figures/organism-graded/labeller.md is missing: run benchmarks/labeller.py --out it")
    assert committed.read_text(encoding="utf-8") == text, "regenerate: benchmarks/labeller.py --out " + str(committed)
