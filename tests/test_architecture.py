"""The floors of docs/architecture.md: the ground floor imports no stage, no stage imports another, and the
products beside the stages (boundaries) import only the ground floor; no import circle; and no function of the
library takes more than seven parameters or runs past sixty lines (house style 1 and 17), except those listed."""

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


# ----------------------------------------------------------------------------- function size

LIBRARY = ("auxseg", "auxlabels", "pretrain", "finetune", "loop", "boundaries")
MAX_PARAMS = 7  # beyond about seven parameters a signature is asking for an object (house style 17)
MAX_LINES = 60
# functions allowed past the limits, each with its reason; everything else must fit
ALLOWED_LONG = {
    "pretrain/train.py::train": "the whole training step in one function, as MoCo's train() (house style 1)",
}
# CLI argument builders (functions that only add argparse arguments) may be as long as their option list:
# each statement is a docstring, an import, a call (or the assignment of a call) of an argparse method
# (_ARGPARSE_CALLS), of a project ``add_*_argument(s)`` helper, of a function of the same module that is itself
# such a builder, or of one of _ARGPARSE_HELPERS; or ``return <name>``
_ARGPARSE_CALLS = {"add_argument", "add_parser", "add_argument_group", "add_mutually_exclusive_group",
                   "add_subparsers", "set_defaults"}
_ARGPARSE_HELPERS = {
    "boundary_verbs": "boundaries/cli.py: the ``auxseg boundaries`` verbs' subparsers, made on first use",
}


def _parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Parameters of a function, ``*args`` and ``**kwargs`` included, ``self`` / ``cls`` not."""
    a = node.args
    count = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
    first = (a.posonlyargs + a.args)[:1]
    return count - (1 if first and first[0].arg in ("self", "cls") else 0)


def _called_name(node: ast.AST) -> str | None:
    if not isinstance(node, ast.Call):
        return None
    return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)


def _only_adds_arguments(node: ast.FunctionDef | ast.AsyncFunctionDef, module: dict, seen: frozenset = frozenset()) -> bool:
    """True for a CLI argument builder: every statement adds argparse arguments (see ``_ARGPARSE_CALLS``).

    ``module``: the functions defined at the top of the same file, by name.
    """
    def adds(call: ast.AST) -> bool:
        name = _called_name(call)
        if name is None:
            return False
        if name in _ARGPARSE_CALLS or name in _ARGPARSE_HELPERS or (
                name.startswith("add_") and name.endswith(("argument", "arguments"))):
            return True
        helper = module.get(name)
        return helper is not None and name not in seen and _only_adds_arguments(helper, module, seen | {name})

    for i, stmt in enumerate(node.body):
        if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # the docstring
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(stmt, (ast.Expr, ast.Assign)) and adds(stmt.value):
            continue
        if isinstance(stmt, ast.Return) and (stmt.value is None or isinstance(stmt.value, ast.Name)):
            continue
        return False
    return True


def _functions():
    """``(path relative to the repo, function node, the file's top-level functions by name)`` of every function
    of the library (nested ones too)."""
    for pkg in LIBRARY:
        for path in sorted((REPO / pkg).rglob("*.py")):
            if "presets" in path.relative_to(REPO).parts:
                continue  # mmseg config files shipped as data
            tree = ast.parse(path.read_text(), str(path))
            module = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield path.relative_to(REPO).as_posix(), node, module


def test_no_function_takes_more_than_seven_parameters_or_runs_past_sixty_lines():
    """State a phase shares is an object, and a function reads in one screen (docs/architecture.md).

    Allowed past the limits: :data:`ALLOWED_LONG` (by name, with the reason) and CLI argument builders
    (:func:`_only_adds_arguments`), however many options they add.
    """
    bad = []
    for rel, node, module in _functions():
        params, lines = _parameter_count(node), node.end_lineno - node.lineno + 1
        if params <= MAX_PARAMS and lines <= MAX_LINES:
            continue
        if f"{rel}::{node.name}" in ALLOWED_LONG or _only_adds_arguments(node, module):
            continue
        bad.append(f"{rel}:{node.lineno} {node.name}: {params} parameters, {lines} lines")
    assert bad == []


def test_the_allowed_long_functions_still_exist():
    """An entry of ALLOWED_LONG or _ARGPARSE_HELPERS whose function was split or renamed must leave the list."""
    found = {f"{rel}::{node.name}" for rel, node, _ in _functions()}
    assert set(ALLOWED_LONG) <= found
    assert {f"{where.split(':')[0]}::{name}" for name, where in _ARGPARSE_HELPERS.items()} <= found


def test_the_size_rule_counts_parameters_and_knows_an_argument_builder():
    code = """
class A:
    def method(self, a, b, *rest, c=1, **kw): ...
def builder(subparsers):
    \"\"\"Doc.\"\"\"
    from x import y
    p = subparsers.add_parser("x")
    p.add_argument("--a")
    _more(p)
    return p
def _more(p):
    add_config_arguments(p, "stage", "example")
    p.set_defaults(func=print)
def with_logic(subparsers):
    p = subparsers.add_parser("x")
    if p:
        p.add_argument("--a")
"""
    tree = ast.parse(code)
    funcs = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    module = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert _parameter_count(funcs["method"]) == 5  # a, b, *rest, c, **kw; not self
    assert _only_adds_arguments(funcs["builder"], module) and _only_adds_arguments(funcs["_more"], module)
    assert not _only_adds_arguments(funcs["with_logic"], module)
