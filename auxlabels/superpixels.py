"""SLIC superpixels: fast-slic (AVX2 when the CPU has it, one thread) or scikit-image."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def _fast_slic_class():
    from fast_slic import Slic

    try:
        from fast_slic.avx2 import SlicAvx2

        with open("/proc/cpuinfo") as f:
            if "avx2" in f.read():
                return SlicAvx2
    except (ImportError, OSError):
        pass
    return Slic


PIXELS_PER_SUPERPIXEL = 4
"""The fewest pixels per superpixel, on average, that :func:`compute_superpixels` asks for.

fast-slic dies of SIGFPE (no message, the whole process) when asked for more
components than the image has pixels, or given an empty image; scikit-image
returns one segment per pixel. Asking for at most ``H * W // 4`` (a 2x2 block
each) keeps both well inside what they handle.
"""


def max_superpixels(height: int, width: int) -> int:
    """The most superpixels asked for in a ``height x width`` image: ``max(1, H * W // 4)``."""
    return max(1, (height * width) // PIXELS_PER_SUPERPIXEL)


def compute_superpixels(image: np.ndarray, n_segments: int, compactness: float = 10.0, method: str = "fast_slic") -> np.ndarray:
    """SLIC over-segmentation of one image.

    Args:
        image: uint8 RGB ``[H, W, 3]``, any size from 1x1.
        n_segments: desired number of superpixels (paper: 200-2000 equivalent, Table 3). An image
            too small to hold them gets :func:`max_superpixels` ``(H, W)`` instead (at least 4
            pixels each on average); one that can hold only one (under 8 pixels) is one segment,
            without calling SLIC. Larger images are segmented exactly as asked.
        compactness: SLIC colour/space trade-off (higher: more regular superpixels).
        method: ``"fast_slic"`` (~25x faster) or ``"skimage"``; their segmentations differ, so
            do not mix them within one experiment.
    Returns:
        int32 ``[H, W]`` segment ids, compacted to ``0..S-1``; ``S <= superpixel_label_bound(n_segments, method)``.
    Raises:
        ValueError: an image that is not ``[H, W, 3]`` with ``H, W >= 1``, ``n_segments < 1``, or an unknown method.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"superpixels: image must be [H, W, 3] with H, W >= 1, got shape {image.shape}")
    if int(n_segments) < 1:
        raise ValueError(f"superpixels.n_segments must be >= 1, got {n_segments}")
    if method not in ("fast_slic", "skimage"):
        raise ValueError(f"superpixels.method must be 'fast_slic' or 'skimage', got {method!r}")
    h, w = image.shape[:2]
    n = min(int(n_segments), max_superpixels(h, w))
    if n == 1:
        return np.zeros((h, w), np.int32)
    if method == "fast_slic":
        # one thread: several worker processes run in parallel, and multi-threaded
        # fast-slic timings vary wildly on shared machines
        slic = _fast_slic_class()(num_components=n, compactness=compactness, num_threads=1)
        seg = slic.iterate(image)
    else:
        from skimage.segmentation import slic

        seg = slic(image, n_segments=n, compactness=compactness, start_label=0)
    return compact_ids(np.asarray(seg).reshape(h, w))


def compact_ids(seg: np.ndarray) -> np.ndarray:
    """Renumber non-negative segment ids to ``0..S-1`` in order, in O(pixels) (no sort)."""
    seg = seg.astype(np.int64, copy=False)
    present = np.bincount(seg.ravel()) > 0
    if present.all():
        return seg.astype(np.int32)
    lut = np.cumsum(present) - 1  # old id -> new id
    return lut[seg].astype(np.int32)


def superpixel_label_bound(n_segments: int, method: str) -> int:
    """An upper bound on the superpixel count per image (fixes the PNG dtype before any image is seen).

    fast-slic never returns more than ``n_segments`` components; scikit-image's SLIC
    can overshoot, so allow twice as many (an image exceeding it is an error).
    """
    return n_segments if method == "fast_slic" else 2 * n_segments
