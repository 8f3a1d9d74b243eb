"""Per-pixel priors as fine-tuning targets: built from coarse labels or read from a prior folder.

How a prior travels through mmseg (docs/finetune.md, "Fine-tuning from priors"):

1. :class:`LoadPrior` (a pipeline transform, right after ``LoadAnnotations``)
   builds the prior of the image, float ``[H, W, K]`` at the label map's
   resolution, stores it as ``results['gt_prior']`` and adds it to
   ``seg_fields``, so mmseg's ``Resize``/``RandomResize``, ``RandomCrop`` and
   ``RandomFlip`` move it with the labels (nearest neighbour, like a label map).
   With ``as_labels=True`` (training) it also replaces ``gt_seg_map`` by the
   argmax of the prior (:func:`prior_to_labels`), so the full labels never
   reach the training step.
2. :class:`PackSegInputsWithPrior` packs it into the data sample as the
   ``gt_prior`` ``PixelData`` ``[K, H, W]``.
3. The ``Prior*`` decode heads of :mod:`finetune.losses` hand it (zero-padded
   like the batch) to the ``QRLoss`` / ``RQLoss`` losses; pixels whose prior row
   is all zero are ignored.

:func:`coarse_prior` is the pure construction of the ``coarse`` targets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.special import ndtr

from auxseg.contracts.label_folder import LabelFolderError
from auxseg.contracts.priors import PRIORS_DIR, prior_rel, read_prior
from auxseg.mmseg_compat import import_mmseg

import_mmseg()

from mmcv.transforms.base import BaseTransform  # noqa: E402  (needs the compatibility layer first)
from mmengine.structures import PixelData  # noqa: E402
from mmseg.datasets.transforms import PackSegInputs  # noqa: E402
from mmseg.registry import TRANSFORMS  # noqa: E402

IGNORE_INDEX = 255
TRUNCATE = 4.0  # the Gaussian is cut at 4 sigma, as scipy.ndimage.gaussian_filter does by default


def _block_weights(n: int, factor: int, sigma: float) -> np.ndarray:
    """``[n, nb]``: the weight of block b (pixels ``[b*factor, (b+1)*factor)``) at pixel n's centre.

    sigma > 0: the integral of a Gaussian of std ``sigma`` centred on the pixel
    over the block, i.e. one axis of a Gaussian blur of the block-constant map,
    cut at :data:`TRUNCATE` sigma. sigma = 0: 1 for the block holding the pixel.
    """
    nb = -(-n // factor)
    if sigma == 0:
        return (np.arange(n)[:, None] // factor == np.arange(nb)[None, :]).astype(np.float64)
    lo = np.arange(nb, dtype=np.float64) * factor  # [nb]
    hi = np.minimum(lo + factor, n)  # the last block may be partial
    c = np.arange(n, dtype=np.float64)[:, None] + 0.5  # pixel centres [n, 1]
    w = ndtr((hi - c) / sigma) - ndtr((lo - c) / sigma)  # [n, nb]
    gap = np.maximum(np.maximum(lo - c, c - hi), 0.0)  # distance from the pixel centre to the block
    w[gap > TRUNCATE * sigma] = 0.0
    return w


def coarse_prior(label: np.ndarray, num_classes: int, factor: int, sigma: float) -> np.ndarray:
    """A soft prior from a label map downsampled ``factor`` times: float32 ``[K, H, W]``.

    1. Blocks of ``factor x factor`` pixels (partial blocks at the right and
       bottom edges) take the majority of their labelled pixels; values outside
       ``0..K-1`` (the ignore value 255) do not vote, a block with no labelled
       pixel has no label, ties go to the smaller class id.
    2. The one-hot maps of the block labels, at the label map's resolution, are
       blurred with a Gaussian of std ``sigma`` pixels (0: no blur, the hard
       coarse label), cut at 4 sigma and zero outside the image.
    3. Each pixel is renormalised over the K classes. A pixel with no labelled
       block within 4 sigma (or inside an unlabelled block when sigma = 0) gets
       an all-zero row: no information, ignored by the losses.

    The blur is exact and cheap: the block-constant map is separable, so each
    class is ``A_y @ onehot_blocks @ A_x^T`` (:func:`_block_weights`).

    Args:
        label: int ``[H, W]``, classes ``0..K-1``, anything else ignored.
        num_classes: K.
        factor: block size in pixels (>= 1); 1 with sigma 0 gives the one-hot labels.
        sigma: Gaussian std in pixels of the label map (>= 0). The land-cover
            recipe blurs 30 m labels over 1 m pixels with std 31 px
            (supplement E.1.2), hence the default ``sigma = factor``.
    """
    lab = np.asarray(label).astype(np.int64)
    if lab.ndim != 2 or factor < 1 or sigma < 0:
        raise ValueError(f"coarse_prior needs a [H, W] label map, factor >= 1 and sigma >= 0; got {lab.shape}, "
                         f"{factor}, {sigma}")
    h, w = lab.shape
    k = int(num_classes)
    hb, wb = -(-h // factor), -(-w // factor)
    valid = (lab >= 0) & (lab < k)
    block = (np.arange(h) // factor)[:, None] * wb + (np.arange(w) // factor)[None, :]  # [H, W] block id
    counts = np.bincount(block[valid] * k + lab[valid], minlength=hb * wb * k).reshape(hb * wb, k)
    onehot = np.zeros((hb * wb, k))
    has = counts.sum(axis=1) > 0
    onehot[np.nonzero(has)[0], counts.argmax(axis=1)[has]] = 1.0  # argmax: ties -> smaller class id
    onehot = onehot.T.reshape(k, hb, wb)
    ay, ax = _block_weights(h, factor, sigma), _block_weights(w, factor, sigma)  # [H, hb], [W, wb]
    prior = ay @ onehot @ ax.T  # [K, H, W]
    total = prior.sum(axis=0, keepdims=True)
    prior = np.where(total > 1e-12, prior / np.maximum(total, 1e-12), 0.0)
    return prior.astype(np.float32)


def prior_to_labels(prior: np.ndarray) -> np.ndarray:
    """argmax over K of a prior ``[K, H, W]`` as uint8 ``[H, W]``; 255 where it has no single maximum.

    A row of zeros (no information) and a tie at the top (e.g. a uniform prior,
    or 0.5/0.5, within 1e-6) have no argmax and are ignored.
    """
    labels = prior.argmax(axis=0).astype(np.uint8)
    if prior.shape[0] > 1:
        top2 = -np.partition(-prior, 1, axis=0)[:2]  # [2, H, W]: the largest and the second largest
        tied = top2[0] - top2[1] < 1e-6
    else:
        tied = np.zeros(prior.shape[1:], dtype=bool)
    labels[tied | (prior.sum(axis=0) <= 0)] = IGNORE_INDEX
    return labels


@TRANSFORMS.register_module()
class LoadPrior(BaseTransform):
    """Build the image's prior ``gt_prior`` ``[H, W, K]`` (a seg field); put it after ``LoadAnnotations``.

    Args:
        kind: ``coarse`` (:func:`coarse_prior` of the loaded label map),
            ``labels`` (one-hot of the label map: coarse with factor 1 and no
            blur) or ``folder`` (the prior file of the image in a label folder
            with ``priors/``, read with ``auxseg.contracts.priors.read_prior``
            and resized to the label map by the folder's stride).
        num_classes: K; a prior file of another K is refused.
        factor, blur_sigma: of ``coarse``; ``blur_sigma=None`` means ``factor``.
        folder: ``folder`` only: ``dict(root=..., img_dir=..., stride=...)``, the label folder, the image
            folder its relative paths start from (``<data_root>/<img_path>``) and the folder's
            ``prior.stride`` (manifest) or None.
        as_labels: replace ``gt_seg_map`` by the prior's argmax (training:
            the full labels are not a target); False keeps them (validation).
    """

    def __init__(self, kind: str, num_classes: int, factor: int = 16, blur_sigma: float | None = None,
                 folder: dict | None = None, as_labels: bool = True) -> None:
        if kind not in ("coarse", "labels", "folder"):
            raise ValueError(f"LoadPrior: kind must be coarse, labels or folder, got {kind!r}")
        if kind == "folder" and (not folder or folder.get("root") is None or folder.get("img_dir") is None):
            raise ValueError("LoadPrior: kind='folder' needs folder=dict(root=..., img_dir=..., stride=...)")
        self.kind, self.num_classes, self.as_labels = kind, int(num_classes), as_labels
        self.factor = 1 if kind == "labels" else int(factor)
        self.sigma = 0.0 if kind == "labels" else float(self.factor if blur_sigma is None else blur_sigma)
        folder = folder or {}
        self.folder, self.img_dir, self.stride = folder.get("root"), folder.get("img_dir"), folder.get("stride")

    def prior_path(self, img_path: str) -> Path:
        """The prior file of an image: ``<folder>/priors/<rel>.npz``, rel relative to ``img_dir``."""
        try:
            rel = Path(img_path).resolve().relative_to(Path(self.img_dir).resolve())
        except ValueError:
            raise LabelFolderError(f"{img_path}: not under {self.img_dir}, so it has no prior in {self.folder}") from None
        return Path(self.folder) / PRIORS_DIR / prior_rel(rel)

    def transform(self, results: dict) -> dict:
        if results.get("gt_seg_map") is None:
            raise ValueError("LoadPrior needs the label map: put it after LoadAnnotations in the pipeline")
        label = results["gt_seg_map"]
        if self.kind == "folder":
            prior = read_prior(self.prior_path(results["img_path"]), self.num_classes, size=label.shape,
                               stride=self.stride)
        else:
            prior = coarse_prior(label, self.num_classes, self.factor, self.sigma)
        if self.as_labels:
            results["gt_seg_map"] = prior_to_labels(prior)
        results["gt_prior"] = np.ascontiguousarray(prior.transpose(1, 2, 0), dtype=np.float32)  # [H, W, K]
        results.setdefault("seg_fields", []).append("gt_prior")
        return results

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(kind={self.kind!r}, num_classes={self.num_classes}, factor={self.factor}, "
                f"blur_sigma={self.sigma}, folder={self.folder!r}, as_labels={self.as_labels})")


@TRANSFORMS.register_module()
class PackSegInputsWithPrior(PackSegInputs):
    """mmseg's ``PackSegInputs``, plus ``gt_prior`` as ``PixelData`` ``[K, H, W]`` float32 when present."""

    def transform(self, results: dict) -> dict:
        packed = super().transform(results)
        prior = results.get("gt_prior")
        if prior is not None:
            if prior.ndim == 2:  # cv2 drops a single channel on resize
                prior = prior[:, :, None]
            packed["data_samples"].gt_prior = PixelData(
                data=torch.from_numpy(np.ascontiguousarray(prior.transpose(2, 0, 1), dtype=np.float32)))
        return packed


# ----------------------------------------------------------------------------- configuring a run

# transforms checked to carry a seg field such as gt_prior along with the image (nearest neighbour for maps)
PRIOR_SAFE_TRANSFORMS = ("LoadImageFromFile", "LoadAnnotations", "Resize", "RandomResize", "RandomCrop",
                         "RandomFlip", "PhotoMetricDistortion", "PackSegInputs")


def _with_prior(pipeline: list, load_prior: dict, where: str) -> list:
    """``pipeline`` with ``load_prior`` after LoadAnnotations and PackSegInputs -> PackSegInputsWithPrior."""
    from auxseg.config import ConfigError

    kinds = [step["type"] for step in pipeline]
    if "LoadAnnotations" not in kinds or "PackSegInputs" not in kinds:
        raise ConfigError(f"the {where} pipeline of the mmseg config needs LoadAnnotations and PackSegInputs for priors")
    unknown = [k for k in kinds if k not in PRIOR_SAFE_TRANSFORMS]
    if unknown:
        raise ConfigError(f"the {where} pipeline's {unknown[0]} is not known to move a prior with the image "
                          f"(supported with priors: {', '.join(PRIOR_SAFE_TRANSFORMS)})")
    out = []
    for step in pipeline:
        step = dict(step, type="PackSegInputsWithPrior") if step["type"] == "PackSegInputs" else dict(step)
        out.append(step)
        if step["type"] == "LoadAnnotations":
            out.append(dict(load_prior))
    return out


def _folder_transform(path: Path, img_dir: Path, num_classes: int, images: list[str], key: str) -> dict:
    """LoadPrior of kind folder for a label folder with priors; checks K and that every image has its prior."""
    from auxseg.config import ConfigError
    from auxseg.contracts.label_folder import read_label_folder

    folder = read_label_folder(path, image_root=img_dir, verify_hash=False)
    if not folder.has_priors:
        raise ConfigError(f"{key}: {folder.root} has no priors (its manifest has no 'prior' key)")
    if folder.num_labels != num_classes:
        raise ConfigError(f"{key}: the priors of {folder.root} have K={folder.num_labels} labels, the dataset "
                          f"has {num_classes} classes; they must match")
    missing = [rel for rel in images if not folder.prior_path(rel).is_file()]
    if missing:
        raise ConfigError(f"{key}: {len(missing)} images have no prior, e.g. {folder.prior_path(missing[0])}")
    return dict(type="LoadPrior", kind="folder", num_classes=num_classes,
                folder=dict(root=str(folder.root.resolve()), img_dir=str(img_dir.resolve()), stride=folder.prior_stride))


def _image_dir(ds) -> Path:
    return Path(ds.get("data_root") or "") / ds.data_prefix.get("img_path", "")


def configure_targets(cfg, mmcfg, train_images: list[str], paths) -> dict | None:
    """Point the mmseg config (in place) at ``cfg.targets`` / ``cfg.loss``; return what results.json records.

    - train pipeline: LoadPrior (``as_labels``: gt_seg_map becomes the prior's argmax) + PackSegInputsWithPrior;
    - loss qr/rq: every decode/auxiliary head becomes its ``Prior*`` variant with QRLoss/RQLoss, keeping its
      loss_weight; loss ce keeps mmseg's CrossEntropyLoss, now on the argmax of the prior;
    - validation stays on the full labels; with a test-time prior (coarse: built the same way from the
      validation labels; prior_folder: ``targets.val_folder``) the evaluator also scores argmax r (mIoU_r).

    ``train_images`` are the training images' paths relative to the train image folder (checked for priors);
    ``paths``: the run's :class:`~finetune.config.FinetunePaths` (the prior folders).
    Returns None for plain labels with cross-entropy (nothing changes).
    """
    from finetune.mmseg_config import inner_dataset

    t, loss = cfg.targets, cfg.loss
    if t.kind == "labels" and loss.name == "ce":
        return None
    num_classes = int(mmcfg.model.decode_head.num_classes)
    train_ds = inner_dataset(mmcfg.train_dataloader)
    if t.kind == "prior_folder":
        load = _folder_transform(paths.targets_folder, _image_dir(train_ds), num_classes, train_images, "targets.folder")
    else:
        load = dict(type="LoadPrior", kind=t.kind, num_classes=num_classes, factor=t.factor, blur_sigma=t.blur_sigma)
    train_ds.pipeline = _with_prior(train_ds.pipeline, dict(load, as_labels=True), "train")
    if loss.name in ("qr", "rq"):
        _use_prior_heads(mmcfg.model, loss)
    val_load = _val_prior(t, paths, mmcfg, load, num_classes)
    if val_load is not None:
        _score_argmax_r(mmcfg, val_load, loss.smoothing)
    imports = list(mmcfg.get("custom_imports", {}).get("imports", []))
    mmcfg.custom_imports = dict(imports=imports + [m for m in ("finetune.priors", "finetune.losses", "finetune.metrics")
                                                   if m not in imports], allow_failed_imports=False)
    return {"kind": t.kind, "factor": t.factor if t.kind == "coarse" else None,
            "blur_sigma": (float(t.factor if t.blur_sigma is None else t.blur_sigma) if t.kind == "coarse" else None),
            "folder": (load.get("folder") or {}).get("root"), "val_prior": None if val_load is None else val_load["kind"],
            "loss": loss.name, "warmup_iters": loss.warmup_iters, "mass_momentum": loss.mass_momentum,
            "smoothing": loss.smoothing}


def _use_prior_heads(model, loss) -> None:
    """Every decode / auxiliary head becomes its ``Prior*`` variant with QRLoss / RQLoss, keeping its loss_weight."""
    from auxseg.config import ConfigError
    from finetune.losses import PRIOR_HEADS

    heads = [("decode_head", model.decode_head)]
    aux = model.get("auxiliary_head")
    heads += [("auxiliary_head", h) for h in (aux if isinstance(aux, list) else [aux] if aux else [])]
    for where, head in heads:
        if head.type not in PRIOR_HEADS:
            raise ConfigError(f"model.{where}: {head.type} has no prior-loss variant (supported: "
                              f"{', '.join(PRIOR_HEADS)}); loss.name={loss.name} needs one")
        old = head.get("loss_decode") or {}
        if isinstance(old, list):
            raise ConfigError(f"model.{where}.loss_decode: a list of losses; loss.name={loss.name} replaces one")
        head.type = PRIOR_HEADS[head.type]
        head.loss_decode = dict(type="QRLoss" if loss.name == "qr" else "RQLoss",
                                loss_weight=old.get("loss_weight", 1.0), smoothing=loss.smoothing,
                                mass_momentum=loss.mass_momentum, warmup_iters=loss.warmup_iters)


def _val_prior(t, paths, mmcfg, load: dict, num_classes: int) -> dict | None:
    """The validation images' LoadPrior (as_labels=False), or None without a test-time prior."""
    from finetune.mmseg_config import dataset_default, inner_dataset

    if t.kind == "coarse":
        return dict(load, as_labels=False)
    if t.kind == "prior_folder" and paths.targets_val_folder is not None:
        val_ds = inner_dataset(mmcfg.val_dataloader)
        val_dir = _image_dir(val_ds)
        suffix = dataset_default(val_ds, "img_suffix")
        val_images = sorted(p.relative_to(val_dir).as_posix() for p in val_dir.rglob(f"*{suffix}"))
        return dict(_folder_transform(paths.targets_val_folder, val_dir, num_classes, val_images,
                                      "targets.val_folder"), as_labels=False)
    return None


def _score_argmax_r(mmcfg, val_load: dict, smoothing: float) -> None:
    """The val pipeline loads the test-time prior; the evaluator also scores argmax r (PosteriorIoUMetric)."""
    from auxseg.config import ConfigError
    from finetune.mmseg_config import inner_dataset

    val_ds = inner_dataset(mmcfg.val_dataloader)
    val_ds.pipeline = _with_prior(val_ds.pipeline, val_load, "val")
    evaluator = mmcfg.val_evaluator
    if evaluator.get("type") not in ("PerClassIoUMetric", "IoUMetric"):
        raise ConfigError(f"val_evaluator {evaluator.get('type')!r}: mIoU_r needs an IoUMetric")
    evaluator.type = "PosteriorIoUMetric"
    evaluator.smoothing = smoothing
