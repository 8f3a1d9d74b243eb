"""Path resolution shared by every stage."""

from __future__ import annotations

from pathlib import Path

from auxseg.presets import preset_path


def resolve_path(path: str | Path) -> Path:
    """An absolute path: as given; else relative to the current folder if it exists there; else, for
    ``configs/...`` and ``splits/...``, the preset shipped in the package (:mod:`auxseg.presets`)."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    shipped = preset_path(path)
    return shipped.resolve() if shipped is not None else path.resolve()
