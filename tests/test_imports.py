"""The package's modules import each other without a cycle (module-level imports)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "marionette"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports at module level (not under TYPE_CHECKING,
    not inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else node.module or base
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                module = (
                    candidate
                    if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists()
                    or (PACKAGE.parent / candidate.replace(".", "/")).is_dir()
                    else target
                )
                found.add(module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m and m.startswith("marionette")} - {name}


def test_no_import_cycle():
    graph = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for child in graph.get(node, ()):
            # a submodule import goes through its package's __init__ first; a package's
            # __init__ importing its own submodules is not a cycle
            if (
                state.get(child) == 1
                and not child.startswith(node + ".")
                and not node.startswith(child + ".")
            ):
                raise AssertionError(" -> ".join([*path, node, child]))
            if child not in state:
                visit(child, [*path, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
    assert len(graph) > 40


def test_core_imports_nothing_outside_itself():
    for path in (PACKAGE / "core").glob("*.py"):
        outside = {m for m in imports(path) if not m.startswith("marionette.core")}
        assert not outside, (path.name, outside)
