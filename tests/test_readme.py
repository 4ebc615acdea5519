"""Every ```python block of the README runs as written (slow: they load the organism); the fast
tests check that each parses and that the main snippet's prompt is a held-out harmful one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
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


@pytest.fixture(scope="module")
def organism_available():
    try:
        from workbench.models import load_model

        load_model("organism")
    except Exception as exc:  # no base weights offline, no cache, ...: nothing to run the README on
        pytest.skip(f"the organism cannot be loaded here: {type(exc).__name__}: {exc}")


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, organism_available, capsys):
    block = BLOCKS[index]
    if _needs_hub(block):
        pytest.skip("loads a hub model (and, as written, a GPU): not runnable offline")
    exec(compile(block, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    if "ablation_hooks" in block:  # the main snippet: a refusal, and its removal
        out = capsys.readouterr().out
        assert re.search(r"^unsteered \[refusal\] ", out, flags=re.M), out
        assert re.search(r"^ablated +\[(?!refusal\])", out, flags=re.M), out
