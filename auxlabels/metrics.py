"""Proxy mIoU (PmIoU): how well auxiliary labels match ground-truth classes (method.md, "Proxy mIoU").

A (K+1) x M confusion matrix is accumulated over the evaluated images (the extra
row counts ground-truth pixels whose auxiliary label is "ignore": they count as
misses, so dropping outliers cannot inflate the score). PmIoU matches clusters to
classes one-to-one with the Hungarian algorithm on the K x M IoU matrix and
averages the matched IoUs over the M classes (unmatched classes score 0); the
supplement's numbers (superpixel-only labels under 1) fit this reading. The
many-to-one "majority" variant maps every cluster to its most overlapping class
and is reported as a diagnostic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from auxseg.errors import AuxsegError


class GroundTruthError(AuxsegError, ValueError):
    """A ground-truth label map with a value that is neither a class nor an ignore value; names the file."""


def check_ground_truth(
    gt: np.ndarray, num_classes: int, gt_ignore: list[int] | tuple[int, ...], gt_path: str | Path | None = None
) -> None:
    """Raise :class:`GroundTruthError` unless every value of ``gt`` is in ``0..num_classes-1`` or ``gt_ignore``.

    The one-line message names the file (when given), the first bad value, where it is
    (row, column of its first pixel) and how many pixels hold it.
    """
    valid = ~np.isin(gt, np.asarray(list(gt_ignore), dtype=np.int64))
    bad = valid & ((gt < 0) | (gt >= num_classes))
    if not bad.any():
        return
    values = np.unique(gt[bad])
    value = int(values[0])
    first = np.argwhere(gt == value)[0] if gt.ndim == 2 else None
    where = f" at row {int(first[0])}, column {int(first[1])}" if first is not None else ""
    count = int((gt == value).sum())
    others = f"; {len(values) - 1} other bad values up to {int(values[-1])}" if len(values) > 1 else ""
    name = f"ground truth {gt_path}" if gt_path is not None else "ground truth"
    raise GroundTruthError(
        f"{name}: value {value}{where} ({count} pixel{'s' if count != 1 else ''}) is outside 0..{num_classes - 1} "
        f"and not an ignore value {sorted(int(v) for v in gt_ignore)}{others} "
        "(check num_classes and gt_ignore_values)"
    )


def confusion(
    aux: np.ndarray,
    gt: np.ndarray,
    num_labels: int,
    num_classes: int,
    aux_ignore: int,
    gt_ignore: list[int] | tuple[int, ...],
    gt_path: str | Path | None = None,
) -> np.ndarray:
    """Count pixels per (auxiliary label, class) pair.

    Args:
        aux: int ``[H, W]`` auxiliary labels ``0..K-1`` or ``aux_ignore``.
        gt: int ``[H, W]`` ground truth ``0..M-1`` or one of ``gt_ignore``.
        num_labels: K; num_classes: M.
        gt_path: the file ``gt`` was read from, named in the error when a value is out of range.
    Returns:
        int64 ``[K + 1, M]``; row K holds pixels whose auxiliary label is ignore.
    Raises:
        GroundTruthError: a ground-truth value outside ``0..M-1`` and not in ``gt_ignore``.
    """
    if aux.shape != gt.shape:
        raise ValueError(f"auxiliary labels {aux.shape} and ground truth {gt.shape} differ in shape")
    check_ground_truth(gt, num_classes, gt_ignore, gt_path)
    a = aux.ravel().astype(np.int64)
    g = gt.ravel().astype(np.int64)
    valid = ~np.isin(g, np.asarray(list(gt_ignore), dtype=np.int64))
    a = np.where(a == aux_ignore, num_labels, a)[valid]
    if a.size and (a.min() < 0 or a.max() > num_labels):
        raise ValueError(f"auxiliary label outside 0..{num_labels - 1}")
    counts = np.bincount(a * num_classes + g[valid], minlength=(num_labels + 1) * num_classes)
    return counts.reshape(num_labels + 1, num_classes)


def iou_matrix(conf: np.ndarray) -> np.ndarray:
    """IoU of every cluster with every class from a ``[K + 1, M]`` confusion matrix; returns ``[K, M]``."""
    inter = conf[:-1].astype(np.float64)  # [K, M]
    cluster_total = inter.sum(axis=1, keepdims=True)  # [K, 1] pixels of cluster k (valid GT only)
    class_total = conf.sum(axis=0, keepdims=True).astype(np.float64)  # [1, M] incl. ignored aux
    union = cluster_total + class_total - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def pmiou(conf: np.ndarray, class_names: list[str] | None = None) -> dict:
    """PmIoU report from a ``[K + 1, M]`` confusion matrix.

    Returns a dict with ``pmiou`` (Hungarian one-to-one, percent, averaged over
    classes present in the ground truth), ``per_class_iou`` (class -> percent),
    ``matching`` (class -> cluster id or None), ``majority_miou`` and
    ``majority_per_class_iou`` (many-to-one diagnostic), ``num_pixels``, and
    ``ignored_aux_share`` (share of evaluated pixels labelled ignore).
    """
    from scipy.optimize import linear_sum_assignment  # imported here: workers import this module too

    k = conf.shape[0] - 1
    m = conf.shape[1]
    names = list(class_names) if class_names else [str(i) for i in range(m)]
    present = conf.sum(axis=0) > 0  # classes that occur in the evaluated ground truth
    iou = iou_matrix(conf)  # [K, M]
    rows, cols = linear_sum_assignment(-iou)
    matched = np.zeros(m)
    matching: dict[str, int | None] = {n: None for n in names}
    for r, c in zip(rows, cols):
        matched[c] = iou[r, c]
        matching[names[c]] = int(r)

    # many-to-one: each cluster votes for its most overlapping class
    owner = conf[:-1].argmax(axis=1)  # [K]
    merged = np.zeros((m + 1, m), dtype=np.int64)
    for cluster in range(k):
        merged[owner[cluster]] += conf[cluster]
    merged[m] = conf[k]
    majority = np.diag(iou_matrix(merged))

    def mean(values: np.ndarray) -> float:
        return float(100.0 * values[present].mean()) if present.any() else float("nan")

    return {
        "pmiou": mean(matched),
        "per_class_iou": {n: round(100.0 * float(v), 4) if p else None for n, v, p in zip(names, matched, present)},
        "matching": matching,
        "majority_miou": mean(majority),
        "majority_per_class_iou": {n: round(100.0 * float(v), 4) if p else None for n, v, p in zip(names, majority, present)},
        "num_labels": k,
        "num_classes": m,
        "classes_present": int(present.sum()),
        "num_pixels": int(conf.sum()),
        "ignored_aux_share": float(conf[k].sum() / max(1, conf.sum())),
    }


def same_pixel_bound(gt_dir: str | Path, ignore: list[int], num_classes: int) -> float:
    """PmIoU upper bound (percent) of labelling strategy #1, one label per pixel, on the label PNGs in ``gt_dir``.

    With one-to-one matching each class matches a single pixel, so its IoU is at
    most ``1 / n_c``; the bound is the mean of that over the classes present. A value
    outside ``0..num_classes-1`` and ``ignore`` raises :class:`GroundTruthError` naming the file.
    """
    from auxseg.images import list_images, read_label

    gt_dir = Path(gt_dir)
    counts = np.zeros(num_classes, np.int64)
    for rel in list_images(gt_dir):
        gt = read_label(gt_dir / rel)
        check_ground_truth(gt, num_classes, ignore, gt_dir / rel)
        valid = ~np.isin(gt, ignore)
        counts += np.bincount(gt[valid], minlength=num_classes)[:num_classes]
    present = counts > 0
    return float(100.0 * np.mean(1.0 / counts[present]))


def format_report(report: dict) -> str:
    """A short human-readable PmIoU table."""
    lines = [
        f"PmIoU (Hungarian, one-to-one): {report['pmiou']:.2f}   "
        f"majority (many-to-one): {report['majority_miou']:.2f}   "
        f"K={report['num_labels']} M={report['num_classes']} pixels={report['num_pixels']}",
        f"{'class':<16}{'IoU':>8}{'cluster':>9}{'majority IoU':>14}",
    ]
    for name, value in report["per_class_iou"].items():
        maj = report["majority_per_class_iou"][name]
        cluster = report["matching"][name]
        lines.append(
            f"{name:<16}{'-' if value is None else f'{value:.2f}':>8}"
            f"{'-' if cluster is None else cluster:>9}{'-' if maj is None else f'{maj:.2f}':>14}"
        )
    return "\n".join(lines)
