"""The fit phase's result, typed: centroids, reference points, outlier thresholds and what the fit saw.

Saved as ``fit_state.npz`` (for a resumed run and the other ranks) beside
``centroids.npy`` (for consumers). The file holds the arrays and an ``info``
JSON string: the :attr:`FitState.summary` entries, then ``soft_distance_scale``
when there is one, then ``num_labels`` -- the order the manifest's
``clustering`` entry repeats.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from auxseg.files import DataFileError, atomic_path, read_npz

FIT_STATE = "fit_state.npz"


@dataclass
class FitState:
    """What the assignment pass and the manifest need from the fit (method.md, Stage 1 steps 2-3)."""

    centroids: np.ndarray  # float32 [K, D]: K-means centroids, or DBSCAN's normalised cluster means
    refs: np.ndarray  # float32 [R, D]: the points assignment compares against (K-means: the centroids)
    ref_labels: np.ndarray  # int64 [R]: the label of each reference point
    thresholds: np.ndarray  # [K] outlier distance per label (inf: no outliers)
    num_labels: int  # K
    soft_distance_scale: float | None = None  # soft labels' distance unit m (None without soft labels)
    # what the fit saw, for the manifest: n_fit_images, fit_pixels, calib_pixels, pixels_per_image (DBSCAN:
    # eps, core_samples)
    summary: dict = field(default_factory=dict)

    @property
    def info(self) -> dict:
        """The summary with ``soft_distance_scale`` (when set) and ``num_labels``: the saved ``info`` entry."""
        extra = {} if self.soft_distance_scale is None else {"soft_distance_scale": self.soft_distance_scale}
        return {**self.summary, **extra, "num_labels": int(self.num_labels)}

    def save(self, out: Path) -> None:
        """Write ``centroids.npy`` (for consumers) and ``fit_state.npz`` (for resuming), each atomically."""
        with atomic_path(out / "centroids.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, self.centroids)
        with atomic_path(out / FIT_STATE) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, centroids=self.centroids, refs=self.refs, ref_labels=self.ref_labels,
                         thresholds=self.thresholds, info=json.dumps(self.info))

    @classmethod
    def load(cls, out: Path) -> FitState:
        """The fit state :meth:`save` wrote to ``out``; a damaged file raises :class:`DataFileError` naming it."""
        path = out / FIT_STATE
        arrays = read_npz(path)
        try:
            info = json.loads(str(arrays["info"]))
            num_labels = int(info.pop("num_labels"))
        except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as err:  # absent, not JSON, not a dict
            raise DataFileError(f"{path}: no readable 'info' entry ({type(err).__name__}); "
                                "delete the file to refit") from err
        return cls(centroids=arrays["centroids"], refs=arrays["refs"], ref_labels=arrays["ref_labels"],
                   thresholds=arrays["thresholds"], num_labels=num_labels,
                   soft_distance_scale=info.pop("soft_distance_scale", None), summary=info)
