"""The house rules of docs/architecture.md, checked on the source (no import is executed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "crossgate"
SCRIPTS = ROOT / "scripts"
ENGINE = {"config", "gate", "layouts", "hooks", "joint", "pipeline", "schedule", "tensors", "adapters"}
NOT_FOR_ENGINE = {"tools", "cli", "app", "integrations", "testing", "embedded", "loading", "images"}
# What the tools (tools/*, app, testing, integrations) may use of the engine: its public API, as
# docs/architecture.md lists it (module -> names; None: any public name).
ENGINE_API_FOR_TOOLS: dict[str, set[str] | None] = {
    "crossgate": None,
    "crossgate.adapters": None,
    "crossgate.adapters.support": None,
    "crossgate.config": None,
    "crossgate.tensors": None,
    "crossgate.schedule": None,
    "crossgate.gate": {"CallStats", "current_call", "gate_policy", "replay"},
    "crossgate.joint": {"joint_blocks"},
}


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


def _folder(module: str) -> str:
    """The room a module lives in, as a folder: the engine's modules are one room, the package's
    face (``crossgate/__init__``) another, every other top-level module or folder its own."""
    room = _room(module)
    return "engine" if room in ENGINE else room or "crossgate"


def _script_imports() -> dict[str, list[tuple[str, list[str]]]]:
    return {path.name: _imports(path) for path in sorted(SCRIPTS.glob("*.py"))}


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


def test_tools_use_the_engine_through_its_public_api():
    """The tools, the app, testing and the integrations import the engine modules (and names)
    docs/architecture.md lists, nothing deeper (hooks, pipeline, layouts stay the engine's own)."""
    bad = []
    for module, path in MODULES.items():
        if _room(module) in ENGINE or _room(module) in ("", "cli"):
            continue
        for source, names in _imports(path):
            if _room(source) not in ENGINE:
                continue
            allowed = ENGINE_API_FOR_TOOLS.get(source, set())
            if allowed is not None and (not names or set(names) - allowed):
                bad.append(
                    f"{module} imports {sorted(set(names) - (allowed or set())) or source} from {source}"
                )
    assert not bad, "\n".join(bad)


def _folder_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(_folder(module), set())
        for source, names in _imports(path):
            targets = {f"{source}.{n}" for n in names if f"{source}.{n}" in MODULES} or {source}
            edges |= {_folder(t) for t in targets if t in MODULES}
    return {room: edges - {room} for room, edges in graph.items()}


def _folder_loops(graph: dict[str, set[str]]) -> list[str]:
    """Pairs of folders that reach each other (a loop between rooms, through any modules)."""

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reachable = {room: reach(room) for room in graph}
    return sorted(
        f"{a} <-> {b}" for a in graph for b in reachable[a] if a < b and a in reachable.get(b, set())
    )


def test_no_loops_between_folders():
    """Rooms import downwards only: no two folders reach each other (app <-> cli and testing <->
    tools were such loops, each through modules that formed no cycle of their own)."""
    graph = _folder_graph(MODULES)
    assert {"app", "cli", "tools", "testing", "loading"} <= set(graph)
    loops = _folder_loops(graph)
    assert not loops, loops


def test_folder_loop_check_catches_the_old_loops():
    """The check above sees a loop through modules that are not themselves a cycle."""
    graph = {
        "app": {"cli"},
        "cli": {"app"},
        "testing": {"tools"},
        "tools": {"testing", "engine"},
        "engine": set(),
    }
    assert _folder_loops(graph) == ["app <-> cli", "testing <-> tools"]


def test_scripts_use_public_names_and_the_package_never_imports_scripts_or_tests():
    """scripts/ are users of the package: public names only. Test code (the ComfyUI harness) lives
    under tests/; nothing in src imports scripts/ or tests/."""
    bad = []
    for script, imports in _script_imports().items():
        for source, names in imports:
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private_module = [part for part in source.split(".")[1:] if part.startswith("_")]
            if private or private_module:
                bad.append(f"scripts/{script} imports {private or source} from {source}")
    assert not bad, "\n".join(bad)
    harness = [p.name for p in SCRIPTS.glob("*.py") if "harness" in p.name or "checks" in p.name]
    assert not harness, f"test code in scripts/: {harness} (it belongs under tests/)"
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top = node.module.split(".")[0]
            elif isinstance(node, ast.Import):
                top = node.names[0].name.split(".")[0]
            else:
                continue
            assert top not in ("scripts", "tests", "families", "conftest"), f"{module} imports {top}"


def test_architecture_doc_lists_every_module_and_script():
    """docs/architecture.md names every module of the package and every script."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = [p.name for p in sorted(SCRIPTS.iterdir()) if p.suffix in (".py", ".sh") and p.name not in doc]
    for module in MODULES:
        name = module.split(".")[-1]
        if name in ("crossgate", "__main__") or module.endswith(".__main__"):
            continue
        if name not in doc:
            missing.append(module)
    assert not missing, f"docs/architecture.md does not mention: {missing}"
