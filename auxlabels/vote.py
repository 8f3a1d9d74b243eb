"""Superpixel majority vote (method.md, Stage 1 step 5): pure numpy, outlier pixels do not vote."""

from __future__ import annotations

import numpy as np


def superpixel_vote(labels: np.ndarray, segments: np.ndarray, num_labels: int, ignore_index: int) -> np.ndarray:
    """Give every superpixel the majority label of its non-ignored pixels.

    Args:
        labels: int ``[H, W]`` cluster ids in ``0..num_labels-1`` or ``ignore_index``.
        segments: int ``[H, W]`` superpixel ids (any non-negative integers).
        num_labels: K.
        ignore_index: value of pixels that do not vote (outliers); a superpixel with
            no voting pixel becomes ``ignore_index`` as a whole.
    Returns:
        ``[H, W]`` voted labels, same dtype as ``labels``. Ties go to the smallest label id.
    """
    if labels.shape != segments.shape:
        raise ValueError(f"labels {labels.shape} and segments {segments.shape} differ in shape")
    seg = segments.ravel().astype(np.int64)
    lab = labels.ravel().astype(np.int64)
    if seg.size and seg.min() < 0:
        raise ValueError("superpixel ids must be non-negative")
    num_segments = int(seg.max()) + 1 if seg.size else 0
    if num_segments > 4 * seg.size:  # very sparse ids: compact them (sorting is slower, so only then)
        _, seg = np.unique(seg, return_inverse=True)
        num_segments = int(seg.max()) + 1
    valid = lab != ignore_index
    if np.any(valid & ((lab < 0) | (lab >= num_labels))):
        raise ValueError(f"labels outside 0..{num_labels - 1} (ignore {ignore_index})")
    votes = np.bincount(seg[valid] * num_labels + lab[valid], minlength=num_segments * num_labels)
    votes = votes.reshape(num_segments, num_labels)  # [S, K]
    winner = votes.argmax(axis=1)  # first maximum: ties go to the smallest id
    winner[votes.sum(axis=1) == 0] = ignore_index
    return winner[seg].reshape(labels.shape).astype(labels.dtype)
