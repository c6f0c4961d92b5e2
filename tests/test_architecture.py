"""The house rules of docs/architecture.md, checked on the source (no import is executed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "crossgate"
ENGINE = {"config", "gate", "layouts", "hooks", "pipeline", "schedule", "tensors", "adapters"}
NOT_FOR_ENGINE = {"tools", "cli", "app", "integrations", "testing", "embedded"}


def _module_name(path: Path) -> str:
    parts = ["crossgate", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every runtime import, top-level or inside functions."""
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return [(m, names) for m, names in found if m == "crossgate" or m.startswith("crossgate.")]


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "crossgate-shapes" not in str(p)}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("module", [m for m in MODULES if _room(m) in ENGINE])
def test_engine_imports_no_tool(module):
    bad = [m for m, _ in _imports(MODULES[module]) if _room(m) in NOT_FOR_ENGINE]
    assert not bad, f"{module} (engine) imports {bad}"


def test_no_private_name_is_imported_across_modules():
    bad = []
    for module, path in MODULES.items():
        for source, names in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and source != module:
                bad.append(f"{module} imports {private} from {source}")
    assert not bad, "\n".join(bad)


def test_no_command_imports_a_sibling_command():
    allowed = {"crossgate.cli", "crossgate.cli.common"}
    bad = [
        f"{module} imports {source}"
        for module, path in MODULES.items()
        if module.startswith("crossgate.cli.")
        for source, _ in _imports(path)
        if source.startswith("crossgate.cli") and source not in allowed and source != module
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = set()
        for source, names in _imports(path):
            # `from crossgate.pkg import sub` imports the submodule when `sub` is one
            targets |= {f"{source}.{n}" for n in names if f"{source}.{n}" in MODULES} or {source}
        graph[module] = {t for t in targets if t in MODULES and t != module}

    assert "crossgate.hooks" in graph["crossgate.pipeline"]  # the graph is really read
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    # a package __init__ re-exporting its submodules is not a cycle unless a submodule imports it back
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
