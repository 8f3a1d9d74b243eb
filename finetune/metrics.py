"""mmseg's IoUMetric, also returning the per-class IoU (mmseg only prints it as a table).

Registered in mmseg's ``METRICS`` as ``PerClassIoUMetric``; the fine-tune
configs use it as their ``val_evaluator`` so ``results.json`` can carry the
per-class IoU of the validation set.
"""

from __future__ import annotations

import numpy as np

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

    def compute_metrics(self, results: list) -> dict[str, float]:
        metrics = super().compute_metrics(results)
        intersect = sum(r[0] for r in results).cpu().numpy().astype(np.float64)  # [C]
        union = sum(r[1] for r in results).cpu().numpy().astype(np.float64)  # [C]
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, intersect / union, np.nan)
        for name, value in zip(self.dataset_meta["classes"], iou):
            metrics[PER_CLASS_PREFIX + str(name)] = float(np.round(value * 100, 2))
        return metrics
