"""The names and path rules shared by the label folder and its soft priors (docs/contracts.md section 1).

:mod:`auxseg.contracts.label_folder` (the folder, its manifest, its reader) and
:mod:`auxseg.contracts.priors` (the prior files beside the labels) both build on
these; neither imports the other's internals, so the two contracts import in one
direction only (label_folder -> priors -> layout).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from auxseg.errors import AuxsegError
from auxseg.paths import relative_inside

MANIFEST_FORMAT = "auxseg.auxlabels/1"
MANIFEST_NAME = "manifest.json"
LABELS_DIR = "labels"
PRIORS_DIR = "priors"  # optional soft priors beside labels/ (auxseg.contracts.priors)
PRIOR_FORMAT = "auxseg.prior/1"
SCOPES = ("global", "image")  # global: an id means the same in every image; image: only inside one image


class LabelFolderError(AuxsegError, ValueError):
    """An auxiliary-label folder that is missing, incomplete or inconsistent; names the folder or file."""


def label_rel(rel: str | Path) -> str:
    """Label PNG path (relative to ``labels/``) of an image path: the suffix becomes ``.png``.

    An image path that is absolute or leaves its folder is refused
    (:func:`auxseg.paths.relative_inside`): no label path can point outside ``labels/``.
    """
    return Path(relative_inside(Path(rel).as_posix(), f"image path {str(rel)!r}")).with_suffix(".png").as_posix()


def prior_rel(rel: str | Path) -> str:
    """Prior file path (relative to ``priors/``) of an image path: the suffix becomes ``.npz`` (checked as :func:`label_rel`)."""
    return Path(relative_inside(Path(rel).as_posix(), f"image path {str(rel)!r}")).with_suffix(".npz").as_posix()


def labels_digest(pairs: list[tuple[str, str]]) -> str:
    """``labels_sha256``: SHA-256 over the sorted ``"<label rel path>\\t<file sha256>\\n"`` lines.

    ``pairs`` are (label path relative to ``labels/`` in POSIX form, hex SHA-256 of the file).
    """
    h = hashlib.sha256()
    for rel, digest in sorted(pairs):
        h.update(f"{rel}\t{digest}\n".encode())
    return h.hexdigest()
