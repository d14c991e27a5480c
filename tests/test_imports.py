"""vchain's modules import one another without a circle, type-only imports included.

An import inside a function runs when the function does, so it is left out; every module-level import
counts, those under `if TYPE_CHECKING:` too (a circle there still ties the modules together for readers,
type checkers and documentation tools).
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module body, descending into `if`/`try` blocks but not into functions."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            found += _top_level_imports(node.body) + _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += _top_level_imports(block)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the vchain modules it imports at module level."""
    paths = {_module_name(p): p for p in (SOURCE / "vchain").rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])]
                )
            for alias in node.names:  # `from vchain import prompts` imports the module, not the package
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in paths else base)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_module_level_import_circle():
    graph = import_graph()
    assert {"vchain.interfaces", "vchain.backends.openai", "vchain.testing.openai_server"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_check_sees_type_only_imports_and_ignores_imports_in_functions(tmp_path, monkeypatch):
    package = tmp_path / "vchain"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vchain.b import B\n")
    (package / "b.py").write_text("from vchain import a\n\ndef late():\n    from vchain.c import C\n")
    (package / "c.py").write_text("import vchain.b\n")
    monkeypatch.setattr(f"{__name__}.SOURCE", tmp_path)
    graph = import_graph()
    assert graph == {"vchain": set(), "vchain.a": {"vchain.b"}, "vchain.b": {"vchain.a"}, "vchain.c": {"vchain.b"}}
    assert find_cycle(graph) == ["vchain.a", "vchain.b", "vchain.a"]


@pytest.mark.parametrize(
    ("old", "new", "name"),
    [
        ("vchain.backends.diffusers", "vchain.backends.diffusers_image", "DiffusersImageBackend"),
        ("vchain.backends._diffusers", "vchain.backends.diffusers_video", "DiffusersVideoGenerator"),
    ],
)
def test_a_renamed_module_still_imports_by_its_old_name_with_a_warning(old, new, name, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=f"{old} is now {new}"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
