"""The tree shows the architecture: these rules keep it that way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bert4rec"
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def importers_of(*roots: str) -> set[str]:
    return {name for name, path in modules().items()
            if any(i == root or i.startswith(root + ".") for i in imported(path) for root in roots)}


def test_only_the_model_package_imports_tensorflow():
    outside = {m for m in importers_of("tensorflow", "keras") if not m.startswith("bert4rec.model")}
    assert not outside


def test_only_the_tracking_module_imports_mlflow():
    assert importers_of("mlflow") <= {"bert4rec.workflow.tracking"}


def test_the_data_layer_and_data_stages_run_without_tensorflow():
    code = ("import sys, bert4rec.data.examples, bert4rec.data.readers, bert4rec.data.sequences, "
            "bert4rec.stages.raw, bert4rec.stages.tfrecord, bert4rec.tools.synthetic; "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_no_import_cycles():
    known = modules()
    graph = {name: {i for i in imported(path) if i in known and i != name} for name, path in known.items()}
    for name in graph:  # a package's __init__ is not an edge to its own modules
        graph[name] = {i for i in graph[name] if not name.startswith(i + ".")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(trail + [node, nxt])
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_no_function_over_sixty_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not long


def test_data_layer_never_reaches_for_the_model_or_workflow():
    data = {m for m in modules() if m.startswith("bert4rec.data")}
    offenders = {m for m in data if any(i.startswith(("bert4rec.model", "bert4rec.workflow", "bert4rec.stages"))
                                        for i in imported(modules()[m]))}
    assert not offenders


def test_no_module_shadows_the_standard_library():
    # A worker process started from a folder of the package puts that folder first on its import
    # path; a module there named like a standard one (the old `secrets.py`) then replaces it.
    # The `test` stage's module shares its name with CPython's own regression suite, which
    # nothing imports at run time.
    shadowing = {name for name in modules() if name.rsplit(".", 1)[-1] in sys.stdlib_module_names}
    assert shadowing <= {"bert4rec.stages.test"}
