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
