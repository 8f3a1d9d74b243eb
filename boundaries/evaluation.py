"""Boundary evaluation in the style of the BSDS500 benchmark: precision / recall of boundary pixels, ODS, OIS, AP.

Reference: Arbelaez, Maire, Fowlkes, Malik, *Contour Detection and Hierarchical
Image Segmentation*, TPAMI 2011 (the BSDS500 benchmark), and Martin, Fowlkes,
Malik, TPAMI 2004 (the matching). The conventions, each as in that benchmark
unless said otherwise:

- **Ground-truth boundaries of a label map** (:func:`seg_to_boundaries`, the
  "seg2bmap" thin convention): pixel ``(y, x)`` is a boundary pixel when its
  label differs from its right neighbour ``(y, x+1)``, its lower neighbour
  ``(y+1, x)`` or its lower-right neighbour ``(y+1, x+1)``; neighbours outside
  the image do not count. The line lies on the upper / left side of the label
  change, one pixel wide along a straight edge (4-connected along a staircase).
- **Ignore** (:func:`label_boundaries`, our addition; BSDS has no ignore label):
  a comparison with an ignore pixel never makes a boundary, and the ignore
  pixels plus every pixel within ``ignore_margin`` (default 1, Chebyshev
  distance: the 8 neighbours) of one are left out of the evaluation: out of the
  ground truth *and* out of the thresholded prediction (the ``valid`` mask).
- **Thin ground truth from label maps** (our addition): boundaries made from a
  label map are thinned like the predictions (seg2bmap's 4-connected staircases
  would otherwise keep even a copy of the ground truth below F = 1).
  BSDS ``Boundaries`` are used as stored.
- **Tolerance**: a predicted and a ground-truth boundary pixel can match when
  their Euclidean distance is at most ``max_dist x diagonal`` pixels,
  ``max_dist = 0.0075`` (4.5 px for 480x360).
- **One-to-one matching** (:func:`match_boundaries`): each predicted pixel
  matches at most one ground-truth pixel and vice versa.
- **Thresholds**: a soft map ``pb`` in ``[0, 1]`` is cut at ``n`` thresholds
  ``linspace(1/(n+1), 1 - 1/(n+1), n)`` (``n = 99``: 0.01 .. 0.99), keeping
  ``pb >= t``; each binary map is thinned to one-pixel-wide lines
  (``skimage.morphology.thin``, the algorithm of MATLAB's ``bwmorph(...,
  'thin', Inf)`` that the benchmark uses) and then masked with ``valid``.
- **Several ground truths** per image (BSDS has about five humans): a predicted
  pixel is matched when it matches any human (precision counts it once); the
  recall counts (matched / total ground-truth pixels) are summed over humans.
- **Scores** (:func:`summarize`): per image and threshold four counts
  ``(matched_pred, total_pred, matched_gt, total_gt)``; ``P = matched_pred /
  total_pred`` and ``R = matched_gt / total_gt`` (0 when the total is 0),
  ``F = 2PR / (P + R)``. ODS: counts summed over images, best F over the
  thresholds. OIS: the best threshold of each image (the first on ties), those
  counts summed over images. AP: see :func:`average_precision`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auxseg.errors import AuxsegError

MAX_DIST = 0.0075
"""Match tolerance as a fraction of the image diagonal (BSDS500 default)."""

NUM_THRESHOLDS = 99
"""Thresholds a soft boundary map is cut at (BSDS500 default: 0.01 .. 0.99)."""

COUNT_FIELDS = ("matched_pred", "total_pred", "matched_gt", "total_gt")
"""The four per-threshold counts, in the order of the last axis of :func:`evaluate_image`'s result."""


class BoundaryError(AuxsegError, ValueError):
    """A boundary map or ground-truth file that cannot be used; the one-line message names the file and why."""


# ----------------------------------------------------------------------------- ground truth


def seg_to_boundaries(seg: np.ndarray) -> np.ndarray:
    """Thin boundary map of a label map, BSDS ``seg2bmap`` convention (module docstring).

    Args:
        seg: integer labels ``[H, W]``.
    Returns:
        bool ``[H, W]``: True where the label differs from the right, lower or lower-right neighbour.
    """
    return label_boundaries(seg)[0]


def label_boundaries(seg: np.ndarray, ignore_index: int | None = None, ignore_margin: int = 1,
                     thin: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth boundaries of a label map and the mask of pixels that take part in the evaluation.

    Args:
        seg: integer labels ``[H, W]``.
        ignore_index: label of unlabelled pixels (255, or 11 for CamVid), or None.
        ignore_margin: pixels within this Chebyshev distance of an ignore pixel are also left out
            (1: the 8 neighbours; 0: only the ignore pixels themselves).
        thin: thin the masked boundaries (:func:`thin_boundaries`). The seg2bmap lines are
            4-connected: on the staircase edges of rasterised polygons they hold up to a third more
            pixels than the thinned (8-connected) line a thinned prediction can match one to one,
            so without this even a copy of the ground truth scores below 1.
    Returns:
        ``(boundaries, valid)``, both bool ``[H, W]``. A pixel is a boundary when its label differs
        from its right, lower or lower-right neighbour and neither of the two is an ignore pixel;
        ``valid`` is False on ignore pixels and within ``ignore_margin`` of them; ``boundaries`` is
        False wherever ``valid`` is.
    """
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {seg.shape}")
    if ignore_margin < 0:
        raise ValueError(f"ignore_margin must be >= 0, got {ignore_margin}")
    labelled = np.ones(seg.shape, bool) if ignore_index is None else seg != ignore_index
    b = np.zeros(seg.shape, bool)
    # right, lower, lower-right neighbour: a change counts only between two labelled pixels
    b[:, :-1] |= (seg[:, :-1] != seg[:, 1:]) & labelled[:, :-1] & labelled[:, 1:]
    b[:-1, :] |= (seg[:-1, :] != seg[1:, :]) & labelled[:-1, :] & labelled[1:, :]
    b[:-1, :-1] |= (seg[:-1, :-1] != seg[1:, 1:]) & labelled[:-1, :-1] & labelled[1:, 1:]
    valid = labelled
    if ignore_margin > 0 and not labelled.all():
        from scipy.ndimage import binary_dilation

        size = 2 * int(ignore_margin) + 1
        valid = ~binary_dilation(~labelled, structure=np.ones((size, size), bool))
    b &= valid
    # masked first, then thinned: thinning is idempotent, so a prediction equal to this map stays equal to it
    return (thin_boundaries(b) if thin else b), valid


# ----------------------------------------------------------------------------- matching


def tolerance_px(shape: Sequence[int], max_dist: float = MAX_DIST) -> float:
    """Match radius in pixels: ``max_dist`` times the diagonal of an image of ``shape`` ``(H, W, ...)``."""
    return float(max_dist) * float(np.hypot(shape[0], shape[1]))


def _disk_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets ``(dy, dx)`` with ``dy^2 + dx^2 <= radius^2``, the pairs BSDS's matcher links."""
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy * dy + dx * dx <= radius * radius
    return dy[keep], dx[keep]


def match_boundaries(pred: np.ndarray, gt: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predicted to ground-truth boundary pixels within ``radius`` pixels.

    The bipartite graph links every predicted pixel to every ground-truth pixel
    at Euclidean distance ``<= radius``; a maximum-cardinality matching of it
    (Hopcroft-Karp, ``scipy.sparse.csgraph.maximum_bipartite_matching``) gives
    the matched pixels.

    How this relates to BSDS's ``correspondPixels``: BSDS poses a min-cost
    assignment on the same graph, where leaving a pixel unmatched costs 100 x
    the tolerance and a match costs the distance (at most the tolerance). Its
    exact optimum would have the largest number of matches, i.e. the count of
    a maximum-cardinality matching, which is what this function computes. But
    BSDS does not solve that problem exactly: it connects the outliers through
    a sparse *random* graph of degree 6, so its solution is not always
    maximal. Compiled and run side by side on small cases, BSDS matched 1 to 8
    pixels fewer than this function in many of them (not only when it warns
    about its fallback edges), and dataset-level F differed by about 0.001 to
    0.002. Scores from this function are therefore slightly higher than, and
    not bit-identical to, the BSDS benchmark's; they are reproducible (no
    randomness) and exactly maximal (``tests/test_boundaries.py`` pins the
    count to an independent maximum matching).

    Args:
        pred: bool ``[H, W]`` predicted boundary pixels (thin).
        gt: bool ``[H, W]`` ground-truth boundary pixels.
        radius: match tolerance in pixels (:func:`tolerance_px`).
    Returns:
        ``(matched_pred, matched_gt)``: bool ``[H, W]`` each, the pixels of ``pred`` / ``gt`` that
        are matched; ``matched_pred.sum() == matched_gt.sum()``.
    """
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"match_boundaries: maps must be 2-D and the same shape, got {pred.shape} and {gt.shape}")
    return _GroundTruthMatcher(gt, radius).match(pred)


class _GroundTruthMatcher:
    """What :func:`match_boundaries` needs of one ground truth, built once and reused at every threshold."""

    def __init__(self, gt: np.ndarray, radius: float):
        from scipy.ndimage import distance_transform_edt

        self.gt = gt
        self.radius = radius
        self.r = r = int(np.ceil(radius))
        self.gy, self.gx = np.nonzero(gt)
        # ground-truth node id per pixel, in a frame padded by r so every offset stays inside
        self.node = np.full((gt.shape[0] + 2 * r, gt.shape[1] + 2 * r), -1, np.int64)
        self.node[self.gy + r, self.gx + r] = np.arange(len(self.gy))
        self.offsets = _disk_offsets(radius)
        # predicted pixels farther than the radius from every ground-truth pixel cannot match: skip them
        self.near = (distance_transform_edt(~gt) <= radius) if len(self.gy) else np.zeros(gt.shape, bool)

    def match(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import maximum_bipartite_matching

        matched_pred = np.zeros(pred.shape, bool)
        matched_gt = np.zeros(pred.shape, bool)
        py, px = np.nonzero(pred & self.near)
        if len(py) == 0:
            return matched_pred, matched_gt
        r = self.r
        dy, dx = self.offsets
        near = self.node[(py + r)[:, None] + dy, (px + r)[:, None] + dx]  # [n_pred, n_offsets]: gt node or -1
        rows, k = np.nonzero(near >= 0)
        cols = near[rows, k]
        graph = csr_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(len(py), len(self.gy)))
        mate = maximum_bipartite_matching(graph, perm_type="column")  # [n_pred]: gt node or -1
        ok = mate >= 0
        matched_pred[py[ok], px[ok]] = True
        matched_gt[self.gy[mate[ok]], self.gx[mate[ok]]] = True
        return matched_pred, matched_gt


# 8-neighbour offsets (dy, dx) and their bit in the neighbourhood code; bit k is neighbour k going round the
# pixel from the east neighbour (k = 0) anticlockwise: E, NE, N, NW, W, SW, S, SE
_THIN_NEIGHBOURS = ((-1, -1, 8), (-1, 0, 4), (-1, 1, 2), (0, -1, 16), (0, 1, 1), (1, -1, 32), (1, 0, 64), (1, 1, 128))


@functools.cache
def guo_hall_tables() -> tuple[np.ndarray, np.ndarray]:
    """The deletion tables of Guo and Hall's parallel thinning (1989), one per sub-iteration: bool ``[256]``
    indexed by the neighbourhood code (bit k = neighbour k, :data:`_THIN_NEIGHBOURS`).

    A pixel is deleted when (G1) its neighbourhood has exactly one 4-connected crossing from background
    to foreground, (G2) ``min(N1, N2)`` is 2 or 3, where N1 and N2 count the foreground pairs
    (b[2i], b[2i+1]) and (b[2i+1], b[2i+2]), and (G3) the sub-iteration's own condition holds: for the
    first, not ((b1 or b2 or not b7) and b0); for the second, the same turned by a half turn. Computed
    here from those definitions (the same tables as ``skimage.morphology.thin``; a test compares the
    thinning results), so nothing depends on a private module of scikit-image.
    """
    code = np.arange(256)
    b = ((code[:, None] >> np.arange(8)) & 1).astype(bool)  # [256, 8]: neighbour k of each code
    after, after2 = np.roll(b, -1, axis=1), np.roll(b, -2, axis=1)  # neighbours k+1 and k+2, circularly
    crossings = (~b & (after | after2))[:, 0::2].sum(axis=1)  # counted from the even (4-connected) neighbours
    odd = np.arange(1, 8, 2)
    n1 = (b[:, odd - 1] | b[:, odd]).sum(axis=1)
    n2 = (b[:, odd] | b[:, (odd + 1) % 8]).sum(axis=1)
    g12 = (crossings == 1) & np.isin(np.minimum(n1, n2), (2, 3))
    first = ~((b[:, 1] | b[:, 2] | ~b[:, 7]) & b[:, 0])
    second = ~((b[:, 5] | b[:, 6] | ~b[:, 3]) & b[:, 4])
    return g12 & first, g12 & second


def thin_boundaries(b: np.ndarray) -> np.ndarray:
    """Thin a binary map to one-pixel-wide lines: the result of ``skimage.morphology.thin`` (MATLAB's ``bwmorph(b, 'thin', Inf)``).

    Same algorithm and tables as scikit-image (Guo and Hall 1989, :func:`guo_hall_tables`; two
    sub-iterations until nothing changes), but instead of the whole image each
    sub-iteration looks only at the pixels it could delete now: at first the
    foreground pixels with a background neighbour, later only the neighbours of
    pixels deleted since that table last ran (any other pixel would get the same
    answer as last time). Identical output (a test checks it against
    ``skimage.morphology.thin``), about 9x faster on thresholded gradient maps.
    """
    b = np.asarray(b, bool)
    if b.ndim != 2:
        raise ValueError(f"thin_boundaries: map must be 2-D, got shape {b.shape}")
    luts = guo_hall_tables()
    h, w = b.shape
    skel = np.zeros((h + 2, w + 2), np.uint8)  # zero frame: skimage correlates with mode="constant"
    skel[1:-1, 1:-1] = b
    flat = skel.ravel()
    offs = np.array([dy * (w + 2) + dx for dy, dx, _ in _THIN_NEIGHBOURS], np.int64)  # [8]
    bits = np.array([bit for _, _, bit in _THIN_NEIGHBOURS], np.int64)  # [8]
    fg = np.flatnonzero(flat)
    border = fg[(flat[fg[:, None] + offs] == 0).any(axis=1)]
    # pixels each table must look at: those whose neighbourhood changed since that table last saw them
    # (a pixel it kept and whose neighbours did not change would be kept again)
    pending = [border, border]
    mark = np.zeros(flat.size, bool)  # scratch: de-duplicates pixel indices without sorting
    quiet = 0  # sub-iterations in a row that deleted nothing
    while quiet < 2:
        for i, lut in enumerate(luts):
            cand = pending[i]
            code = flat[cand[:, None] + offs] @ bits  # [n_cand], decided on the state before this sub-iteration
            gone = cand[lut[code]]
            if len(gone) == 0:
                pending[i] = cand[:0]
                quiet += 1
                if quiet == 2:
                    break
                continue
            quiet = 0
            flat[gone] = 0
            alive = flat.view(bool)  # flat holds only 0 and 1
            mark[(gone[:, None] + offs).ravel()] = True
            mark &= alive
            changed = np.flatnonzero(mark)  # foreground neighbours of the deleted pixels
            mark[changed] = False
            pending[i] = changed
            mark[pending[1 - i]] = True
            mark[changed] = True
            mark &= alive
            pending[1 - i] = np.flatnonzero(mark)
            mark[pending[1 - i]] = False
    return skel[1:-1, 1:-1].astype(bool)


# ----------------------------------------------------------------------------- one image


def thresholds(n: int = NUM_THRESHOLDS) -> np.ndarray:
    """The ``n`` evaluation thresholds ``linspace(1/(n+1), 1 - 1/(n+1), n)`` (BSDS; 99 -> 0.01 .. 0.99)."""
    if int(n) < 1:
        raise ValueError(f"the number of thresholds must be >= 1, got {n}")
    n = int(n)
    return np.linspace(1.0 / (n + 1), 1.0 - 1.0 / (n + 1), n)


def evaluate_image(pb: np.ndarray, gts: Sequence[np.ndarray], valid: np.ndarray | None = None,
                   n_thresholds: int | np.ndarray = NUM_THRESHOLDS, max_dist: float = MAX_DIST,
                   thin: bool = True) -> np.ndarray:
    """Boundary counts of one soft map against one or more ground truths, at every threshold.

    Args:
        pb: float ``[H, W]`` boundary strength in ``[0, 1]`` (a binary map works too).
        gts: one or more bool ``[H, W]`` ground-truth boundary maps (humans).
        valid: bool ``[H, W]`` pixels that take part (:func:`label_boundaries`), or None for all.
            Predicted and ground-truth pixels outside it are dropped (after thinning).
        n_thresholds: a number of thresholds (:func:`thresholds`) or the thresholds themselves.
        max_dist: tolerance as a fraction of the image diagonal.
        thin: thin each thresholded map (BSDS does; switch off only for maps that are thin already).
    Returns:
        int64 ``[T, 4]``: per threshold ``(matched_pred, total_pred, matched_gt, total_gt)``, where
        ``matched_pred`` counts predicted pixels matched to any ground truth and the two ground-truth
        counts are summed over the ground truths.
    """
    pb = np.asarray(pb, dtype=np.float64)
    if pb.ndim != 2:
        raise ValueError(f"boundary map must be 2-D, got shape {pb.shape}")
    gts = [np.asarray(g, bool) for g in gts]
    if not gts:
        raise ValueError("evaluate_image: no ground truth given")
    for g in gts:
        if g.shape != pb.shape:
            raise ValueError(f"ground truth shape {g.shape} differs from the boundary map's {pb.shape}")
    if valid is not None:
        valid = np.asarray(valid, bool)
        gts = [g & valid for g in gts]
    ts = thresholds(n_thresholds) if np.ndim(n_thresholds) == 0 else np.asarray(n_thresholds, float)
    radius = tolerance_px(pb.shape, max_dist)
    matchers = [_GroundTruthMatcher(g, radius) for g in gts]
    total_gt = sum(len(m.gy) for m in matchers)
    # two thresholds with no map value between them give the same binary map: count it once
    levels = np.unique(pb)
    done: dict[int, tuple] = {}
    counts = np.zeros((len(ts), 4), np.int64)
    for k, t in enumerate(ts):
        key = int(np.searchsorted(levels, t, side="left"))  # pb >= t  <=>  pb >= levels[key]
        if key not in done:
            b = pb >= t
            if thin:
                b = thin_boundaries(b)
            if valid is not None:
                b &= valid
            matched_any = np.zeros(b.shape, bool)
            matched_gt = 0
            for m in matchers:
                mp, mg = m.match(b)
                matched_any |= mp
                matched_gt += int(mg.sum())
            done[key] = (int(matched_any.sum()), int(b.sum()), matched_gt, total_gt)
        counts[k] = done[key]
    return counts


# ----------------------------------------------------------------------------- scores


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, float)
    den = np.asarray(den, float)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def f_measure(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``2 P R / (P + R)``, 0 where ``P + R = 0``."""
    p = np.asarray(p, float)
    r = np.asarray(r, float)
    return _ratio(2 * p * r, p + r)


def precision_recall(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(P, R, F)`` from counts ``[..., 4]`` (:data:`COUNT_FIELDS`); a ratio with a zero total is 0."""
    counts = np.asarray(counts)
    p = _ratio(counts[..., 0], counts[..., 1])
    r = _ratio(counts[..., 2], counts[..., 3])
    return p, r, f_measure(p, r)


def average_precision(p: np.ndarray, r: np.ndarray, total_pred: np.ndarray) -> float:
    """Area under the precision-recall curve traced by the thresholds (ours; see :func:`bsds_average_precision`).

    Only thresholds that keep at least one predicted pixel (``total_pred > 0``)
    give a point. The points are ordered by recall (ties: higher threshold
    first), joined by straight lines (trapezoids), extended to recall 0 at the
    precision of the lowest-recall point, and the curve is 0 beyond the highest
    recall. A perfect map (every point at P = R = 1) scores 1, a binary one too.

    Args:
        p, r: ``[T]`` precision and recall per threshold, thresholds in increasing order.
        total_pred: ``[T]`` predicted pixels per threshold.
    """
    keep = np.asarray(total_pred) > 0
    if not keep.any():
        return 0.0
    p = np.asarray(p, float)[keep]
    r = np.asarray(r, float)[keep]
    order = np.lexsort((-np.nonzero(keep)[0], r))  # by recall, then from the highest threshold down
    r = np.concatenate([[0.0], r[order]])
    p = np.concatenate([[p[order][0]], p[order]])
    return float(np.sum(np.diff(r) * (p[1:] + p[:-1]) / 2))


def bsds_average_precision(p: np.ndarray, r: np.ndarray) -> float:
    """AP exactly as the BSDS500 benchmark's ``collect_eval_bdry`` computes it.

    Precision is linearly interpolated over the distinct recall values (for a
    recall reached at several thresholds, the precision at the first in
    increasing threshold order, as MATLAB R2013a and later pick it in
    ``unique``; older MATLAB took the last) at recall 0, 0.01, ..., 1; points
    outside the recall range reached count 0; AP is the sum times 0.01. A map
    that reaches a single recall (a binary map) scores 0, and recalls below the
    lowest one reached count 0, so this is usually below :func:`average_precision`.
    """
    r = np.asarray(r, float)
    p = np.asarray(p, float)
    ru, first = np.unique(r, return_index=True)
    if len(ru) < 2:
        return 0.0
    grid = np.linspace(0.0, 1.0, 101)
    pi = np.interp(grid, ru, p[first])
    pi[(grid < ru[0]) | (grid > ru[-1])] = 0.0
    return float(pi.sum() * 0.01)


def _bsds_max_f(ts: np.ndarray, p: np.ndarray, r: np.ndarray) -> tuple[float, float, float, float]:
    """BSDS's ``maxF``: best F along straight lines between neighbouring thresholds (100 steps each)."""
    best = (float(ts[0]), float(r[0]), float(p[0]), float(f_measure(p[0], r[0])))
    d = np.linspace(0.0, 1.0, 100)
    for i in range(1, len(ts)):
        tt = ts[i] * d + ts[i - 1] * (1 - d)
        rr = r[i] * d + r[i - 1] * (1 - d)
        pp = p[i] * d + p[i - 1] * (1 - d)
        ff = f_measure(pp, rr)
        k = int(np.argmax(ff))
        if ff[k] > best[3]:
            best = (float(tt[k]), float(rr[k]), float(pp[k]), float(ff[k]))
    return best


@dataclass
class BoundaryScores:
    """Dataset scores; F / P / R in ``[0, 1]``. ``bsds_*``: the benchmark's own interpolated variants."""

    ods_f: float
    ods_p: float
    ods_r: float
    ods_threshold: float
    ois_f: float
    ois_p: float
    ois_r: float
    ap: float
    bsds_ods_f: float
    bsds_ods_threshold: float
    bsds_ap: float
    curve: dict  # thresholds, precision, recall, f: lists over thresholds (dataset-wide counts)
    per_image_best: list  # per image: index of its best threshold (OIS)

    def as_dict(self) -> dict:
        return {
            "ods": {"f": self.ods_f, "precision": self.ods_p, "recall": self.ods_r, "threshold": self.ods_threshold},
            "ois": {"f": self.ois_f, "precision": self.ois_p, "recall": self.ois_r},
            "ap": self.ap,
            "bsds": {"ods_f": self.bsds_ods_f, "ods_threshold": self.bsds_ods_threshold, "ap": self.bsds_ap},
            "curve": self.curve,
        }


def summarize(counts: np.ndarray, ts: np.ndarray) -> BoundaryScores:
    """ODS, OIS and AP from per-image counts.

    Args:
        counts: int ``[N, T, 4]`` (:func:`evaluate_image` of N images).
        ts: ``[T]`` the thresholds, increasing.
    Returns:
        :class:`BoundaryScores`. ODS: the counts summed over images, the best F
        over thresholds (first on ties), no interpolation. OIS: each image at
        its own best threshold (first on ties), those counts summed. AP:
        :func:`average_precision`. ``bsds_ods_f`` interpolates between
        neighbouring thresholds as the benchmark's ``maxF`` does (can be a
        little above ``ods_f``); ``bsds_ap``: :func:`bsds_average_precision`.
    """
    counts = np.asarray(counts, np.int64)
    ts = np.asarray(ts, float)
    if counts.ndim != 3 or counts.shape[2] != 4 or counts.shape[1] != len(ts) or counts.shape[0] == 0:
        raise ValueError(f"summarize: counts must be [N>0, {len(ts)}, 4], got {counts.shape}")
    total = counts.sum(axis=0)  # [T, 4]
    p, r, f = precision_recall(total)
    best = int(np.argmax(f))
    _, _, f_img = precision_recall(counts)  # [N, T]
    per_image = np.argmax(f_img, axis=1)  # first maximum
    ois_counts = counts[np.arange(len(counts)), per_image].sum(axis=0)
    ois_p, ois_r, ois_f = precision_recall(ois_counts)
    bt, _, _, bf = _bsds_max_f(ts, p, r)
    return BoundaryScores(
        ods_f=float(f[best]), ods_p=float(p[best]), ods_r=float(r[best]), ods_threshold=float(ts[best]),
        ois_f=float(ois_f), ois_p=float(ois_p), ois_r=float(ois_r),
        ap=average_precision(p, r, total[:, 1]),
        bsds_ods_f=bf, bsds_ods_threshold=bt, bsds_ap=bsds_average_precision(p, r),
        curve={"thresholds": ts.tolist(), "precision": p.tolist(), "recall": r.tolist(), "f": f.tolist()},
        per_image_best=per_image.tolist(),
    )


# ----------------------------------------------------------------------------- files


def read_boundary_map(path: str | Path) -> np.ndarray:
    """A predicted boundary map as float ``[H, W]`` in ``[0, 1]``.

    Single-channel images: 8-bit (value / 255, so 255 = strongest), 16-bit
    (value / 65535), bilevel (0 / 1) or 32-bit float already in ``[0, 1]``;
    also 8-bit RGB / RGBA whose three colour channels are equal (grey saved as
    colour). Anything else raises :class:`BoundaryError` (or ``ImageReadError``)
    naming the file.
    """
    from auxseg.images import read_label

    path = Path(path)
    try:
        arr = read_label(path)
    except ValueError as err:
        if isinstance(err, AuxsegError):
            raise
        arr = _grey_from_colour(path)
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if arr.dtype == np.uint8:
        return arr / 255.0
    if arr.dtype in (np.uint16, np.dtype(">u2"), np.dtype("<u2")):
        return arr.astype(np.float64) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise BoundaryError(f"boundary map {path}: float values must be finite and in [0, 1]")
        return arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.integer) and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        return arr.astype(np.float64) / 65535.0  # 16-bit data that PIL hands over as 32-bit "I"
    raise BoundaryError(f"boundary map {path}: unsupported pixel type {arr.dtype}")


def _grey_from_colour(path: Path) -> np.ndarray:
    """The one channel of an 8-bit RGB(A) image whose R, G and B are equal; BoundaryError otherwise."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise BoundaryError(f"boundary map {path}: must be a single-channel (grey) image, got shape {arr.shape}")
    if not ((arr[..., 0] == arr[..., 1]) & (arr[..., 1] == arr[..., 2])).all():
        raise BoundaryError(f"boundary map {path}: a colour image (its R, G and B differ); write one grey channel")
    return arr[..., 0]


def read_bsds_mat(path: str | Path) -> list[np.ndarray]:
    """The human boundary maps of one BSDS500 ground-truth file, as bool ``[H, W]`` arrays.

    The file holds a cell array ``groundTruth`` of structs with fields
    ``Segmentation`` (labels) and ``Boundaries`` (the thin boundary map the
    benchmark scores against). ``Boundaries`` is used as stored; a struct
    without it gets :func:`seg_to_boundaries` of its ``Segmentation``. MATLAB
    v7.3 (HDF5) files are not read. Problems raise :class:`BoundaryError`.
    """
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise BoundaryError(f"cannot read BSDS ground truth {path}: file not found")
    try:
        data = loadmat(path, squeeze_me=True, struct_as_record=False)
    except NotImplementedError as err:  # v7.3: an HDF5 file
        raise BoundaryError(f"cannot read BSDS ground truth {path}: MATLAB v7.3 (HDF5) files are not supported; "
                            "save it with -v7") from err
    except Exception as err:  # noqa: BLE001 - scipy's parser fails on corrupt files with IndexError and the like
        reason = " ".join(str(err).split()) or type(err).__name__
        raise BoundaryError(f"cannot read BSDS ground truth {path}: not a readable MAT file ({reason})") from err
    if "groundTruth" not in data:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise BoundaryError(f"BSDS ground truth {path}: no variable 'groundTruth' (found: {', '.join(keys) or 'none'})")
    humans = np.atleast_1d(data["groundTruth"]).ravel()
    out = []
    for i, human in enumerate(humans):
        bdry = getattr(human, "Boundaries", None)
        if bdry is None:
            seg = getattr(human, "Segmentation", None)
            if seg is None:
                raise BoundaryError(f"BSDS ground truth {path}: groundTruth{{{i + 1}}} has neither Boundaries "
                                    "nor Segmentation")
            bdry = seg_to_boundaries(np.asarray(seg))
        bdry = np.asarray(bdry)
        if bdry.ndim != 2:
            raise BoundaryError(f"BSDS ground truth {path}: groundTruth{{{i + 1}}}.Boundaries is not 2-D "
                                f"(shape {bdry.shape})")
        if out and bdry.shape != out[0].shape:
            raise BoundaryError(f"BSDS ground truth {path}: humans differ in size ({out[0].shape} vs {bdry.shape})")
        out.append(bdry != 0)
    if not out:
        raise BoundaryError(f"BSDS ground truth {path}: groundTruth is empty")
    return out


def read_label_ground_truth(path: str | Path, ignore_index: int | None = None, ignore_margin: int = 1,
                            thin: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(boundaries, valid)`` of one label PNG (:func:`auxseg.images.read_label`, then :func:`label_boundaries`).

    The boundaries are thinned by default (see ``thin`` in :func:`label_boundaries`).
    """
    from auxseg.images import read_label

    path = Path(path)
    try:
        label = read_label(path)
    except ValueError as err:
        if isinstance(err, AuxsegError):
            raise
        raise BoundaryError(f"label map {path}: {err}") from err
    return label_boundaries(label, ignore_index, ignore_margin, thin)


@dataclass
class GroundTruthItem:
    """One image of a ground-truth source: its name, the file, and how to load it."""

    name: str  # relative path without suffix, e.g. "0016E5_07959" or "sub/img"
    path: Path


def list_ground_truth(gt_dir: str | Path, kind: str) -> list[GroundTruthItem]:
    """Ground-truth files below ``gt_dir``: label PNGs (``kind="labels"``) or BSDS ``.mat`` files (``"bsds"``)."""
    from auxseg.images import scan_images

    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise BoundaryError(f"ground-truth folder not found: {gt_dir}")
    suffix = ".png" if kind == "labels" else ".mat"
    if kind == "labels":
        rels = scan_images(gt_dir, (".png",))[0]
    elif kind == "bsds":
        rels = sorted(p.relative_to(gt_dir) for p in gt_dir.rglob("*.mat") if not p.name.startswith("."))
    else:
        raise ValueError(f"kind must be 'labels' or 'bsds', got {kind!r}")
    if not rels:
        raise BoundaryError(f"ground-truth folder {gt_dir}: no {suffix} files")
    return [GroundTruthItem(rel.with_suffix("").as_posix(), gt_dir / rel) for rel in rels]


def load_ground_truth(item: GroundTruthItem, kind: str, ignore_index: int | None = None,
                      ignore_margin: int = 1, thin_gt: bool = True) -> tuple[list[np.ndarray], np.ndarray | None]:
    """``(humans, valid)`` of one ground-truth file; ``valid`` is None for BSDS files (no ignore label).

    ``thin_gt`` thins label-map boundaries (:func:`label_boundaries`); BSDS ``Boundaries`` are used as stored.
    """
    if kind == "bsds":
        return read_bsds_mat(item.path), None
    bdry, valid = read_label_ground_truth(item.path, ignore_index, ignore_margin, thin_gt)
    return [bdry], (None if valid.all() else valid)


def find_prediction(pred_dir: Path, name: str) -> Path:
    """The prediction for ground-truth image ``name``: ``pred_dir/<name>.png`` (BoundaryError if absent)."""
    path = pred_dir / f"{name}.png"
    if not path.is_file():
        raise BoundaryError(f"no boundary map {path} for ground truth {name!r} (expected one PNG per ground-truth file, "
                            "same relative path)")
    return path


def evaluate_segmentation(seg: np.ndarray, gts: Sequence[np.ndarray], valid: np.ndarray | None = None,
                          ignore_index: int | None = None, max_dist: float = MAX_DIST) -> np.ndarray:
    """Boundary counts ``[1, 4]`` of a hard segmentation (a label map ``[H, W]``) against the ground truths.

    Its boundaries are the pixels whose label differs from a 4-neighbour's
    (:func:`label_boundaries`, no margin at ``ignore_index``): a binary map, so
    one threshold gives every threshold's result, ODS equals OIS and AP is the
    area under one precision-recall point.
    """
    bdry, _ = label_boundaries(np.asarray(seg), ignore_index, ignore_margin=0)
    return evaluate_image(bdry.astype(np.float64), gts, valid, thresholds(1), max_dist)


def _read_segmentation(path: Path) -> np.ndarray:
    from auxseg.images import read_label

    return read_label(path)


@dataclass(frozen=True)
class EvalOptions:
    """How :func:`evaluate_folder` scores boundary maps (the defaults follow the BSDS benchmark)."""

    ignore_index: int | None = None  # label value of label-map ground truth whose boundaries do not count
    ignore_margin: int = 1  # pixels around ignored regions left out as well
    n_thresholds: int = NUM_THRESHOLDS  # thresholds of a soft boundary map
    max_dist: float = MAX_DIST  # matching distance, as a fraction of the image diagonal
    thin: bool = True  # thin the predicted maps before matching
    thin_gt: bool = True  # thin label-map ground-truth boundaries (BSDS boundaries are used as stored)
    # the PNGs are label maps (hard segmentations, e.g. auxiliary labels or SLIC), scored by their label
    # boundaries (:func:`evaluate_segmentation`) instead of soft boundary maps
    segmentations: bool = False


def evaluate_folder(pred_dir: str | Path, gt_dir: str | Path, kind: str = "labels",
                    options: EvalOptions = EvalOptions(), *, progress: bool = False) -> dict:
    """Evaluate every ``pred_dir/<name>.png`` against the ground truth ``gt_dir/<name>.{png,mat}``.

    The ground-truth files define the image set; a missing prediction or one
    whose size differs from its ground truth raises :class:`BoundaryError`
    naming both files. Returns a JSON-ready dict: the scores
    (:meth:`BoundaryScores.as_dict`), per-image best F and counts, and the settings.
    """
    o = options
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise BoundaryError(f"boundary map folder not found: {pred_dir}")
    items = list_ground_truth(gt_dir, kind)
    ts = thresholds(1 if o.segmentations else o.n_thresholds)
    from tqdm import tqdm

    counts = []
    for item in tqdm(items, desc="boundaries eval", unit="img", disable=not progress, dynamic_ncols=True):
        pred_path = find_prediction(pred_dir, item.name)
        humans, valid = load_ground_truth(item, kind, o.ignore_index, o.ignore_margin, o.thin_gt)
        pb = _read_segmentation(pred_path) if o.segmentations else read_boundary_map(pred_path)
        if pb.shape != humans[0].shape:
            raise BoundaryError(f"boundary map {pred_path} is {pb.shape[1]}x{pb.shape[0]} but its ground truth "
                                f"{item.path} is {humans[0].shape[1]}x{humans[0].shape[0]} (width x height)")
        counts.append(evaluate_segmentation(pb, humans, valid, max_dist=o.max_dist) if o.segmentations else
                      evaluate_image(pb, humans, valid, ts, o.max_dist, o.thin))
    counts = np.stack(counts)  # [N, T, 4]
    scores = summarize(counts, ts)
    _, _, f_img = precision_recall(counts)
    result = scores.as_dict()
    result["num_images"] = len(items)
    result["images"] = [
        {"name": item.name, "best_threshold": float(ts[k]), "f": float(f_img[i, k]),
         "counts_at_best": dict(zip(COUNT_FIELDS, (int(c) for c in counts[i, k])))}
        for i, (item, k) in enumerate(zip(items, scores.per_image_best))
    ]
    result["settings"] = {
        "pred_dir": str(pred_dir), "gt_dir": str(gt_dir), "gt_kind": kind, "ignore_index": o.ignore_index,
        "ignore_margin": o.ignore_margin, "num_thresholds": int(o.n_thresholds), "max_dist": o.max_dist,
        "thin": o.thin, "thin_gt": o.thin_gt if kind == "labels" else False, "segmentations": o.segmentations,
        "counts_fields": list(COUNT_FIELDS),
    }
    return result
