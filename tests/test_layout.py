"""The package's structure, drawn from its own imports (every import, a function's too):
no circle, nothing below the entry points imports them or the settings, the environment
read in one place, no module over 600 lines."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "proactive_async"
ENTRY_POINTS = ("proactive_async.cli", "proactive_async.arq", "proactive_async.celery")
"""What assembles the rest: the command, the two engines. Nothing else imports them."""
MAY_IMPORT_SETTINGS = (*ENTRY_POINTS, "proactive_async.simulator", "proactive_async")
"""Settings are built above the library: the modules below take values."""


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The package's modules ``name`` imports, resolved; ``from . import x`` is ``x``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(part for part in (base, node.module) if part)
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            yield from subs
            if target in known and len(subs) < len(node.names):
                yield target


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {target for target in imports_of(name, path, known) if target != name}
        for name, path in known.items()
    }


def component(name: str) -> str:
    """``proactive_async.journal._sqlite`` -> ``proactive_async.journal``."""
    return ".".join(name.split(".")[:2])


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back_through_others() -> None:
    assert circles(graph()) == []


def test_no_component_imports_back_one_that_imports_it() -> None:
    edges: dict[str, set[str]] = {}
    for name, targets in graph().items():
        if name == "proactive_async":
            continue  # the root re-exports the public names of everything below
        for target in targets:
            if component(target) != component(name) and target != "proactive_async":
                edges.setdefault(component(name), set()).add(component(target))
    assert circles(edges) == []


def test_nothing_below_the_entry_points_imports_them() -> None:
    """The command runs the engines; nothing imports the command; the engines are
    imported by the command alone."""
    above = {
        "proactive_async.cli": set(),
        "proactive_async.arq": {"proactive_async.cli"},
        "proactive_async.celery": {"proactive_async.cli"},
    }
    offenders = [
        f"{name} -> {target}"
        for name, targets in graph().items()
        for target in targets
        if component(target) in ENTRY_POINTS
        and component(name) != component(target)
        and component(name) not in above[component(target)]
    ]
    assert offenders == []


def test_only_the_entry_points_import_the_settings() -> None:
    offenders = [
        name
        for name, targets in graph().items()
        if "proactive_async.settings" in targets and component(name) not in MAY_IMPORT_SETTINGS
    ]
    assert offenders == []


def test_the_environment_is_read_by_settings_and_the_clients_documented_defaults() -> None:
    readers = sorted(
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if "os.environ" in path.read_text() or "os.getenv" in path.read_text()
    )
    assert readers == ["_client.py", "settings.py"]
    client = (PACKAGE / "_client.py").read_text()
    assert client.count("os.environ") == 2  # PROACTIVE_BASE_URL and PROACTIVE_TOKEN
    writes = [
        path.name
        for path in PACKAGE.rglob("*.py")
        if "os.environ[" in path.read_text() or "os.putenv" in path.read_text()
    ]
    assert writes == []


def test_no_module_is_over_600_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: size for name, size in sizes.items() if size > 600} == {}


def test_the_check_sees_a_circle_and_an_upward_import() -> None:
    """The checks above can fail: a made-up graph with both faults."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert component("proactive_async.distributed._runner") == "proactive_async.distributed"
