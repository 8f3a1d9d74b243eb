"""Second code paths for the numbers the stages report, so an end-to-end test can check a value, not a range.

Each function recomputes a reported number from the files on disk by another
route than the project's own code:

- :func:`labels_sha256_by_formula`: the label-folder digest from the formula in
  docs/contracts.md, with ``hashlib`` alone;
- :func:`pmiou_by_enumeration`: PmIoU from the label and ground-truth PNGs,
  with a confusion matrix from ``np.bincount`` and the one-to-one matching by
  enumerating every injective class -> cluster assignment (no scipy);
- :func:`pmiou_by_subset_search`: the same number for CamVid-sized K and M,
  by dynamic programming over the subsets of matched classes (no scipy);
- :func:`miou_by_inference`: a fine-tune's validation mIoU by running its
  saved checkpoint through mmseg's inference API image by image and counting
  pixels with numpy (no mmseg metric, no data loader);
- :func:`matched_label_agreement`: how many pixels two label folders put in
  the same cluster once their cluster ids are matched one to one (cluster ids
  are arbitrary, so two runs are compared after the best renaming).
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
from PIL import Image


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def labels_sha256_by_formula(labels_dir: Path, images: list[str]) -> str:
    """SHA-256 over the sorted lines ``"<label path relative to labels/>\\t<sha256 of the file>\\n"``."""
    lines = []
    for rel in images:
        label = Path(rel).with_suffix(".png").as_posix()
        lines.append(f"{label}\t{hashlib.sha256((labels_dir / label).read_bytes()).hexdigest()}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def _confusion(pairs, num_rows: int, num_classes: int, ignore_values, row_ignore: int | None) -> np.ndarray:
    """``[num_rows, num_classes]`` pixel counts; ground-truth ignore values are left out."""
    conf = np.zeros((num_rows, num_classes), np.int64)
    for pred, gt in pairs:
        keep = ~np.isin(gt, list(ignore_values))
        p, g = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
        if row_ignore is not None:
            p = np.where(p == row_ignore, num_rows - 1, p)
        conf += np.bincount(p * num_classes + g, minlength=num_rows * num_classes).reshape(num_rows, num_classes)
    return conf


def pmiou_by_enumeration(files: list[tuple[Path, Path]], num_labels: int, num_classes: int,
                         ignore_values=(255,), label_ignore: int = 255) -> float:
    """PmIoU (percent) as docs/auxlabels.md defines it, by brute force over the one-to-one matchings.

    Auxiliary-label pixels with ``label_ignore`` count as misses (an extra row);
    IoU of cluster k and class c = inter / (pixels of k + pixels of c - inter);
    the best injective matching of the present classes to clusters, averaged over
    the present classes (an unmatched class scores 0). Meant for small K and M.
    """
    pairs = [(_png(label), _png(gt)) for label, gt in files]  # (auxiliary label PNG, ground-truth PNG)
    conf = _confusion(pairs, num_labels + 1, num_classes, ignore_values, label_ignore)
    inter = conf[:-1].astype(np.float64)
    union = inter.sum(1, keepdims=True) + conf.sum(0, keepdims=True) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    present = [c for c in range(num_classes) if conf[:, c].sum() > 0]
    best = 0.0
    slots = list(range(num_labels)) + [None] * len(present)  # None: the class stays unmatched
    for assign in itertools.permutations(slots, len(present)):
        taken = [k for k in assign if k is not None]
        if len(taken) != len(set(taken)):
            continue
        best = max(best, sum(iou[k, c] for k, c in zip(assign, present) if k is not None))
    return 100.0 * best / len(present)


def pmiou_by_subset_search(files: list[tuple[Path, Path]], num_labels: int, num_classes: int,
                           ignore_values=(255,), label_ignore: int = 255) -> float:
    """PmIoU (percent) from the label and ground-truth PNGs by a second route (no project code, no scipy).

    The confusion matrix by ``np.bincount`` (auxiliary-label pixels with ``label_ignore`` count as misses),
    IoU = inter / (pixels of k + pixels of c - inter), and the best one-to-one matching of the present
    classes to clusters by dynamic programming over the subsets of matched classes (exact: each cluster in
    turn is left out or takes one class not yet taken). The enumeration of every matching
    (:func:`pmiou_by_enumeration`) is the same definition, but for CamVid's 17 clusters and 11 classes it has ~10^15 of them.
    """
    conf = np.zeros((num_labels + 1, num_classes), np.int64)
    for label_path, gt_path in files:
        label, gt = _png(label_path).astype(np.int64), _png(gt_path)
        keep = ~np.isin(gt, list(ignore_values))
        rows = np.where(label == label_ignore, num_labels, label)[keep]
        conf += np.bincount(rows * num_classes + gt[keep], minlength=conf.size).reshape(conf.shape)
    inter = conf[:-1].astype(np.float64)
    union = inter.sum(1, keepdims=True) + conf.sum(0, keepdims=True) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    present = [c for c in range(num_classes) if conf[:, c].sum() > 0]
    best = {0: 0.0}  # bit i of the key: present[i] is matched -> the best sum of IoU so far
    for k in range(num_labels):
        step = dict(best)
        for taken, total in best.items():
            for i, c in enumerate(present):
                if not taken >> i & 1:
                    key = taken | 1 << i
                    step[key] = max(step.get(key, 0.0), total + iou[k, c])
        best = step
    return 100.0 * max(best.values()) / len(present)


def matched_label_agreement(a: Path, b: Path, num_labels: int, label_ignore: int = 255) -> float:
    """Fraction of pixels that label folders ``a`` and ``b`` (their ``labels/`` PNGs, same names) put in
    matched clusters, under the one-to-one renaming of ``b``'s ids that maximises it (scipy's
    ``linear_sum_assignment``). Pixels either folder leaves at ``label_ignore`` count as disagreements."""
    from scipy.optimize import linear_sum_assignment

    names = sorted(p.relative_to(a / "labels") for p in (a / "labels").rglob("*.png"))
    assert names == sorted(p.relative_to(b / "labels") for p in (b / "labels").rglob("*.png")), "different images"
    counts = np.zeros((num_labels, num_labels), np.int64)
    total = 0
    for name in names:
        x, y = _png(a / "labels" / name).astype(np.int64), _png(b / "labels" / name).astype(np.int64)
        total += x.size
        keep = (x != label_ignore) & (y != label_ignore)
        counts += np.bincount(x[keep] * num_labels + y[keep], minlength=num_labels ** 2).reshape(num_labels, -1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum()) / total


def miou_by_inference(run: Path | object, checkpoint: Path, num_classes: int, ignore_index: int = 255) -> dict:
    """mIoU (percent, two decimals as results.json) of ``checkpoint`` on the val images of its fine-tune run.

    ``run`` is the run's work_dir (its saved ``mmseg_config.py`` is read) or an
    mmengine ``Config``. The config gives the val folders; this predicts every
    val image with ``mmseg.apis.inference_model`` (resized back to the image's
    size, as the validation does) and averages IoU over the classes whose union is
    not empty (mmseg's convention: classes absent from both count as NaN).
    """
    from mmengine.config import Config

    from auxseg.checkpoint_io import allow_mmengine_checkpoints
    from auxseg.mmseg_compat import import_mmseg

    import_mmseg()
    allow_mmengine_checkpoints()
    from mmseg.apis import inference_model, init_model

    cfg = Config.fromfile(str(run / "mmseg_config.py")) if isinstance(run, Path) else run
    ds = cfg.val_dataloader.dataset
    img_dir = Path(ds.data_root) / ds.data_prefix.img_path
    gt_dir = Path(ds.data_root) / ds.data_prefix.seg_map_path
    model = init_model(cfg, str(checkpoint), device="cpu")
    pairs = []
    for img in sorted(img_dir.iterdir()):
        pred = inference_model(model, str(img)).pred_sem_seg.data[0].numpy()
        pairs.append((pred, _png(gt_dir / img.with_suffix(".png").name)))
    conf = _confusion(pairs, num_classes, num_classes, [ignore_index], None)
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return {"mIoU": round(100.0 * float(np.nanmean(iou)), 2),
            "per_class_iou": [None if np.isnan(v) else round(100.0 * float(v), 2) for v in iou]}
