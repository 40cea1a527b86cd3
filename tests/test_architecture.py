"""The layers import only downward (ARCHITECTURE.md): read every module's imports and check them."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    if module.startswith("metaspike.app") or module == "metaspike.__main__":  # python -m metaspike is the CLI
        return "app"
    if module == "bnn" or module.startswith("bnn."):
        return "bnn"
    if module.startswith("metaspike.snn"):
        return "snn"
    if module.startswith("metaspike.continual"):
        return "continual"
    if module == "metaspike.data":
        return "data"
    return "core"


ALLOWED = {
    "core": {"core"},
    "data": {"core", "data"},
    "continual": {"core", "data", "continual"},
    "snn": {"core", "snn"},
    "bnn": {"core", "data", "bnn"},
    "app": {"core", "data", "continual", "snn", "bnn", "app"},
}


def _imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, at the top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in ("metaspike", "bnn")}


def _graph() -> dict[str, set[str]]:
    files = [p for package in ("metaspike", "bnn") for p in (ROOT / package).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        # "from metaspike.rules import get_rule" names the module metaspike.rules, not metaspike.rules.get_rule
        graph[name] = {target for target in _imports(path) if target in modules and target != name}
    return graph


def test_every_import_goes_down_the_layers():
    wrong = []
    for module, targets in _graph().items():
        for target in targets:
            if target in ("metaspike", "bnn"):  # the package roots re-export their own layer
                target_layer = "core" if target == "metaspike" else "bnn"
            else:
                target_layer = _layer(target)
            if target_layer not in ALLOWED[_layer(module)]:
                wrong.append(f"{module} ({_layer(module)}) imports {target} ({target_layer})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle_between_modules():
    graph = _graph()
    # a package's __init__ re-exports its submodules, which import siblings through the package: not a cycle
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [node, nxt]) if nxt in trail else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from bnn import MLP\n")
    assert _imports(bad) == {"bnn", "bnn.MLP"}
    assert "bnn" not in ALLOWED[_layer("metaspike.snn.neurons")]
