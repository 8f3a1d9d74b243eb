"""The auxiliary-label folder (docs/contracts.md section 1): one writer, one reader, one definition.

``auxlabels`` writes a folder with :func:`label_rel`, :func:`labels_digest` and
:data:`MANIFEST_FORMAT`; ``pretrain`` opens it with :func:`read_label_folder`,
which checks the manifest against the files before any training starts.
Optional soft priors (``priors/<rel>.npz``, manifest key ``prior``) are read
and written by :mod:`auxseg.contracts.priors`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auxseg.contracts.layout import (  # noqa: F401  (the folder's names and path rules, re-exported)
    LABELS_DIR,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    PRIOR_FORMAT,
    PRIORS_DIR,
    SCOPES,
    LabelFolderError,
    label_rel,
    labels_digest,
    prior_rel,
)
from auxseg.contracts.priors import prior_num_labels
from auxseg.files import atomic_write_json, read_json, read_json_object, sha256_file
from auxseg.images import list_images, read_label, write_label_png
from auxseg.paths import output_file, relative_inside


def compute_labels_sha256(labels_dir: str | Path, images: list[str] | tuple[str, ...]) -> str:
    """The ``labels_sha256`` of the label PNGs of ``images`` (image paths) under ``labels_dir``."""
    labels_dir = Path(labels_dir)
    return labels_digest([(label_rel(rel), sha256_file(labels_dir / label_rel(rel))) for rel in images])


def label_dtype(num_labels: int) -> tuple[str, int]:
    """PNG dtype and ignore index for ``num_labels`` labels: uint8/255 up to 254 labels, else uint16/65535."""
    return ("uint8", 255) if num_labels <= 254 else ("uint16", 65535)


@dataclass(frozen=True)
class LabelledImages:
    """The images a label folder labels, as its manifest lists them."""

    image_root: str | Path  # the folder the image paths are relative to
    images: list[str]  # every labelled image
    labels_sha256: str  # labels_digest of their label PNGs
    eval_images: list[str] = ()  # those labelled only to be evaluated (never trained on)


def label_folder_manifest(*, num_labels: int, scope: str, labelled: LabelledImages, dtype: str | None = None,
                          **extra) -> dict:
    """The manifest of a finished label folder: the one builder every writer uses (docs/contracts.md 1).

    The keys every reader relies on come first, in the documented order (``dtype`` and ``ignore_index``
    from :func:`label_dtype` unless ``dtype`` is given), then ``extra``: the writer's own description
    (clusterer, extractor, priors, timings, ...).
    """
    if scope not in SCOPES:
        raise ValueError(f"label_folder_manifest: scope must be one of {SCOPES}, got {scope!r}")
    dtype, ignore = (dtype, {"uint8": 255, "uint16": 65535}[dtype]) if dtype else label_dtype(num_labels)
    return {"format": MANIFEST_FORMAT, "num_labels": int(num_labels), "ignore_index": ignore, "dtype": dtype,
            "scope": scope, "image_root": str(labelled.image_root), "images": list(labelled.images),
            "eval_images": list(labelled.eval_images), "labels_sha256": labelled.labels_sha256, "complete": True,
            **extra}


@dataclass(frozen=True)
class LabelFolder:
    """What a consumer needs from an auxiliary-label folder's manifest."""

    root: Path
    manifest_path: Path
    num_labels: int
    ignore_index: int
    scope: str  # "global" or "image"
    image_root: Path
    images: tuple[str, ...]  # the training images: the manifest's images less its eval_images
    labels_sha256: str
    priors_sha256: str | None = None  # the manifest's prior.priors_sha256; None: the folder has no priors
    prior_topk: int = 0  # labels stored per pixel in the prior files (0 without priors)
    prior_stride: int = 1  # a prior cell covers stride x stride image pixels (grid ceil(H/s) x ceil(W/s))

    @property
    def has_priors(self) -> bool:
        """True when the folder carries soft priors (``priors/`` and the manifest's ``prior`` key)."""
        return self.priors_sha256 is not None

    def label_path(self, rel: str) -> Path:
        return self.root / LABELS_DIR / label_rel(rel)

    def prior_path(self, rel: str) -> Path:
        """The prior file of image ``rel`` (meaningful only when :attr:`has_priors`)."""
        return self.root / PRIORS_DIR / prior_rel(rel)


def read_label_folder(path: str | Path, image_root: str | Path | None = None, verify_hash: bool = True) -> LabelFolder:
    """Open an auxiliary-label folder, checking its manifest, and return its description.

    Raises :class:`LabelFolderError` naming the folder when the manifest is
    missing, of another format, marked incomplete, has keys of the wrong type
    or range (``num_labels``, ``ignore_index``, ``dtype``, ``scope``), when
    ``centroids.npy`` does not have ``num_labels`` rows, when a label PNG is
    missing, and (``verify_hash``) when a label PNG holds a value that is
    neither a label nor the ignore value or the label hash does not match.
    With a ``prior`` key it also refuses a malformed key, a missing prior
    file, a prior file of another K (every file with ``verify_hash``, else
    the first) and (``verify_hash``) a ``priors_sha256`` that does not match.
    """
    root = Path(path)
    manifest_path = root / MANIFEST_NAME
    m = _read_manifest(root, manifest_path)
    prior = _check_prior_key(manifest_path, m.get("prior"))
    labelled, images = _labelled_and_training_images(manifest_path, m)
    folder = LabelFolder(
        root=root,
        manifest_path=manifest_path,
        num_labels=int(m["num_labels"]),
        ignore_index=int(m["ignore_index"]),
        scope=str(m["scope"]),
        image_root=Path(image_root) if image_root else Path(m["image_root"]),
        images=images,
        labels_sha256=str(m["labels_sha256"]),
        priors_sha256=None if prior is None else prior["priors_sha256"],
        prior_topk=0 if prior is None else prior["topk"],
        prior_stride=1 if prior is None else prior["stride"],
    )
    missing = [r for r in labelled if not folder.label_path(r).is_file()]
    if missing:
        raise LabelFolderError(f"{root}: {len(missing)} label PNGs missing, e.g. {folder.label_path(missing[0])}")
    if not folder.image_root.is_dir():
        raise LabelFolderError(
            f"{manifest_path}: image_root {folder.image_root} does not exist (set data.image_root if the images moved)"
        )
    _check_centroids(root, folder)
    if folder.has_priors:
        _check_priors(folder, labelled, verify_hash)
    if verify_hash:
        digest = _verify_labels(folder, labelled)
        if digest != folder.labels_sha256:
            raise LabelFolderError(
                f"{manifest_path}: labels_sha256 does not match the label PNGs on disk "
                f"(manifest {folder.labels_sha256[:12]}..., files {digest[:12]}...); the labels changed "
                "after the manifest was written (data.verify_hash=false skips this check)"
            )
    return folder


def _read_manifest(root: Path, manifest_path: Path) -> dict:
    """The manifest of a finished label folder, its format, completeness and reader keys checked."""
    if not manifest_path.is_file():
        raise LabelFolderError(f"{root}: not an auxiliary-label folder (no {MANIFEST_NAME})")
    try:
        m = read_json(manifest_path)
    except ValueError as err:
        raise LabelFolderError(str(err)) from err
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        found = m.get("format") if isinstance(m, dict) else None
        raise LabelFolderError(f"{manifest_path}: format {found!r}, expected {MANIFEST_FORMAT!r}")
    if m.get("complete") is not True:
        raise LabelFolderError(
            f"{manifest_path}: the label folder is incomplete (complete={m.get('complete')!r}); "
            "the auxlabels run that wrote it did not finish"
        )
    for key in ("num_labels", "ignore_index", "scope", "image_root", "images", "labels_sha256"):
        if key not in m:
            raise LabelFolderError(f"{manifest_path}: missing key {key!r}")
    _check_manifest_values(manifest_path, m)
    return m


def _labelled_and_training_images(manifest_path: Path, m: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every labelled image, and those to train on: the labelled ones less ``eval_images`` (at least one)."""
    labelled = tuple(str(r) for r in m["images"])
    # validation images are labelled only so their PmIoU can be measured: never train on them
    eval_only = {str(r) for r in m.get("eval_images", [])}
    images = tuple(r for r in labelled if r not in eval_only)
    if not images:
        raise LabelFolderError(
            f"{manifest_path}: no training images (the image list is empty"
            + (f" once its {len(eval_only)} eval_images are left out)" if eval_only else ")")
        )
    return labelled, images


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_manifest_values(manifest_path: Path, m: dict) -> None:
    """Types and ranges of the keys a consumer relies on (a wrong K or ignore value must not train silently)."""
    if not _is_int(m["num_labels"]) or m["num_labels"] < 1:
        raise LabelFolderError(f"{manifest_path}: num_labels must be an integer >= 1, got {m['num_labels']!r}")
    if not _is_int(m["ignore_index"]):
        raise LabelFolderError(f"{manifest_path}: ignore_index must be an integer, got {m['ignore_index']!r}")
    dtype = m.get("dtype")
    expected = {"uint8": 255, "uint16": 65535}
    if dtype is not None:
        if dtype not in expected:
            raise LabelFolderError(f"{manifest_path}: dtype {dtype!r} is not 'uint8' or 'uint16'")
        if m["ignore_index"] != expected[dtype] or m["num_labels"] > expected[dtype]:
            raise LabelFolderError(
                f"{manifest_path}: ignore_index {m['ignore_index']} and num_labels {m['num_labels']} do not fit "
                f"dtype {dtype} (its ignore value is {expected[dtype]}, K at most {expected[dtype] - 1})")
    if m["scope"] not in SCOPES:
        raise LabelFolderError(f"{manifest_path}: scope {m['scope']!r} is not 'global' or 'image'")
    for key in ("images", "eval_images"):
        entries = m.get(key, [])
        if not isinstance(entries, list) or not all(isinstance(r, str) for r in entries):
            raise LabelFolderError(f"{manifest_path}: {key} must be a list of relative paths")
        for i, rel in enumerate(entries):  # an entry must not read or train on files outside image_root
            relative_inside(rel, f"{manifest_path}: {key}[{i}]")


def _check_prior_key(manifest_path: Path, prior) -> dict | None:
    """The manifest's ``prior`` entry (None when absent), checked for the keys a consumer relies on."""
    if prior is None:
        return None
    if not isinstance(prior, dict) or prior.get("format") != PRIOR_FORMAT:
        found = prior.get("format") if isinstance(prior, dict) else prior
        raise LabelFolderError(f"{manifest_path}: prior format {found!r}, expected {PRIOR_FORMAT!r}")
    for key in ("topk", "stride"):
        if not _is_int(prior.get(key)) or prior[key] < 1:
            raise LabelFolderError(f"{manifest_path}: prior.{key} must be an integer >= 1, got {prior.get(key)!r}")
    if not isinstance(prior.get("priors_sha256"), str):
        raise LabelFolderError(f"{manifest_path}: prior.priors_sha256 missing (a string is required)")
    return prior


def _check_priors(folder: LabelFolder, images: tuple[str, ...], verify_hash: bool) -> None:
    """Every image has its prior file; with ``verify_hash`` each is of this K and ``priors_sha256`` matches."""
    missing = [r for r in images if not folder.prior_path(r).is_file()]
    if missing:
        raise LabelFolderError(f"{folder.root}: {len(missing)} prior files missing, e.g. {folder.prior_path(missing[0])}"
                               f" ({folder.manifest_path} has a prior key)")
    check = images if verify_hash else images[:1]  # K of one file always; every file with the hash check
    pairs = []
    for rel in check:
        path = folder.prior_path(rel)
        k = prior_num_labels(path)
        if k != folder.num_labels:
            raise LabelFolderError(f"{path}: prior written for K={k} labels, but {folder.manifest_path} says "
                                   f"num_labels={folder.num_labels}")
        if verify_hash:
            pairs.append((prior_rel(rel), sha256_file(path)))
    if verify_hash:
        digest = labels_digest(pairs)
        if digest != folder.priors_sha256:
            raise LabelFolderError(
                f"{folder.manifest_path}: prior.priors_sha256 does not match the prior files on disk "
                f"(manifest {folder.priors_sha256[:12]}..., files {digest[:12]}...); the priors changed "
                "after the manifest was written (data.verify_hash=false skips this check)")


def _check_centroids(root: Path, folder: LabelFolder) -> None:
    """``centroids.npy``, when present for a global folder, has one row per label."""
    path = root / "centroids.npy"
    if folder.scope != "global" or not path.is_file():
        return
    try:
        centroids = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise LabelFolderError(f"{path}: not a readable .npy array ({err})") from err
    if centroids.ndim != 2 or centroids.shape[0] != folder.num_labels:
        raise LabelFolderError(f"{path}: {centroids.shape[0] if centroids.ndim else 0} centroids, but the manifest "
                               f"says num_labels={folder.num_labels} in {folder.manifest_path}")


def _verify_labels(folder: LabelFolder, images: tuple[str, ...]) -> str:
    """Read every label PNG once: check it holds only ``0..K-1`` and the ignore value (else an error naming
    the file and the value), and return the ``labels_sha256`` of the set."""
    pairs = []
    for rel in images:
        path = folder.label_path(rel)
        data = path.read_bytes()
        pairs.append((label_rel(rel), hashlib.sha256(data).hexdigest()))
        values = np.unique(read_label(path, data))
        bad = values[(values >= folder.num_labels) & (values != folder.ignore_index)]
        if bad.size:
            raise LabelFolderError(
                f"{path}: label value {int(bad[0])} is outside 0..{folder.num_labels - 1} and is not the ignore "
                f"value {folder.ignore_index} ({folder.manifest_path} says num_labels={folder.num_labels}); "
                "the manifest does not describe these labels")
    return labels_digest(pairs)


def write_groundtruth_label_folder(dataset_root: str | Path, out: str | Path, split: str = "train",
                                   num_classes: int | None = None) -> Path:
    """Write ground-truth label maps of a CamVid-layout dataset as an auxiliary-label folder.

    Perfectly informative "auxiliary labels" (scope "global"), in the exact
    format of this contract; used by the tiny presets and the tests so
    pre-training runs without the auxlabels stage.
    """
    dataset_root, out = Path(dataset_root), Path(out)
    image_root = dataset_root / split
    images = [p.as_posix() for p in list_images(image_root)]
    info = read_json_object(dataset_root / "dataset.json") if (dataset_root / "dataset.json").is_file() else {}
    k = int(num_classes or info.get("num_classes", 0))
    if k <= 0:
        raise LabelFolderError(f"{dataset_root}: give num_classes (no dataset.json with num_classes)")
    ignore = 255
    for rel in images:
        gt = read_label(dataset_root / f"{split}annot" / label_rel(rel))
        lab = np.where(gt < k, gt, ignore).astype(np.uint8)
        write_label_png(output_file(out, f"{LABELS_DIR}/{label_rel(rel)}", f"image {image_root / rel}"), lab)
    labelled = LabelledImages(image_root.resolve(), images, compute_labels_sha256(out / LABELS_DIR, images))
    atomic_write_json(out / MANIFEST_NAME, label_folder_manifest(
        num_labels=k, scope="global", labelled=labelled, dtype="uint8", extractor="ground truth"))
    return out
