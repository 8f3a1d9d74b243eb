"""Classical boundary maps to compare learned ones against, and oriented non-maximum suppression.

Every baseline takes a uint8 RGB image ``[H, W, 3]`` and returns a float
boundary map ``[H, W]`` in ``[0, 1]`` (1 = strongest), the input of
:func:`boundaries.evaluation.evaluate_image`:

- ``sobel``: gradient magnitude of the Gaussian-smoothed grey image, divided by
  its maximum in the image (so every image uses the full range); optionally
  thinned by :func:`non_max_suppression` along the gradient direction.
- ``canny``: OpenCV's Canny at ``levels`` settings of one smoothing scale; the
  map is the fraction of settings in which a pixel is an edge. The hysteresis
  thresholds of setting ``k`` are the ``q_k`` quantile of the image's gradient
  magnitude (high) and half of it (low), ``q_k`` evenly spaced in
  ``quantiles``; both rise with ``k``, so the edge sets are nested and cutting
  the map at ``k / levels`` gives back exactly one Canny setting.
- ``slic``: SLIC superpixel boundaries (:func:`boundaries.evaluation.seg_to_boundaries`)
  averaged over several superpixel counts: a boundary kept at coarse scales is
  strong. fast-slic (one thread) when it is installed, else scikit-image; the
  two give different superpixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from boundaries.evaluation import seg_to_boundaries


def _gray(rgb: np.ndarray) -> np.ndarray:
    """Luminance in ``[0, 1]``, float ``[H, W]`` (scikit-image's rgb2gray weights)."""
    from skimage.color import rgb2gray

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {rgb.shape}")
    return rgb2gray(rgb.astype(np.uint8))


def non_max_suppression(edge: np.ndarray, normal: np.ndarray | None = None, sigma: float = 2.0,
                        step: float = 1.0) -> np.ndarray:
    """Keep only the local maxima of a soft boundary map across the boundary (oriented NMS).

    A pixel survives when its value is above the value ``step`` pixels away on
    one side along the boundary normal and not below the value on the other
    side (bilinear interpolation; the asymmetric test keeps one pixel of a
    two-pixel plateau). Suppressed pixels become 0, survivors keep their value.

    Args:
        edge: float ``[H, W]`` boundary strength.
        normal: float ``[H, W]`` angle of the boundary normal in radians (``0`` = along +x
            (columns), ``pi/2`` = along +y (rows)), e.g. ``arctan2(gy, gx)`` of an image
            gradient. None: estimated from ``edge`` itself, as the direction of strongest
            negative curvature of ``edge`` smoothed with a Gaussian of ``sigma`` pixels
            (the eigenvector of its Hessian with the smallest eigenvalue), which is the
            across-ridge direction of a boundary line (as in Dollar and Zitnick's
            structured-edge NMS, which also estimates orientation from second derivatives).
        sigma: smoothing for the estimated normal (pixels); unused when ``normal`` is given.
        step: distance in pixels to the two compared neighbours.
    Returns:
        float ``[H, W]``: ``edge`` with every non-maximum set to 0.
    """
    from scipy.ndimage import map_coordinates

    edge = np.asarray(edge, dtype=np.float64)
    if edge.ndim != 2:
        raise ValueError(f"non_max_suppression: map must be 2-D, got shape {edge.shape}")
    if normal is None:
        from skimage.feature import hessian_matrix

        h_rr, h_rc, h_cc = hessian_matrix(edge, sigma=sigma, order="rc", use_gaussian_derivatives=False)
        # principal axis of the larger eigenvalue, plus 90 degrees: the smallest (most negative) curvature
        normal = 0.5 * np.arctan2(2 * h_rc, h_cc - h_rr) + np.pi / 2
    normal = np.asarray(normal, dtype=np.float64)
    if normal.shape != edge.shape:
        raise ValueError(f"non_max_suppression: normal {normal.shape} and map {edge.shape} differ in shape")
    rows, cols = np.mgrid[0 : edge.shape[0], 0 : edge.shape[1]].astype(np.float64)
    dr, dc = step * np.sin(normal), step * np.cos(normal)
    ahead = map_coordinates(edge, [rows + dr, cols + dc], order=1, mode="nearest")
    behind = map_coordinates(edge, [rows - dr, cols - dc], order=1, mode="nearest")
    return np.where((edge > ahead) & (edge >= behind), edge, 0.0)


def sobel_boundaries(rgb: np.ndarray, sigma: float = 1.0, nms: bool = False) -> np.ndarray:
    """Sobel gradient magnitude of the grey image smoothed with a Gaussian of ``sigma`` pixels, max-normalised per image.

    ``nms``: thin with :func:`non_max_suppression` along the gradient direction.
    A flat image gives all zeros.
    """
    from scipy.ndimage import gaussian_filter, sobel

    gray = _gray(rgb)
    if sigma > 0:
        gray = gaussian_filter(gray, sigma)
    gx = sobel(gray, axis=1)
    gy = sobel(gray, axis=0)
    mag = np.hypot(gx, gy)
    if nms:
        mag = non_max_suppression(mag, np.arctan2(gy, gx))
    peak = mag.max()
    return mag / peak if peak > 0 else np.zeros_like(mag)


def canny_boundaries(rgb: np.ndarray, sigma: float = 2.0, levels: int = 16,
                     quantiles: tuple[float, float] = (0.70, 0.98)) -> np.ndarray:
    """Fraction of ``levels`` OpenCV Canny settings (module docstring) in which each pixel is an edge.

    Args:
        rgb: uint8 ``[H, W, 3]``.
        sigma: Gaussian smoothing of the grey image before Canny (pixels).
        levels: number of hysteresis settings (the map takes ``levels + 1`` values).
        quantiles: the lowest and highest quantile of the gradient magnitude used as high threshold.
    """
    import cv2

    if levels < 1:
        raise ValueError(f"canny levels must be >= 1, got {levels}")
    gray = np.rint(_gray(rgb) * 255).astype(np.uint8)
    if sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), sigma)
    # the magnitude Canny thresholds (3x3 Sobel on 0..255, L2 norm): its quantiles set the thresholds
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy)
    highs = np.quantile(mag, np.linspace(quantiles[0], quantiles[1], levels))
    votes = np.zeros(gray.shape, np.float64)
    for high in highs:
        high = max(float(high), 1e-3)  # a flat image: no edges rather than every pixel
        votes += cv2.Canny(gray, 0.5 * high, high, L2gradient=True) > 0
    return votes / levels


def _superpixels(rgb: np.ndarray, n_segments: int, compactness: float) -> np.ndarray:
    """SLIC labels ``[H, W]``: fast-slic (one thread) if installed, else scikit-image."""
    h, w = rgb.shape[:2]
    n = min(int(n_segments), max(1, h * w // 4))  # fast-slic crashes when asked for more segments than pixels
    if n <= 1:
        return np.zeros((h, w), np.int32)
    try:
        from fast_slic import Slic
    except ImportError:
        from skimage.segmentation import slic

        return slic(rgb, n_segments=n, compactness=compactness, start_label=0)
    return np.asarray(Slic(num_components=n, compactness=compactness, num_threads=1)
                      .iterate(np.ascontiguousarray(rgb, dtype=np.uint8))).reshape(h, w)


def slic_boundaries(rgb: np.ndarray, n_segments: Sequence[int] = (100, 200, 400, 800),
                    compactness: float = 10.0) -> np.ndarray:
    """Mean over ``n_segments`` of the SLIC superpixel boundary maps (seg2bmap convention): 1 = a boundary at every scale."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {rgb.shape}")
    if not n_segments:
        raise ValueError("slic baseline: give at least one superpixel count")
    acc = np.zeros(rgb.shape[:2], np.float64)
    for n in n_segments:
        acc += seg_to_boundaries(_superpixels(rgb, n, compactness))
    return acc / len(n_segments)


BASELINES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sobel": sobel_boundaries,
    "sobel_nms": lambda rgb: sobel_boundaries(rgb, nms=True),
    "canny": canny_boundaries,
    "slic": slic_boundaries,
}
"""Name -> function ``rgb uint8 [H, W, 3] -> boundary map float [H, W] in [0, 1]`` with default settings."""


def to_uint8(pb: np.ndarray) -> np.ndarray:
    """A boundary map in ``[0, 1]`` as the uint8 PNG values the evaluation reads back (255 = strongest)."""
    return np.rint(np.clip(pb, 0.0, 1.0) * 255).astype(np.uint8)
