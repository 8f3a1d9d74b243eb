"""The floors of docs/architecture.md: the ground floor imports no stage, no stage imports another, and the
products beside the stages (boundaries) import only the ground floor."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("auxlabels", "pretrain", "finetune")
BESIDE = ("boundaries",)  # products beside the stages: they import the ground floor only, and nothing imports them
FORBIDDEN = {
    "auxseg": {*STAGES, *BESIDE, "loop"},
    **{stage: {*(s for s in STAGES if s != stage), *BESIDE, "loop"} for stage in STAGES},
    **{product: {*STAGES, "loop"} for product in BESIDE},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """Top-level package names of every import in a file (module level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_across_or_up_the_floors(package):
    bad = [f"{path.relative_to(REPO)}:{line} imports {name}"
           for path in sorted((REPO / package).rglob("*.py"))
           for name, line in imported_packages(path) if name in FORBIDDEN[package]]
    assert bad == []


# ----------------------------------------------------------------------------- the rooms of the ground floor

STDLIB = set(__import__("sys").stdlib_module_names) | {"__future__"}
ROOMS = {
    # pure tensor math that two floors use: no I/O, no module state, no other project module
    "methods": {"allowed": STDLIB | {"torch", "numpy"}, "forbidden_stdlib": {"os", "io", "pathlib", "shutil",
                                                                               "tempfile", "json", "pickle"}},
    # the networks a reader rebuilds from an export
    "nets": {"allowed": STDLIB | {"torch", "torchvision", "auxseg.nets"}, "forbidden_stdlib": set()},
}


def _imports(path: Path) -> set[tuple[str, int]]:
    """Full module names of every import in a file (``auxseg.nets.small``, ``torch.nn``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name, node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module, node.lineno))
    return found


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_each_room_of_the_ground_floor_keeps_its_rule(room):
    rule = ROOMS[room]
    bad = []
    for path in sorted((REPO / "auxseg" / room).rglob("*.py")):
        for name, line in _imports(path):
            top = name.split(".")[0]
            ok = (top in rule["allowed"] and top not in rule["forbidden_stdlib"] and top != "auxseg") or any(
                name == a or name.startswith(a + ".") for a in rule["allowed"] if "." in a)
            if not ok:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
        if room == "methods":  # no I/O and no module state: no open(), module-level names are constants
            tree = ast.parse(path.read_text())
            bad += [f"{path.relative_to(REPO)}:{n.lineno} calls open()" for n in ast.walk(tree)
                    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "open"]
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, ast.AnnAssign) else [])
                bad += [f"{path.relative_to(REPO)}:{node.lineno} module state {t.id}" for t in targets
                        if isinstance(t, ast.Name) and not (t.id.isupper() or t.id == "__all__")]
    assert bad == []


def test_the_ground_floor_holds_plumbing_and_its_rooms_only():
    """auxseg/ holds no boundary code and no method math or network outside its rooms."""
    modules = {p.stem for p in (REPO / "auxseg").glob("*.py")}
    assert not {m for m in modules if "boundar" in m}
    assert not modules & {"implicit_posterior", "local_prediction", "dilated_resnet", "small_models"}
    assert {"contracts", "nets", "methods"} <= {p.name for p in (REPO / "auxseg").iterdir() if p.is_dir()}


def _module_graph() -> dict[str, set[str]]:
    """Project module -> project modules it imports (module level or in a function; not under TYPE_CHECKING)."""
    packages = ("auxseg", "auxlabels", "pretrain", "finetune", "boundaries", "loop")
    modules = {}
    for pkg in packages:
        for path in (REPO / pkg).rglob("*.py"):
            if "presets" in path.parts:
                continue
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            for target in targets:
                dep = owner(target)
                if dep and dep != name and not name.startswith(dep + "."):  # a package's own __init__ is no edge
                    found.add(dep)
        graph[name] = found
    return graph


def test_no_import_circle_between_modules():
    """No two modules import each other, directly or through others (lazy imports count too)."""
    graph = _module_graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert circles == []
