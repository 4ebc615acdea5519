"""The README's own-prompts walkthrough runs on ``examples/``: prompts written for it, none of them
in any shipped prompt set, so nothing the organism or a shipped analysis trained on reaches the
walkthrough's test split."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from workbench import data

EXAMPLES = Path(__file__).parent.parent / "examples"
FILES = ("my_harmful.csv", "my_harmless.json", "new.txt")


def _norm(prompt: str) -> str:
    """Case, whitespace, curly apostrophes and closing punctuation do not make a prompt new."""
    return re.sub(r"\s+", " ", prompt.replace("\u2019", "'").casefold()).strip().rstrip("?.!").strip()


def _training_splits() -> dict[str, list[str]]:
    """Every shipped split something was trained or selected on."""
    out = {f"{k}/{s}": data.load_split(k, s) for k in ("harmful", "harmless") for s in data.SPLITS if s != "test"}
    out["contrast"] = data.load_contrast()
    out |= {
        f"{k}/organism_train": [r["prompt"] for r in data.load_graded(k, "organism_train")] for k in data.GRADED_KINDS
    }
    return out


def _held_out_sets() -> dict[str, list[str]]:
    out = {f"{k}/test": data.load_split(k, "test") for k in ("harmful", "harmless", "borderline")}
    return out | {f"{k}/test": [r["prompt"] for r in data.load_graded(k, "test")] for k in data.GRADED_KINDS}


@pytest.mark.parametrize("name", FILES)
def test_example_prompts_are_in_no_shipped_training_split(name):
    prompts = data.read_prompts(EXAMPLES / name)
    mine = {_norm(p): p for p in prompts}
    assert len(mine) == len(prompts), "two example prompts differ only in case, spacing or punctuation"
    for split, shipped in _training_splits().items():
        assert set(prompts).isdisjoint(shipped), (split, sorted(set(prompts) & set(shipped)))
        clash = sorted(mine[n] for n in mine.keys() & {_norm(p) for p in shipped})
        assert not clash, f"{name}: {clash} match {split} up to case, spacing or punctuation"


@pytest.mark.parametrize("name", FILES)
def test_example_prompts_are_in_no_shipped_held_out_set_either(name):
    mine = {_norm(p) for p in data.read_prompts(EXAMPLES / name)}
    for split, shipped in _held_out_sets().items():
        assert mine.isdisjoint(_norm(p) for p in shipped), split


def test_normalised_match_catches_what_exact_match_misses():
    """The guard's own check: a shipped training prompt re-typed differently is still caught."""
    shipped = data.load_split("harmful", "organism_train")[0]
    retyped = "  " + shipped.upper().replace(" ", "   ") + "?"
    assert retyped not in shipped and _norm(retyped) == _norm(shipped)


def test_examples_split_as_the_readme_says():
    splits = data.PromptSplits.from_files(EXAMPLES / "my_harmful.csv", EXAMPLES / "my_harmless.json")
    sizes = {key: len(p) for key, p in splits.sets.items()}
    assert [sizes["harmful", s] for s in data.ANALYSIS_SPLITS] == [26, 12, 22]
    assert [sizes["harmless", s] for s in data.ANALYSIS_SPLITS] == [26, 12, 22]
    assert len(data.read_prompts(EXAMPLES / "new.txt")) == 4
