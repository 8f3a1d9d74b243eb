"""mmseg's IoUMetric, also returning the per-class IoU (mmseg only prints it as a table).

Registered in mmseg's ``METRICS`` as ``PerClassIoUMetric``; the fine-tune
configs use it as their ``val_evaluator`` so ``results.json`` can carry the
per-class IoU of the validation set. ``PosteriorIoUMetric`` adds the scores of
the implicit-posterior prediction argmax r where a test-time prior exists
(fine-tuning from priors, docs/finetune.md).
"""

from __future__ import annotations

import numpy as np

from auxseg.methods.implicit_posterior import SMOOTHING, posterior_labels
from auxseg.mmseg_compat import import_mmseg

import_mmseg()

from mmseg.evaluation import IoUMetric  # noqa: E402  (needs the compatibility layer first)
from mmseg.registry import METRICS  # noqa: E402

PER_CLASS_PREFIX = "IoU."


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """IoUMetric whose result dict also holds ``"IoU.<class name>"`` (percent, NaN when absent).

    A class that appears neither in the ground truth nor in the prediction of
    the whole validation set has an empty union and gets NaN; mIoU (from mmseg)
    is the mean over the other classes.
    """

    # No prefix, on purpose: the keys stay "mIoU", "IoU.<class>", as results.json and the hooks read them.
    # "" rather than None tells mmengine's BaseMetric so; with None it logs "The prefix is not set" in every
    # run. An empty prefix adds nothing to the keys (BaseMetric.evaluate prefixes only when it is truthy).
    default_prefix = ""

    def compute_metrics(self, results: list) -> dict[str, float]:
        metrics = super().compute_metrics(results)
        intersect = sum(r[0] for r in results).cpu().numpy().astype(np.float64)  # [C]
        union = sum(r[1] for r in results).cpu().numpy().astype(np.float64)  # [C]
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, intersect / union, np.nan)
        for name, value in zip(self.dataset_meta["classes"], iou):
            metrics[PER_CLASS_PREFIX + str(name)] = float(np.round(value * 100, 2))
        return metrics


@METRICS.register_module()
class PosteriorIoUMetric(PerClassIoUMetric):
    """PerClassIoUMetric of argmax q, plus ``mIoU_r``, ``aAcc_r``, ``mAcc_r`` of argmax r (implicit posterior).

    For each image with a test-time prior (``gt_prior`` in its data sample, see
    :mod:`finetune.priors`), r combines the model's q with that prior, the
    class mass taken over the image (:func:`auxseg.methods.implicit_posterior.posterior_labels`);
    both predictions are scored against the same full ground truth. Each
    result row carries the 4 areas of q and the 4 of r, so mmengine gathers
    both across processes.
    """

    def __init__(self, smoothing: float = SMOOTHING, **kwargs) -> None:
        super().__init__(**kwargs)
        self.smoothing = smoothing

    def process(self, data_batch: dict, data_samples) -> None:
        num_classes = len(self.dataset_meta["classes"])
        for sample in data_samples:
            pred = sample["pred_sem_seg"]["data"].squeeze()
            label = sample["gt_sem_seg"]["data"].squeeze().to(pred)
            row = tuple(self.intersect_and_union(pred, label, num_classes, self.ignore_index))
            if "gt_prior" not in sample:
                raise ValueError(f"{sample.get('img_path')}: PosteriorIoUMetric needs a test-time prior; add LoadPrior "
                                 "and PackSegInputsWithPrior to the val pipeline")
            logits, prior = sample["seg_logits"]["data"], sample["gt_prior"]["data"].to(sample["seg_logits"]["data"])
            if logits.shape != prior.shape:
                raise ValueError(f"{sample.get('img_path')}: logits {tuple(logits.shape)} and test-time prior "
                                 f"{tuple(prior.shape)} differ; LoadPrior must follow LoadAnnotations at full size")
            pred_r = posterior_labels(logits, prior, self.smoothing).to(pred)
            self.results.append(row + tuple(self.intersect_and_union(pred_r, label, num_classes, self.ignore_index)))

    def compute_metrics(self, results: list) -> dict[str, float]:
        metrics = super().compute_metrics([r[:4] for r in results])
        areas = [sum(r[i] for r in results) for i in range(4, 8)]  # intersect, union, pred, label of argmax r
        ret = self.total_area_to_metrics(*areas, ["mIoU"], self.nan_to_num, self.beta)
        metrics["aAcc_r"] = float(np.round(np.nanmean(ret["aAcc"]) * 100, 2))
        metrics["mIoU_r"] = float(np.round(np.nanmean(ret["IoU"]) * 100, 2))
        metrics["mAcc_r"] = float(np.round(np.nanmean(ret["Acc"]) * 100, 2))
        return metrics
