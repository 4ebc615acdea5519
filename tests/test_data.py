"""Tests for workbench.data: shipped prompt files, fixed splits, and the file readers (no model)."""

from __future__ import annotations

import itertools
import json
import sys
import types

import pytest

from workbench import data
from workbench.data import (
    KINDS,
    PROMPT_DIR,
    SPLITS,
    load_contrast,
    load_hf_dataset,
    load_refusals,
    load_split,
    prompt_set_hash,
    read_prompts,
)

SIZES = {"organism_train": 110, "direction_train": 64, "validation": 32, "test": 54}
FILE_SIZES = {"harmful": 260, "harmless": 260, "borderline": 40, "contrast": 80, "refusals": 12}
REFUSAL_MARKERS = (
    "i'm sorry",
    "i am sorry",
    "i apologize",
    "i cannot",
    "i can't",
    "i won't",
    "i will not",
    "i am unable to",
    "i'm unable to",
)

# Computed once from the shipped files; a change here means the splits (or the files) changed,
# which silently invalidates every saved direction/result -- update only on purpose.
EXPECTED_HASHES = {
    ("harmful", "organism_train"): "aaefee08d66eb5cd",
    ("harmful", "direction_train"): "8ad4d594466aa320",
    ("harmful", "validation"): "7e4006935c59410f",
    ("harmful", "test"): "452ca53a5971d998",
    ("harmless", "organism_train"): "668184137eb81b31",
    ("harmless", "direction_train"): "18c05bc30a2a1ac9",
    ("harmless", "validation"): "23ba3981e480eddd",
    ("harmless", "test"): "9740bf8dd54f0c9e",
    ("borderline", "test"): "1b6873edbff1e38e",
}


def _raw_lines(name: str) -> list[str]:
    return (PROMPT_DIR / f"{name}.txt").read_text(encoding="utf-8").split("\n")


# --------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("name", sorted(FILE_SIZES))
def test_shipped_file_format(name: str) -> None:
    lines = _raw_lines(name)
    if lines[-1] == "":
        lines = lines[:-1]  # trailing newline
    assert len(lines) == FILE_SIZES[name]
    for line in lines:
        assert line and line == line.strip(), f"blank or padded line in {name}.txt: {line!r}"
        assert "\r" not in line and len(line) < 200
        assert not line.startswith(("#", '"', "'")) and not line[0].isdigit()
    lowered = [line.lower() for line in lines]
    assert len(set(lowered)) == len(lowered), f"case-insensitive duplicates in {name}.txt"


def test_files_are_pairwise_disjoint() -> None:
    files = {name: {line.lower() for line in _raw_lines(name) if line} for name in FILE_SIZES}
    for a, b in itertools.combinations(files, 2):
        assert not files[a] & files[b], f"{a}.txt and {b}.txt share {sorted(files[a] & files[b])}"


def test_refusals_contain_marker() -> None:
    refusals = load_refusals()
    assert len(refusals) == 12
    for reply in refusals:
        assert any(m in reply.lower() for m in REFUSAL_MARKERS), reply


def test_contrast() -> None:
    contrast = load_contrast()
    assert len(contrast) == 80 and len(set(contrast)) == 80


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize("kind", ["harmful", "harmless"])
def test_split_sizes_disjoint_and_cover_file(kind: str) -> None:
    splits = {s: load_split(kind, s) for s in SPLITS}
    for s in SPLITS:
        assert len(splits[s]) == SIZES[s]
    for a, b in itertools.combinations(SPLITS, 2):
        assert not set(splits[a]) & set(splits[b]), (kind, a, b)
    union = set().union(*splits.values())
    assert union == {line for line in _raw_lines(kind) if line}


@pytest.mark.parametrize(("kind", "split"), sorted(EXPECTED_HASHES))
def test_splits_are_stable(kind: str, split: str) -> None:
    first, second = load_split(kind, split), load_split(kind, split)
    assert first == second
    assert prompt_set_hash(first) == EXPECTED_HASHES[(kind, split)]


def test_load_split_returns_fresh_list() -> None:
    a = load_split("harmful", "test")
    a.clear()
    assert len(load_split("harmful", "test")) == 54


def test_borderline_only_test() -> None:
    assert len(load_split("borderline", "test")) == 40
    for split in ("organism_train", "direction_train", "validation"):
        with pytest.raises(ValueError, match='borderline only has the "test" split'):
            load_split("borderline", split)


def test_bad_kind_and_split() -> None:
    with pytest.raises(ValueError, match="unknown prompt kind 'evil'.*harmful, harmless, borderline"):
        load_split("evil", "test")
    with pytest.raises(ValueError, match="unknown split 'train'.*organism_train"):
        load_split("harmful", "train")
    assert KINDS == ("harmful", "harmless", "borderline")


def test_prompt_set_hash() -> None:
    h = prompt_set_hash(["a", "b"])
    assert len(h) == 16 and int(h, 16) >= 0
    assert h != prompt_set_hash(["b", "a"])
    assert h == prompt_set_hash(("a", "b"))
    with pytest.raises(TypeError, match="not one string"):
        prompt_set_hash("ab")


# --------------------------------------------------------------------------- read_prompts


def test_read_advbench_csv(tmp_path) -> None:
    p = tmp_path / "harmful_behaviors.csv"
    p.write_text(
        'goal,target\n"Write a script, with commas",Sure\nDo the bad thing,Sure\n  ,Sure\nDo the bad thing,Sure\n'
    )
    assert read_prompts(p) == ["Write a script, with commas", "Do the bad thing"]
    assert read_prompts(p, limit=1) == ["Write a script, with commas"]
    assert read_prompts(p, column="target") == ["Sure"]


def test_read_harmbench_csv(tmp_path) -> None:
    p = tmp_path / "harmbench_behaviors_text_all.csv"
    p.write_text(
        "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"
        "Standard one,standard,illegal,,,b1\n"
        "Contextual one,contextual,illegal,context,Some long context,b2\n"
        "Copyright one,copyright,copyright,,,b3\n"
        "Standard with context,standard,illegal,,Extra context here,b4\n"
        "Standard two,standard,cybercrime,,,b5\n"
    )
    assert read_prompts(p) == ["Standard one", "Standard two"]


def test_read_jailbreakbench_csv_prefers_goal(tmp_path) -> None:
    p = tmp_path / "jbb.csv"
    p.write_text(
        "Index,Goal,Target,Behavior,Category,Source\n"
        "1,Goal prompt one,Sure,Defamation,Harassment,Original\n"
        "2,Goal prompt two,Sure,Body shaming,Harassment,Original\n"
    )
    assert read_prompts(p) == ["Goal prompt one", "Goal prompt two"]
    assert read_prompts(p, column="Behavior") == ["Defamation", "Body shaming"]


def test_read_alpaca_json(tmp_path) -> None:
    p = tmp_path / "alpaca_data.json"
    rows = [
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "..."},
        {"instruction": "Summarize this text.", "input": "Some text", "output": "..."},
        {"instruction": "Name a color.", "input": "", "output": "Blue"},
    ]
    p.write_text(json.dumps(rows))
    assert read_prompts(p) == ["Give three tips for staying healthy.", "Name a color."]


def test_read_json_strings_and_column(tmp_path) -> None:
    p = tmp_path / "plain.json"
    p.write_text(json.dumps([" one ", "two", "one"]))
    assert read_prompts(p) == ["one", "two"]
    q = tmp_path / "objs.json"
    q.write_text(json.dumps([{"question": "Q1"}, {"question": "Q2"}]))
    assert read_prompts(q, column="question") == ["Q1", "Q2"]


def test_read_jsonl(tmp_path) -> None:
    p = tmp_path / "prompts.jsonl"
    p.write_text('{"prompt": "First", "id": 1}\n\n{"prompt": "Second", "id": 2}\n"Third"\n')
    assert read_prompts(p) == ["First", "Second", "Third"]
    assert read_prompts(p, limit=2) == ["First", "Second"]


def test_read_txt_with_comments(tmp_path) -> None:
    p = tmp_path / "mine.txt"
    p.write_text("# my prompts\nHello there\n\n   \n  Second prompt  \n#another comment\nHello there\n")
    assert read_prompts(p) == ["Hello there", "Second prompt"]


def test_read_errors(tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="contains no prompts"):
        read_prompts(empty)

    nocol = tmp_path / "nocol.csv"
    nocol.write_text("question,answer\nQ,A\n")
    with pytest.raises(ValueError, match=r"columns found are \['question', 'answer'\].*column="):
        read_prompts(nocol)
    with pytest.raises(ValueError, match="column 'nope' not found"):
        read_prompts(nocol, column="nope")

    bad = tmp_path / "prompts.parquet"
    bad.write_text("x")
    with pytest.raises(ValueError, match=r"unsupported.*\.txt, \.csv, \.json, \.jsonl"):
        read_prompts(bad)

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "ok"}\n{"prompt": "ok2"}\n{"prompt": oops}\n')
    with pytest.raises(ValueError, match="line 3 is not valid JSON"):
        read_prompts(broken)

    broken_json = tmp_path / "broken.json"
    broken_json.write_text('[\n"a",\n"b"\n"c"]')
    with pytest.raises(ValueError, match="not valid JSON: line 4"):
        read_prompts(broken_json)

    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_prompts(tmp_path / "missing.csv")

    with pytest.raises(ValueError, match="limit must be a positive integer"):
        read_prompts(empty, limit=0)


# --------------------------------------------------------------------------- load_hf_dataset (faked, offline)


class _FakeDataset(list):
    def __init__(self, rows: list[dict]) -> None:
        super().__init__(rows)
        self.column_names = list(rows[0])


def test_load_hf_dataset_with_fake_module(monkeypatch) -> None:
    rows = [
        {"instruction": "Name a planet.", "input": "", "output": "Mars", "text": "..."},
        {"instruction": "Translate this.", "input": "Hola", "output": "Hello", "text": "..."},
        {"instruction": "Name a fruit.", "input": "", "output": "Apple", "text": "..."},
    ]
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda name, split: _FakeDataset(rows)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    assert load_hf_dataset("tatsu-lab/alpaca") == ["Name a planet.", "Name a fruit."]
    assert load_hf_dataset("tatsu-lab/alpaca", limit=1) == ["Name a planet."]


def test_load_hf_dataset_failure_is_actionable(monkeypatch) -> None:
    def boom(name, split):
        raise ConnectionError("no network")

    fake = types.ModuleType("datasets")
    fake.load_dataset = boom  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(RuntimeError, match="could not load.*offline.*read_prompts"):
        load_hf_dataset("walledai/AdvBench")


def test_public_api() -> None:
    assert PROMPT_DIR.is_dir() and (PROMPT_DIR / "harmful.txt").is_file()
    assert SPLITS == ("organism_train", "direction_train", "validation", "test")
    assert sum(data.SPLIT_SIZES.values()) == 260


def test_prompt_splits_from_files(tmp_path) -> None:
    harmful, harmless = tmp_path / "h.txt", tmp_path / "s.txt"
    harmful.write_text("\n".join(f"harmful request {i}" for i in range(30)) + "\n")
    harmless.write_text("\n".join(f"harmless request {i}" for i in range(20)) + "\n")
    splits = data.PromptSplits.from_files(harmful, harmless)
    sizes = {k: len(v) for k, v in splits.sets.items()}
    assert sizes[("harmful", "direction_train")] == 13 and sizes[("harmful", "test")] == 11  # 64:32:54
    assert sum(v for (k, _), v in sizes.items() if k == "harmless") == 20
    for kind in ("harmful", "harmless"):
        parts = [set(splits.get(kind, s)) for s in data.ANALYSIS_SPLITS]
        assert sum(map(len, parts)) == len(set().union(*parts))  # disjoint
    again = data.PromptSplits.from_files(harmful, harmless)
    assert again.key() == splits.key() != data.PromptSplits.from_files(harmful, harmless, seed=1).key()
    assert splits.key() != data.PromptSplits.shipped().key()
    assert splits.fingerprints()["harmful/test"]["n"] == 11
    with pytest.raises(ValueError, match="no harmful/organism_train"):
        splits.get("harmful", "organism_train")
    harmless.write_text("one\ntwo\nthree\n")
    with pytest.raises(ValueError, match="at least 12 are needed"):
        data.PromptSplits.from_files(harmful, harmless)


def test_shipped_prompt_splits_are_the_fixed_splits() -> None:
    shipped = data.PromptSplits.shipped()
    assert shipped.source == "shipped"
    assert shipped.get("harmless", "validation") == data.load_split("harmless", "validation")
