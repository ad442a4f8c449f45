"""The layout's rules (docs/architecture.md), read from the source: every import statement of the shipped
packages, function-local ones included, as edges between this project's modules.

* no import cycles;
* the client imports nothing of the server (nor torch), the serving path nothing of training, the model
  nothing of the service, bulk inference nothing of the service or training;
* nothing here uses a module name from before the layout (model/_moved.py keeps those for users only).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from model._moved import MOVED
from tests.helpers import REPO

# Package → the folder its top level lives in.
ROOTS = {
    "model": REPO / "model",
    "service": REPO / "service",
    "training": REPO / "training",
    "bulk": REPO / "bulk",
    "centermask_client": REPO / "clients" / "python" / "centermask_client",
}


def module_name(package: str, path: Path) -> str:
    relative = path.relative_to(ROOTS[package]).with_suffix("")
    parts = [package, *relative.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {
        module_name(package, path): path
        for package, root in ROOTS.items()
        for path in sorted(root.rglob("*.py"))
    }


def imported(name: str, path: Path) -> Iterator[str]:
    """Every module of this project that the file imports, anywhere in it."""
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from a import b` imports a, and a.b when that is a module.
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            if target in known or new_home(target) is not None:
                yield target


def new_home(name: str) -> str | None:
    for old, present in MOVED.items():
        if name == old or name.startswith(old + "."):
            return present
    return None


@cache
def graph() -> dict[str, set[str]]:
    return {name: {t for t in imported(name, path) if t != name} for name, path in modules().items()}


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module: each is at least one import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_the_packages() -> None:
    edges = graph()
    assert {
        "model.inference.predictor",
        "service.app",
        "training.train",
        "bulk.pipeline",
        "centermask_client.client",
    } <= set(edges)
    # Function-local imports count: model.inference.load imports the onnxruntime engine inside a function.
    assert "model.onnx.engine" in edges["model.inference.load"]


def test_there_are_no_import_cycles() -> None:
    assert strongly_connected(graph()) == []


def test_a_cycle_would_be_found() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("centermask_client", ("model", "service", "training", "bulk")),
        ("model", ("service", "training", "bulk")),
        ("service", ("training", "bulk")),
        ("bulk", ("service", "training")),
    ],
)
def test_the_layers_import_downwards_only(importer: str, forbidden: tuple[str, ...]) -> None:
    offending = [
        f"{name} imports {target}"
        for name, targets in graph().items()
        if name.split(".")[0] == importer
        for target in targets
        if target.split(".")[0] in forbidden
    ]
    assert offending == []


def test_no_module_uses_a_name_from_before_the_layout() -> None:
    offending = [
        f"{name} imports {target} (now {new_home(target)})"
        for name, targets in graph().items()
        for target in targets
        if target not in modules() and new_home(target) is not None
    ]
    assert offending == []


def test_the_client_needs_no_torch() -> None:
    third_party = set()
    for name, path in modules().items():
        if name.startswith("centermask_client"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    third_party |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    third_party.add(node.module.split(".")[0])
    assert not third_party & {"torch", "torchvision", "fastapi", "starlette", "cv2", "pycocotools"}
