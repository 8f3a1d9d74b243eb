"""Path resolution shared by every stage."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str | Path) -> Path:
    """An absolute path: as given, else relative to the current folder, else to the repo root."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    if path.exists() or not (REPO_ROOT / path).exists():
        return path.resolve()
    return (REPO_ROOT / path).resolve()
