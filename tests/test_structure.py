"""The package's structure: no import cycle anywhere, and every module imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "rediff"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in ast.walk(node):
                if hasattr(inner, "lineno"):
                    lines.add(inner.lineno)
    return lines


def _imports(module: str) -> set[str]:
    """The rediff modules ``module`` imports anywhere in its text (function-level imports
    included; annotation-only imports excluded). ``from X import Y`` names X.Y when that is
    a module, else X."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "rediff"}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: relative import (rediff imports absolutely)"
            base = node.module or ""
            if base.split(".")[0] != "rediff":
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in MODULES else base)
    return found - {module}


def test_the_import_graph_has_no_cycle():
    """Depth-first search over every module's imports: a back edge is a cycle, reported as
    the chain of modules."""
    graph = {m: _imports(m) for m in MODULES}
    state: dict[str, int] = {}

    def visit(module: str, chain: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(graph.get(module, ())):
            if state.get(nxt) == 1:
                cycle = [*chain[chain.index(nxt) :], nxt] if nxt in chain else [module, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*chain, nxt])
        state[module] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [module])
    assert len(MODULES) > 40 and graph["rediff.evaluation"] >= {"rediff.runs"}


def test_the_run_layer_sits_below_training_and_evaluation():
    graph = {m: _imports(m) for m in MODULES}
    below = {m for m in MODULES if m.startswith("rediff.runs")}
    for module in below:
        above = {
            i
            for i in graph[module]
            if i.startswith(("rediff.training", "rediff.evaluation", "rediff.cli", "rediff.demo"))
        }
        assert not above, (module, above)


def test_every_module_imports_on_its_own():
    """Each module imported first in a fresh set of rediff modules (torch stays loaded, so
    one interpreter does it quickly): an import that only works after another is a bug."""
    script = (
        "import importlib, sys, torch\n"
        f"for name in {[m for m in MODULES if not m.endswith('__main__')]!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'rediff' or m.startswith('rediff.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_source_file_is_ignored_by_git():
    """A .gitignore pattern must not hide package files (``runs/`` once hid rediff.runs)."""
    root = SRC.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(root)) for p in PACKAGE.rglob("*") if p.suffix in (".py", ".toml")]
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", *files], cwd=root, capture_output=True, text=True
    )
    assert result.stdout == "", result.stdout
