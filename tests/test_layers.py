"""The package's import graph, read off every module's AST (imports inside functions included): no cycle, and no
arrow from a layer up to one above it (ARCHITECTURE.md: models/ is the ground floor beside checkpoint and errors)."""

import ast
from pathlib import Path
from typing import Dict, List, Set

import t2t_vit

PACKAGE = Path(t2t_vit.__file__).parent
# Each module may import its own layer and those below. The package's __init__ (public names, lazy) is outside.
LAYERS = {
    "errors": 0,
    "config_keys": 0,
    "config": 0,
    "device": 0,
    "checkpoint": 0,
    "hub": 0,
    "models": 1,
    "factory": 2,
    "pretrained": 2,
    "dense": 2,
    "data": 3,
    "training": 4,
    "deploy": 5,
    "study": 6,
    "cli": 7,
    "__main__": 7,
}
GROUND = {"t2t_vit.errors", "t2t_vit.checkpoint"}  # all that models/ may import from outside itself


def _modules() -> Dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["t2t_vit", *path.relative_to(PACKAGE).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> Dict[str, Set[str]]:
    """module -> the package's modules it imports (`from .a import b` names module a.b if there is one, else a)."""
    modules = _modules()
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import t2t_vit.models.kernels` style: the deepest module
                    target = target.rpartition(".")[0]
                if target.startswith("t2t_vit") and target != name:
                    edges.add(target)
    return graph


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle through each strongly connected component that has one (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[1]]


def test_the_graph_sees_deferred_imports():
    graph = import_graph()
    assert "t2t_vit.training.run" in graph["t2t_vit.cli.train"]  # imported inside the command's function only
    assert "t2t_vit.models.checkpoint_filter" in graph["t2t_vit.models.vit"]


def test_no_import_cycle():
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_arrow_runs_up():
    up = [
        f"{a} -> {b}"
        for a, targets in import_graph().items()
        if a != "t2t_vit"
        for b in targets
        if b != "t2t_vit" and _layer(b) > _layer(a)
    ]
    assert up == []


def test_models_import_only_the_ground_floor():
    outside = [
        f"{a} -> {b}"
        for a, targets in import_graph().items()
        if a.startswith("t2t_vit.models")
        for b in targets
        if not b.startswith("t2t_vit.models") and b not in GROUND
    ]
    assert outside == []


def test_every_module_has_a_layer():
    assert {m.split(".")[1] for m in _modules() if m != "t2t_vit"} <= set(LAYERS)
