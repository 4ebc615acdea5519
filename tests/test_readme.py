"""Every ```python block of the README runs as written (slow: they load the organism); the fast
tests check that each parses, that the main snippet's prompt is a held-out harmful one, and that
the README's statements about the graded angle map and the own-prompt splits match the committed
tables and the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
GRADED_TABLES = ROOT / "figures" / "organism-graded" / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)
# blocks that load a model other than the embedded ones need the hub (and, as written, a GPU)
EMBEDDED = re.compile(r'load_model\("(organism|smollm2-135m-instruct)"')


def _needs_hub(block: str) -> bool:
    return "load_model(" in block and not EMBEDDED.search(block)


def _main_snippet() -> str:
    (block,) = [b for b in BLOCKS if "ablation_hooks" in b]
    return block


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3
    assert any(not _needs_hub(b) for b in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_parses(index):
    ast.parse(BLOCKS[index], filename=f"README.md python block {index}")


def test_main_snippet_prompt_is_a_held_out_harmful_prompt():
    from workbench import data

    (prompt,) = re.findall(r'^prompt = "(.*?)"', _main_snippet(), flags=re.M)
    assert prompt in data.load_split("harmful", "test")


def _prose() -> str:
    """The README with line breaks and indents folded into single spaces."""
    return re.sub(r"\s+", " ", README.read_text(encoding="utf-8"))


def _graded_refusal() -> dict[str, dict[int, int]]:
    """{set: {angle: refusal %}} from the committed graded angle-map tables."""
    out: dict[str, dict[int, int]] = {}
    text = GRADED_TABLES.read_text(encoding="utf-8")
    for name, table in re.findall(r"Labels by steering angle, (\w+) prompts:\n\n(.*?)(?:\n\n|\Z)", text, flags=re.S):
        rows = re.findall(r"^\| (\d+)° \| \d+ \| (\d+)% \|", table, flags=re.M)
        out[name] = {int(angle): int(pct) for angle, pct in rows}
    return out


def test_graded_refusal_statement_matches_the_committed_tables():
    refusal, prose = _graded_refusal(), _prose()
    assert set(refusal) == {"harmful", "harmless", "warning", "redirect"} and all(
        len(v) == 24 for v in refusal.values()
    )
    lo, hi, low_pct, high_pct = map(
        int, re.search(r"Refusal covers (\d+)°–(\d+)° for every set \((\d+)–(\d+) %\)", prose).groups()
    )
    inside = [pct for per_angle in refusal.values() for angle, pct in per_angle.items() if lo <= angle <= hi]
    assert (min(inside), max(inside)) == (low_pct, high_pct)
    stated = re.findall(r"at (\d+)°: harmful (\d+) %, harmless (\d+) %, warning (\d+) %, redirect (\d+) %", prose)
    assert {int(angle) for angle, *_ in stated} == {0, 90, 315}
    for angle, *pcts in stated:
        got = [refusal[s][int(angle)] for s in ("harmful", "harmless", "warning", "redirect")]
        assert got == list(map(int, pcts)), (angle, got, pcts)


def test_own_prompt_split_sizes_are_as_stated(tmp_path):
    from workbench import data

    prose = _prose()
    assert "in the proportions 64 : 32 : 54" in prose
    for n, sizes in re.findall(r"(\d+) prompts give (\d+ : \d+ : \d+)", prose) + re.findall(
        r"the examples' (\d+) give (\d+ : \d+ : \d+)", prose
    ):
        for kind in ("harmful", "harmless"):
            (tmp_path / f"{kind}.txt").write_text("\n".join(f"{kind} prompt {i}" for i in range(int(n))))
        splits = data.PromptSplits.from_files(tmp_path / "harmful.txt", tmp_path / "harmless.txt")
        assert " : ".join(str(len(splits.get("harmful", s))) for s in data.ANALYSIS_SPLITS) == sizes, n


def test_select_json_is_said_to_give_each_choice_and_the_help_says_proportions(capsys):
    from workbench.cli import build_parser

    (select_line,) = [
        line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("workbench select")
    ]
    assert "each method's choice" in select_line and "every candidate" not in select_line
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    assert "in the proportions 64:32:54" in re.sub(r"\s+", " ", capsys.readouterr().out)


@pytest.fixture(scope="module")
def organism_available():
    try:
        from workbench.models import load_model

        load_model("organism")
    except Exception as exc:  # no base weights offline, no cache, ...: nothing to run the README on
        pytest.skip(f"the organism cannot be loaded here: {type(exc).__name__}: {exc}")


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, organism_available, capsys, monkeypatch):
    block = BLOCKS[index]
    monkeypatch.chdir(ROOT)  # the own-prompts block reads examples/ relative to the repository root
    if _needs_hub(block):
        pytest.skip("loads a hub model (and, as written, a GPU): not runnable offline")
    exec(compile(block, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    if "ablation_hooks" in block:  # the main snippet: a refusal, and its removal
        out = capsys.readouterr().out
        assert re.search(r"^unsteered \[refusal\] ", out, flags=re.M), out
        assert re.search(r"^ablated +\[(?!refusal\])", out, flags=re.M), out


@pytest.mark.slow
def test_every_candidates_statistics_are_the_selection_table(organism_available):
    """What the README says in place of `select --json` giving every candidate: the table has them."""
    from workbench.models import load_model
    from workbench.pipeline import Analysis

    table = Analysis(load_model("organism")).selection.table
    n = int(re.search(r"Every candidate's statistics \((\d+) on the organism", _prose()).group(1))
    assert len(table) == n == table.site.nunique() * table.layer.nunique() * table.pos.nunique()
    assert {"norm", "max_sim", "auc", "cohens_d", "bypass", "induce", "kl"} <= set(table.columns)
