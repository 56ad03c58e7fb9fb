"""The package's layers (docs/architecture.md): imports go only downward, library
mode and ``gapless run`` never import each other, and no module imports itself
back through others."""

from __future__ import annotations

import ast
from pathlib import Path

import gapless

PACKAGE = Path(gapless.__file__).parent

# Rank of each top-level part; a module may import only parts of a lower rank or
# its own part. Parts of equal rank but different names may not import each other.
RANKS = {
    "errors": 0,
    "_version": 0,
    "hooks": 1,
    "proc": 2,
    "sockets": 3,
    "systemd": 4,
    "library": 5,
    "run": 5,
    "cli_args": 6,  # argument types shared by the CLIs of run and serving
    "integrations": 6,
    "settings_file": 6,  # reading and writing a config file's table
    "settings": 6.5,  # settings of run and serve from the environment and a file
    "serving": 7,
    "bench": 8,
    "demo": 9,  # gapless demo is a bench run
    "testing": 9,  # gapless.testing.check_reloads is a bench run of the caller's app
    "cli": 10,
}
# The public API (lazy names) and the stable ``python -m`` entries sit on top.
ON_TOP = {"__init__", "__main__", "reexec", "serve_child"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (never run)."""
    found: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        found.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports when it runs, at any depth of its code."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    result = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                stem = ".".join([*base, node.module] if node.module else base)
            elif (node.module or "").startswith("gapless"):
                stem = (node.module or "").removeprefix("gapless").lstrip(".")
            else:
                continue
            for alias in node.names:  # "from . import x" may name a module
                dotted = f"{stem}.{alias.name}" if stem else alias.name
                targets.append(dotted if dotted in modules else stem)
        elif isinstance(node, ast.Import):
            targets = [
                a.name.removeprefix("gapless.") for a in node.names if a.name.startswith("gapless.")
            ]
        result.update(target for target in targets if target in modules and target != name)
    return result


def _part(module: str) -> str:
    return module.split(".")[0]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_part_of_the_package_has_a_rank() -> None:
    parts = {_part(name) for name in _modules()} - ON_TOP - {""}
    assert parts <= set(RANKS), f"give these a rank in RANKS: {sorted(parts - set(RANKS))}"


def test_imports_go_only_downward() -> None:
    upward = []
    for name, imported in _graph().items():
        if _part(name) in ON_TOP or name == "":
            continue
        for target in imported:
            mine, theirs = _part(name), _part(target)
            if theirs in ON_TOP or (mine != theirs and RANKS[theirs] >= RANKS[mine]):
                upward.append(f"{name} -> {target}")
    assert not upward, "imports that do not go downward:\n" + "\n".join(sorted(upward))


def test_library_mode_and_gapless_run_never_import_each_other() -> None:
    crossing = [
        f"{name} -> {target}"
        for name, imported in _graph().items()
        for target in imported
        if {_part(name), _part(target)} == {"library", "run"}
    ]
    assert not crossing


def test_no_import_circle() -> None:
    graph = _graph()
    circles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for target in graph.get(node, ()):
                if target == start:
                    circles.append(" -> ".join([*path, start]))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    assert not circles, "import circles:\n" + "\n".join(sorted(set(circles)))
