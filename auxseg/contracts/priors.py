"""Soft per-pixel priors beside the hard labels of a label folder (docs/contracts.md section 1b).

A prior file holds, for each cell of a (possibly reduced-resolution) grid, the
``k`` most probable auxiliary labels and their probabilities:

- ``ids``    uint8 (K <= 256) or uint16 ``[k, h, w]``: label ids, most probable first;
- ``probs``  uint8 ``[k, h, w]``: probabilities in units of 1/255, summing to
  exactly 255 over ``k`` in every cell (largest-remainder rounding);
- ``num_labels`` int64 scalar: K of the label folder; ``format``: :data:`PRIOR_FORMAT`.

stored as a compressed ``.npz`` (no pickles: read with ``allow_pickle=False``;
fixed zip timestamps, so equal arrays give equal bytes).
The probability mass outside the top k is dropped and the top k renormalised
before quantisation, so a stored prior is exact up to 1/255 per entry for a
prior with at most k non-zero labels per pixel. One writer
(:func:`write_prior`), readers :func:`read_prior` (dense) and
:func:`read_prior_topk` (as stored).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from auxseg.contracts.layout import PRIOR_FORMAT, PRIORS_DIR, LabelFolderError, labels_digest, prior_rel
from auxseg.files import DataFileError, atomic_write_bytes, check_npz_size

__all__ = ["PRIOR_FORMAT", "PRIORS_DIR", "QUANT", "prior_rel", "write_prior", "write_prior_topk", "read_prior",
           "read_prior_topk", "prior_num_labels", "priors_digest", "topk_of", "quantise", "cell_indices", "upsample_topk",
           "prior_manifest_entry", "write_label_priors"]

QUANT = 255  # probabilities are stored in units of 1/QUANT
_KEYS = ("format", "num_labels", "ids", "probs")
_error = LabelFolderError


def topk_of(prior: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k = min(topk, K)`` most probable labels of a dense prior, renormalised over them.

    Args:
        prior: float ``[K, H, W]``, non-negative (need not be normalised).
        topk: k >= 1.
    Returns:
        ids int64 ``[k, H, W]`` (most probable first; ties: smaller id first) and
        float64 probabilities ``[k, H, W]`` summing to 1 over k (uniform over the
        k ids where the prior is all zero).
    """
    k_all = prior.shape[0]
    k = min(int(topk), k_all)
    p = np.asarray(prior, dtype=np.float64)
    if k < k_all:
        part = np.argpartition(-p, k - 1, axis=0)[:k]  # [k, H, W] unordered top k
        vals = np.take_along_axis(p, part, axis=0)
        # order by probability, then by id, so the file does not depend on argpartition's choice among ties
        order = np.lexsort((part, -vals), axis=0)
        ids = np.take_along_axis(part, order, axis=0)
    else:
        ids = np.argsort(-p, axis=0, kind="stable")
    vals = np.take_along_axis(p, ids, axis=0)
    total = vals.sum(axis=0, keepdims=True)
    probs = np.where(total > 0, vals / np.where(total > 0, total, 1.0), 1.0 / k)
    return ids.astype(np.int64), probs


def quantise(probs: np.ndarray) -> np.ndarray:
    """uint8 ``[k, ...]`` in units of 1/255 summing to exactly 255 over k (largest-remainder rounding).

    Args:
        probs: float ``[k, ...]`` summing to 1 over k, in descending order along k.
    Each entry is within 1/255 of ``probs``; the order along k is kept (on equal
    remainders the earlier entry gets the extra unit).
    """
    scaled = probs * QUANT
    base = np.floor(scaled)
    short = (QUANT - base.sum(axis=0)).round().astype(np.int64)  # units still to hand out, 0..k
    frac = scaled - base
    rank = np.argsort(np.argsort(-frac, axis=0, kind="stable"), axis=0, kind="stable")  # 0 = largest remainder
    base += rank < short[None]
    return base.astype(np.uint8)


def write_prior(path: str | Path, prior: np.ndarray, topk: int) -> None:
    """Store a dense prior as its top-k ids and quantised probabilities (compressed ``.npz``, atomic).

    Args:
        path: the prior file (parents are created).
        prior: float ``[K, H, W]``, non-negative, summing to 1 over K per pixel
            (at the resolution the folder's manifest states).
        topk: labels kept per pixel (k = min(topk, K)).
    Raises ValueError on a malformed array and :class:`~auxseg.files.WriteError`
    naming the file when it cannot be written.
    """
    prior = np.asarray(prior)
    if prior.ndim != 3 or prior.shape[0] < 1:
        raise ValueError(f"{path}: prior must be [K, H, W], got shape {prior.shape}")
    if topk < 1:
        raise ValueError(f"{path}: topk must be >= 1, got {topk}")
    if not np.all(np.isfinite(prior)) or prior.min(initial=0.0) < 0:
        raise ValueError(f"{path}: prior has negative or non-finite values")
    ids, probs = topk_of(prior, topk)
    write_prior_topk(path, ids, probs, prior.shape[0])


def write_prior_topk(path: str | Path, ids: np.ndarray, probs: np.ndarray, num_labels: int) -> None:
    """Store a prior already in top-k form: ids ``[k, H, W]`` in ``0..K-1`` and probs ``[k, H, W]`` (sum 1 over k,
    most probable first). The compact writer for producers that never build the dense ``[K, H, W]`` array."""
    if ids.shape != probs.shape or ids.ndim != 3:
        raise ValueError(f"{path}: ids {ids.shape} and probs {probs.shape} must be the same [k, H, W]")
    if ids.size and (ids.min() < 0 or ids.max() >= num_labels):
        raise ValueError(f"{path}: label ids outside 0..{num_labels - 1}")
    id_dtype = np.uint8 if num_labels <= 256 else np.uint16
    arrays = {"format": np.array(PRIOR_FORMAT), "num_labels": np.array(num_labels, dtype=np.int64),
              "ids": np.ascontiguousarray(ids, dtype=id_dtype), "probs": quantise(probs)}
    atomic_write_bytes(path, _npz_bytes(arrays))


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed ``.npz`` whose bytes depend only on the arrays (``np.savez_compressed`` stamps the time),
    so rewriting an unchanged prior gives the same file and ``priors_sha256``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, arr in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, npy.getvalue())
    return buf.getvalue()


def _load(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a prior file, checked for shape and consistency; one-line LabelFolderError naming the file."""
    if not path.is_file():
        raise _error(f"{path}: prior file missing")
    try:
        check_npz_size(path)  # a compressed member must not expand beyond the bound (zip bomb)
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in z.files]
            if missing:
                raise _error(f"{path}: not an auxseg prior file (no {missing[0]!r} array)")
            data = {k: z[k] for k in _KEYS}
    except LabelFolderError:
        raise
    except DataFileError as err:
        raise _error(str(err)) from err
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _error(f"{path}: not a readable prior file ({reason})") from err
    if str(data["format"]) != PRIOR_FORMAT:
        raise _error(f"{path}: format {str(data['format'])!r}, expected {PRIOR_FORMAT!r}")
    ids, probs = data["ids"], data["probs"]
    if ids.ndim != 3 or ids.shape != probs.shape or ids.shape[0] < 1 or probs.dtype != np.uint8:
        raise _error(f"{path}: ids {ids.shape} and probs {probs.shape} ({probs.dtype}) are not one uint8 [k, h, w] pair")
    if probs.size and np.any(probs.sum(axis=0, dtype=np.int64) != QUANT):
        raise _error(f"{path}: probabilities do not sum to {QUANT}/{QUANT} in every pixel (corrupt file)")
    return data


def prior_num_labels(path: str | Path) -> int:
    """K recorded in a prior file (reads only the small arrays); LabelFolderError naming the file if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise _error(f"{path}: prior file missing")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "num_labels" not in z.files or "format" not in z.files or str(z["format"]) != PRIOR_FORMAT:
                raise _error(f"{path}: not an auxseg prior file of format {PRIOR_FORMAT!r}")
            return int(z["num_labels"])
    except LabelFolderError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _error(f"{path}: not a readable prior file ({reason})") from err


def read_prior_topk(path: str | Path, num_labels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The prior as stored: ids int64 ``[k, h, w]`` and probs float32 ``[k, h, w]`` (sum to 1 over k).

    With ``num_labels``, a file written for another K is refused. Raises a
    one-line :class:`~auxseg.contracts.label_folder.LabelFolderError` naming
    the file when it is missing, corrupt or of another K.
    """
    path = Path(path)
    data = _load(path)
    k_file = int(data["num_labels"])
    if num_labels is not None and k_file != num_labels:
        raise _error(f"{path}: prior written for K={k_file} labels, the label folder has num_labels={num_labels}")
    ids = data["ids"].astype(np.int64)
    if ids.size and ids.max() >= k_file:
        raise _error(f"{path}: label id {int(ids.max())} is outside 0..{k_file - 1}")
    return ids, data["probs"].astype(np.float32) / QUANT


def cell_indices(n_out: int, n_in: int, stride: int | None = None) -> np.ndarray:
    """Stored cell of each of ``n_out`` pixel rows (or columns) of a grid of ``n_in`` cells.

    With the folder's ``stride`` (manifest ``prior.stride``): ``min(y // stride, n_in - 1)``, exactly how the
    label PNGs were upsampled from the same grid; without: ``floor(y n_in / n_out)`` (torch's ``nearest``).
    """
    if stride is not None:
        return np.minimum(np.arange(n_out) // stride, n_in - 1)
    return np.minimum((np.arange(n_out) * n_in) // n_out, n_in - 1)


def upsample_topk(ids: np.ndarray, probs: np.ndarray, size: tuple[int, int],
                  stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k maps ``[k, h, w]`` resized to ``size=(H, W)`` by nearest neighbour (see :func:`cell_indices`)."""
    rows, cols = cell_indices(size[0], ids.shape[1], stride), cell_indices(size[1], ids.shape[2], stride)
    return ids[:, rows][:, :, cols], probs[:, rows][:, :, cols]


def read_prior(path: str | Path, num_labels: int, size: tuple[int, int] | None = None,
               stride: int | None = None) -> np.ndarray:
    """Dense prior float32 ``[K, H, W]``: non-negative, sums to 1 over K.

    Args:
        path: a prior file.
        num_labels: K of the label folder (a file of another K is refused).
        size: ``(H, W)`` to resize to by nearest neighbour, or None for the stored grid.
        stride: the folder's ``prior_stride``: pixel (y, x) then takes cell
            ``(y // stride, x // stride)``, the mapping of the label PNGs; without it
            ``(floor(y h / H), floor(x w / W))``.
    Costs ``4 K H W`` bytes; consumers that need few pixels use :func:`read_prior_topk`.
    """
    ids, probs = read_prior_topk(path, num_labels)
    if size is not None:
        ids, probs = upsample_topk(ids, probs, size, stride)
    k, h, w = ids.shape
    dense = np.zeros((num_labels, h * w), dtype=np.float32)
    cell = np.arange(h * w)
    for j in range(k):  # add.at: a producer's ids need not be distinct within a pixel
        np.add.at(dense, (ids[j].ravel(), cell), probs[j].ravel())
    return dense.reshape(num_labels, h, w)


def priors_digest(pairs: list[tuple[str, str]]) -> str:
    """``priors_sha256``: SHA-256 over the sorted ``"<prior rel path>\\t<file sha256>\\n"`` lines.

    ``pairs`` are (prior path relative to ``priors/`` in POSIX form, hex SHA-256
    of the file): the same rule as ``labels_sha256``.
    """
    return labels_digest(pairs)


def prior_manifest_entry(topk: int, stride: int, pairs: list[tuple[str, str]], **producer) -> dict:
    """The manifest's ``prior`` value: format, topk, stride, ``priors_sha256`` of ``pairs`` and producer settings."""
    return {"format": PRIOR_FORMAT, "dir": PRIORS_DIR, "topk": int(topk), "stride": int(stride),
            "priors_sha256": priors_digest(pairs), **producer}


def write_label_priors(folder: str | Path, confidence: float = 0.8, topk: int = 2, stride: int = 1) -> Path:
    """Add soft priors made from a folder's own hard labels (tests and tiny presets, like ``write_groundtruth_label_folder``).

    Each cell of the ``stride`` grid (the label at its top-left pixel) gets
    ``confidence`` on its hard label and the rest spread evenly over the other
    labels (before the top-k cut); ignored pixels get a uniform prior. Writes
    ``priors/`` and adds the ``prior`` key to ``manifest.json``.
    """
    from auxseg.contracts.layout import LABELS_DIR, MANIFEST_NAME, label_rel
    from auxseg.files import atomic_write_json, read_json_object, sha256_file
    from auxseg.images import read_label
    from auxseg.paths import output_file

    folder = Path(folder)
    m = read_json_object(folder / MANIFEST_NAME)
    k = int(m["num_labels"])
    pairs = []
    for n, rel in enumerate(m["images"]):
        path = output_file(folder, f"{PRIORS_DIR}/{prior_rel(rel)}", f"{folder / MANIFEST_NAME}: images[{n}]")
        lab = read_label(folder / LABELS_DIR / label_rel(rel))[::stride, ::stride].astype(np.int64)
        valid = lab < k
        rest = (1.0 - confidence) / max(1, k - 1)
        prior = np.full((k, *lab.shape), rest)
        np.put_along_axis(prior, np.where(valid, lab, 0)[None], confidence, axis=0)
        prior[:, ~valid] = 1.0 / k
        write_prior(path, prior / prior.sum(axis=0, keepdims=True), topk)
        pairs.append((prior_rel(rel), sha256_file(path)))
    m["prior"] = prior_manifest_entry(topk, stride, pairs, source="hard labels", confidence=confidence)
    atomic_write_json(folder / MANIFEST_NAME, m)
    return folder
