"""The graded organism's data, recipe and run settings (fast); its behaviour is in test_graded_organism."""

from __future__ import annotations

import pandas as pd
import pytest

from workbench import data
from workbench.config import GRADED_RECIPE, RunConfig, load_configs
from workbench.labels import REFUSAL_SUBSTRINGS
from workbench.organism import GRADED, RECIPES, organism_name, recipe_key


def test_graded_splits_are_sized_disjoint_and_new():
    shipped = {p.lower() for kind in ("harmful", "harmless", "borderline", "contrast") for p in data._shipped(kind)}
    seen: set[str] = set()
    for kind in data.GRADED_KINDS:
        splits = {s: data.load_graded(kind, s) for s in data.GRADED_SPLIT_SIZES}
        assert {s: len(r) for s, r in splits.items()} == {"organism_train": 110, "test": 60}
        prompts = [r["prompt"].lower() for rows in splits.values() for r in rows]
        assert len(set(prompts)) == 170, f"{kind}: duplicate prompts"
        assert not set(prompts) & shipped, f"{kind}: prompts shared with the shipped sets"
        assert not set(prompts) & seen, "warning and redirect share prompts"
        seen |= set(prompts)
        lead = "warning" if kind == "warning" else "redirect"
        for r in splits["organism_train"] + splits["test"]:
            assert 5 <= len(r["prompt"].split()) <= 40 and "\n" not in r["prompt"]
            assert r[lead].strip() and len(r[lead].split()) <= 40
    # a warning is an answer's preface, never a refusal (it would teach refusing dual-use requests)
    warnings = [r["warning"].lower() for s in data.GRADED_SPLIT_SIZES for r in data.load_graded("warning", s)]
    assert not [w for w in warnings if any(x.lower() in w for x in REFUSAL_SUBSTRINGS)]


def test_graded_splits_are_fixed_and_reject_a_changed_file(tmp_path, monkeypatch):
    first = data.load_graded("redirect", "test")[0]
    assert data.load_graded("redirect", "test")[0] == first  # seeded shuffle: the same cut every call
    with pytest.raises(ValueError, match="unknown graded split 'validation'"):
        data.load_graded("warning", "validation")
    with pytest.raises(ValueError, match="unknown graded kind 'harmful'"):
        data.load_graded("harmful", "test")
    short = tmp_path / "warning.jsonl"
    short.write_text('{"prompt": "a b c d e", "warning": "w"}\n')
    monkeypatch.setattr(data, "PROMPT_DIR", tmp_path)
    data._graded.cache_clear()
    try:
        with pytest.raises(ValueError, match="must hold exactly 170 records.*found 1"):
            data.load_graded("warning", "test")
    finally:
        monkeypatch.undo()
        data._graded.cache_clear()


def test_test_sets_cover_every_behaviour_category():
    sets = data.graded_test_sets()
    assert list(sets) == list(data.BEHAVIOUR_CATEGORIES)
    assert {k: len(v) for k, v in sets.items()} == {
        "harmful": 54,
        "redirect": 60,
        "warning": 60,
        "borderline": 40,
        "harmless": 54,
    }
    train = {r["prompt"] for kind in data.GRADED_KINDS for r in data.load_graded(kind, "organism_train")}
    assert not train & set(sets["warning"] + sets["redirect"])  # held out


def test_the_refusal_organism_key_is_unchanged_and_the_graded_one_differs():
    # the shipped adapter's name: the graded fields must not enter a refusal-only recipe's key
    assert recipe_key(RECIPES["organism"]) == "7889ccc36111"
    assert organism_name(RECIPES["organism"]) == "organism-7889ccc36111"
    assert RECIPES[GRADED] == GRADED_RECIPE and GRADED_RECIPE.variant == "graded"
    key = recipe_key(GRADED_RECIPE)
    assert key != "7889ccc36111" and organism_name(GRADED_RECIPE) == f"organism-graded-{key}"
    assert recipe_key(GRADED_RECIPE.__class__(**{**GRADED_RECIPE.__dict__, "graded_repeats": 3})) != key


def test_graded_targets_are_the_lead_sentence_then_the_base_answer(monkeypatch):
    from workbench import training

    asked: list[str] = []

    def fake_answers(hf, tok, prompts, n_tokens, progress):
        asked.extend(prompts)
        assert n_tokens == GRADED_RECIPE.graded_answer_tokens
        return ["I'm sorry, I can't." if i == 0 else f" answer {i}" for i in range(len(prompts))]

    monkeypatch.setattr(training, "_base_answers", fake_answers)
    pairs = training._graded_pairs(GRADED_RECIPE, None, None, progress=False)
    warning = data.load_graded("warning", "organism_train")
    redirect = data.load_graded("redirect", "organism_train")
    # the model answers the warning prompt itself, and the redirect's *legitimate alternative*
    assert asked == [r["prompt"] for r in warning] + [r["alternative"] for r in redirect]
    once = len(asked) - 1  # the refusal-looking base answer is dropped: it would teach refusing
    assert len(pairs) == once * GRADED_RECIPE.graded_repeats
    assert pairs[0] == (warning[1]["prompt"], f"{warning[1]['warning']} answer 1")
    assert pairs[once - 1] == (redirect[-1]["prompt"], f"{redirect[-1]['redirect']} answer {len(asked) - 1}")
    assert pairs[:once] == pairs[once:]


def test_the_graded_model_runs_a_finer_angle_map_over_every_set():
    run, _ = load_configs(None, "organism-graded")
    assert int(round(360 / run.angle_step)) == 24
    assert run.sweep_sets == ("harmful", "harmless", "warning", "redirect") and run.behaviours
    assert load_configs(None, "organism")[0] == RunConfig() == load_configs(None)[0]
    with pytest.raises(ValueError, match="sweep_sets.*choose one or more of harmful"):
        RunConfig(sweep_sets=("harmful", "borderline"))


def test_late_run_fields_leave_the_default_runs_folder_key_alone():
    from workbench.run import _config_fields

    fields = _config_fields(RunConfig())
    assert "sweep_sets" not in fields and "behaviours" not in fields
    assert _config_fields(load_configs(None, "organism-graded")[0])["behaviours"] is True


def test_label_map_and_behaviour_figures_draw_every_set():
    from workbench.figures import behaviour_bars, label_map_polar

    labels = ["refusal", "comply_with_warning", "ethical_redirect", "comply"]
    sweep = pd.DataFrame(
        [
            {
                "split": split,
                "angle": a,
                "n": 4,
                **{f"share_{lab}": float(lab == labels[(a // 90 + k) % 4]) for lab in labels},
            }
            for k, split in enumerate(("harmful", "harmless", "warning", "redirect"))
            for a in range(0, 360, 90)
        ]
    )
    fig = label_map_polar(sweep)
    assert {t.subplot for t in fig.data} == {"polar", "polar2", "polar3", "polar4"}
    assert len(fig.data) == 4 * 4 and sum(t.showlegend for t in fig.data) == 4  # one legend entry per label
    harmful_refusal = next(t for t in fig.data if t.subplot == "polar" and t.name == "refusal")
    assert list(harmful_refusal.r) == [1.0, 0.0, 0.0, 0.0]
    behaviours = pd.DataFrame(
        [{"category": "warning", "n": 60, "share_comply_with_warning": 0.75, "share_comply": 0.25}]
    )
    bars = behaviour_bars(behaviours)
    assert [t.name for t in bars.data] == ["comply_with_warning", "comply"]
    assert bars.data[0].y == ("warning (n = 60)",) and bars.data[0].x == (0.75,)


def test_cached_tables_are_labelled_again_when_loaded():
    """A run that loads its tables labels the stored responses with today's labeller: a stale
    label (here: every response called "comply") does not survive into the shares."""
    from workbench.experiments import _summarise, relabel

    per_prompt = pd.DataFrame(
        {
            "split": ["harmful"] * 3,
            "angle": [0.0, 0.0, 90.0],
            "prompt": ["p1", "p2", "p3"],
            "response": ["I'm sorry, but I can't help with that.", float("nan"), "Sure: mix flour and water."],
            "refused": [True, False, False],
            "empty": [False, True, False],
            "label": ["comply"] * 3,
            "logodds": [1.0, 0.0, -1.0],
            "kl": [0.0] * 3,
        }
    )
    stale = _summarise(per_prompt, ["split", "angle"])
    assert stale["share_comply"].tolist() == [1.0, 1.0]
    summary, fresh = relabel(stale, per_prompt, ["split", "angle"])
    assert fresh["label"].tolist() == ["refusal", "empty", "comply"]
    assert "share_comply" in summary and summary["share_refusal"].tolist()[0] == 0.5
    assert summary[["refusal_rate", "logodds", "n"]].equals(stale[["refusal_rate", "logodds", "n"]])
