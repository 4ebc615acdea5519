"""The package's layering: each module imports only from its own floor or the floors below, with no
cycles (function-level imports included). Data flows one way: prompts → activations → directions /
planes → interventions → generations → scores → figures."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"

# Floors, bottom to top (README, "Layout"). A module may import from its own floor (without cycles)
# and from any floor below it; never from a floor above.
FLOORS: list[tuple[str, ...]] = [
    # vocabulary, plumbing
    ("workbench", "sites", "artifacts", "fingerprints", "config", "data", "stages", "families", "stats"),
    (
        "fastpath",
        "fastpath.attention",
        "fastpath.layout",
        "fastpath.unembed",
        "fastpath.gguf",
        "hub",
        "gguf_export",
        "organism",
        "models",
        "chat",
    ),  # models
    ("kv", "activations", "generation"),  # running the model
    ("steering_math", "metrics", "labels", "judges", "directions"),  # math and measures
    ("planes", "interventions", "intervention", "selection", "refusal_tokens", "controls", "stability"),  # analysis
    ("experiments", "pipeline", "provenance", "damage", "export"),  # experiments; export: edited models out
    (
        "figures",
        "figures.style",
        "figures.export",
        "figures.drawn",
        "figures.interventions",
        "figures.selection",
        "figures.planes",
        "figures.behaviours",
        "control_numbers",
        "figures.stability",
        "report",
        "run",
        "training",
        "doctor",
        "cli",
    ),  # presentation
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}
# the command line imports per subcommand, and the intervention registry loads its hook factories (torch,
# TransformerLens: seconds) on first use, so `--help` and bad arguments answer at once
LAZY_OK = {"cli", "intervention", "export"}  # export: workbench.gguf_export loads for the GGUF formats only


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts) or "workbench"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported workbench module, whether the import sits inside a function) for each import."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "workbench":
        package = []
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - (child.level - 1)] if child.level > 1 else package
                    target = ".".join([*base, *(child.module.split(".") if child.module else [])])
                elif child.module and child.module.startswith("workbench"):
                    target = child.module.removeprefix("workbench").lstrip(".")
                else:
                    target = None
                if target is not None:
                    # `from . import x` / `from .fastpath import attention` import submodules
                    for alias in child.names:
                        sub = f"{target}.{alias.name}" if target else alias.name
                        found.append((sub if sub in FLOOR else (target or "workbench"), nested))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("workbench."):
                        found.append((alias.name.removeprefix("workbench."), nested))
            visit(child, nested)

    visit(tree, False)
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_floor():
    assert sorted(set(MODULES) - set(FLOOR)) == [], "add new modules to FLOORS (and the README's layout table)"
    assert sorted(set(FLOOR) - set(MODULES)) == [], "FLOORS names modules that do not exist"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_import(module):
    upward = [
        (target, FLOORS[FLOOR[target]][0]) for target, _ in _imports(MODULES[module]) if FLOOR[target] > FLOOR[module]
    ]
    assert upward == [], f"{module} (floor {FLOOR[module]}) imports from above: {upward}"


@pytest.mark.parametrize("module", sorted(set(MODULES) - LAZY_OK))
def test_no_function_level_workbench_imports(module):
    # without cycles there is nothing to break: an import inside a function only hides a dependency
    lazy = sorted({target for target, nested in _imports(MODULES[module]) if nested})
    assert lazy == [], f"{module} imports {lazy} inside functions; import them at the top"


def test_no_import_cycles():
    graph = {m: {t for t, _ in _imports(p) if t != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def walk(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (cycle := walk(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = walk(start, [])
            assert cycle is None, f"import cycle: {' → '.join(cycle)}"


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    # the checker itself must not be blind: a known upward, lazy, relative import is found
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from .figures import save_figure\n    from . import cli\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path
    try:
        assert _imports(src) == [("figures", True), ("cli", True)]
    finally:
        PACKAGE = saved


MAX_FUNCTION_LINES = 60  # from `def` to the last line, docstring included: each readable in one screen


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES  # type: ignore[operator]
    ]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_is_over_60_lines(module):
    assert _long_functions(MODULES[module]) == [], f"split into named helpers: {module}"


def test_the_length_check_sees_a_long_function(tmp_path):
    path = tmp_path / "long.py"
    path.write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES + "\n\ndef g():\n    return 1\n")
    assert _long_functions(path) == [f"f ({MAX_FUNCTION_LINES + 1} lines)"]
