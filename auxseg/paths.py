"""Path resolution shared by every stage, and the one guard for paths read from files.

Every path that a file names (a line of an image list or split file, an entry of a
manifest) goes through :func:`relative_inside` before anything is read or written
with it, and every output file derived from one goes through :func:`output_file`.
Readers do not re-implement these checks: a path that is absolute where a relative
one is expected, or that climbs out of its root, is refused with one line naming
the file and line (or key) it came from. Every stage names its output folder to
:func:`check_separate` before it writes, which also refuses an output folder holding a
symbolic link that leaves it (:func:`check_contained`), so no write under the folder,
whichever file or subfolder, lands elsewhere. docs/reliability.md lists the tests.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path, PurePosixPath, PureWindowsPath

from auxseg.errors import AuxsegError
from auxseg.images import IMAGE_SUFFIXES
from auxseg.presets import preset_path


class UnsafePathError(AuxsegError, ValueError):
    """A path read from a file that would leave its root, or an output folder that overlaps an input folder."""


def resolve_path(path: str | Path) -> Path:
    """An absolute path: as given; else relative to the current folder if it exists there; else, for
    ``configs/...`` and ``splits/...``, the preset shipped in the package (:mod:`auxseg.presets`)."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    shipped = preset_path(path)
    return shipped.resolve() if shipped is not None else path.resolve()


def relative_inside(entry: str, where: str) -> str:
    """``entry`` (a path read from a file) as a normalised POSIX path relative to its root.

    Refused with :class:`UnsafePathError`, naming ``where`` (``"list.txt:3"``,
    ``"manifest.json: images[4]"``), when it is empty, holds a NUL byte, is
    absolute (``/x``, ``C:\\x``, ``\\\\server\\x``) or climbs out of its root once
    normalised (``../x``, ``a/../../x``). ``a/./b`` and ``a/../b`` are accepted
    and returned as ``a/b`` and ``b``.
    """
    if not isinstance(entry, str) or not entry.strip():
        raise UnsafePathError(f"{where}: empty path")
    if "\x00" in entry:
        raise UnsafePathError(f"{where}: path {entry!r} holds a NUL byte")
    win = PureWindowsPath(entry)
    if PurePosixPath(entry).is_absolute() or win.drive or win.root:
        raise UnsafePathError(f"{where}: absolute path {entry!r} where a path relative to its folder is expected")
    norm = posixpath.normpath(entry)
    if norm == "." or norm == ".." or norm.startswith("../"):
        raise UnsafePathError(f"{where}: path {entry!r} leaves its folder")
    return norm


def output_file(root: str | Path, rel: str, where: str) -> Path:
    """``root / rel`` for a file this run writes, refused when it would land outside ``root``.

    ``rel`` is checked by :func:`relative_inside`; then every folder between
    ``root`` and the file that already exists is resolved (symbolic links
    followed) and must stay inside the resolved ``root``, and the file itself
    must not be a symbolic link (a write through it would land elsewhere).
    """
    root = Path(root)
    target = root / relative_inside(rel, where)
    real_root = root.resolve()
    if not target.parent.resolve().is_relative_to(real_root):
        raise UnsafePathError(f"{where}: {target} would be written outside {root} (a folder on the way is a "
                              "symbolic link that leaves it)")
    if target.is_symlink():
        raise UnsafePathError(f"{where}: {target} is a symbolic link; refusing to write through it")
    return target


def read_path_list(list_file: str | Path, what: str = "path") -> list[str]:
    """The relative paths listed in a text file, one per line, each checked by :func:`relative_inside`.

    Blank lines and lines starting with ``#`` are skipped; surrounding spaces are
    stripped. The order of the file is kept (duplicates too: callers decide). A line
    of two words that both name image files is the semi-supervised literature's
    ``<image> <label>`` pair (its split files, e.g. ``splits/cityscapes_literature/``):
    the image is listed, the label path is checked and not used. ``list_file`` is
    found as :func:`resolve_path` finds it (``splits/...`` names a shipped preset).
    """
    list_file = resolve_path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"{what} list not found: {list_file}")
    try:
        text = list_file.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UnsafePathError(f"{list_file}: cannot read as a text file ({type(err).__name__}: {err})") from err
    rels = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            rels.append(_listed_path(line, f"{list_file}:{n}"))
    return rels


def _listed_path(line: str, where: str) -> str:
    """One list line: a path (it may hold spaces), or an ``<image> <label>`` pair, whose image it returns."""
    words = line.split()
    if len(words) == 2 and all(word.lower().endswith(IMAGE_SUFFIXES) for word in words):
        relative_inside(words[1], where)
        return relative_inside(words[0], where)
    return relative_inside(line, where)


def _absolute(path: str | Path) -> Path:
    return Path(os.path.normpath(Path(path).expanduser().absolute()))


def _link_leaving(root: Path) -> tuple[Path, Path] | None:
    """The first symbolic link under ``root`` (files and folders, not followed) that resolves outside it, with
    its target; None when there is none. Entries are visited in name order, so the answer is reproducible."""
    real_root = root.resolve()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError:  # unreadable or not a folder: writing there fails with its own error
            continue
        for entry in entries:
            if entry.is_symlink():
                try:
                    target = Path(entry.path).resolve()
                except (OSError, RuntimeError):  # a link loop: nothing can be written through it
                    continue
                if not target.is_relative_to(real_root):
                    return Path(entry.path), target
            elif entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
    return None


def check_contained(out_dir: str | Path, out_key: str) -> None:
    """Refuse an output folder that holds a symbolic link (to a folder or a file) resolving outside it.

    A stage writes fixed names under its folder (``checkpoints/``, ``labels/``,
    ``figures/``, ``data/``, ``config.yaml``...); a link among them, left by an earlier
    run or made on purpose, would send those writes elsewhere. The whole existing tree
    is checked, not a list of names, so a file or subfolder added later is covered too.
    Links that stay inside the folder are fine; ``out_dir`` itself may be a link.
    """
    root = Path(out_dir).expanduser()
    if not root.is_dir():
        return  # nothing written yet: nothing can lead out
    found = _link_leaving(root)
    if found is not None:
        link, target = found
        raise UnsafePathError(f"{out_key}: {link} is a symbolic link to {target}, outside {out_dir}; what this run "
                              f"writes there would be written outside {out_key} (remove the link, or choose another "
                              f"{out_key})")


def check_separate(out_dir: str | Path, out_key: str, inputs: dict[str, str | Path | None]) -> None:
    """Refuse an output folder that contains, or lies inside, one of the ``inputs`` folders, or that holds a
    symbolic link leading out of it (:func:`check_contained`). Every stage calls this before its first write.

    ``inputs`` maps config keys to folders (None entries are skipped). Both the
    paths as given and their resolved forms are compared, so a symbolic link
    does not hide an overlap. An output inside an image folder would be read
    back as input by the next scan; an input inside the output could be
    overwritten or deleted with it.
    """
    out_forms = {_absolute(out_dir), Path(out_dir).expanduser().resolve()}
    for key, folder in inputs.items():
        if folder is None or folder == "":
            continue
        in_forms = {_absolute(folder), Path(folder).expanduser().resolve()}
        for o in out_forms:
            for i in in_forms:
                if o == i or o.is_relative_to(i) or i.is_relative_to(o):
                    relation = "is" if o == i else "lies inside" if o.is_relative_to(i) else "contains"
                    raise UnsafePathError(f"{out_key}: {out_dir} {relation} the input folder {key}={folder}; "
                                          f"choose an {out_key} outside it")
    check_contained(out_dir, out_key)
