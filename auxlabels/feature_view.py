"""The feature view: an extractor's dense features as an RGB image (Aksoy et al., SIGGRAPH 2018, supplement §1.1).

Per image: features of any registered extractor -> bilinear upsampling to the
working size (the image, scaled so its longer side is at most ``max_side``) ->
per-image standardisation (each channel centred, all divided by one RMS, so the
channels keep their relative variances) and clipping to ``[-clip, clip]`` ->
guided filter of every channel with the image as guide (He et al., TPAMI 2013)
-> per-image PCA to 3 channels -> per-channel min-max to 0..255. Pixels that
look alike to the extractor get alike colours, and the guided filter snaps the
colour edges to the image's edges.

``auxseg featureview`` writes one PNG per image (:func:`run`); the pipeline
report shows it beside the auxiliary-label overlay (:func:`views_of_image`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from auxseg.config import ConfigError, PositiveFloat, PositiveInt, ranged, save_config, to_dict
from auxseg.errors import AuxsegError
from auxseg.files import atomic_write_text
from auxseg.images import ImageReadError, read_rgb, scan_images, write_rgb_png
from auxseg.paths import check_separate, output_file, read_path_list

from .config import ExtractorConfig

# ----------------------------------------------------------------------------- guided filter


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean of ``x`` over the ``(2r+1) x (2r+1)`` window around each pixel, the window clipped to the image.

    Args:
        x: ``[H, W]`` or ``[H, W, C]`` float32/float64 (any C; in chunks of 128 channels).
    Returns:
        the same shape and dtype: window sums over in-image pixels divided by their count
        (He et al.'s ``boxfilter(I, r) ./ N``).
    """
    k = (2 * radius + 1, 2 * radius + 1)

    def box_sum(a: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(a, -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)

    count = box_sum(np.ones(x.shape[:2], dtype=x.dtype))  # [H, W] pixels inside each clipped window
    if x.ndim == 2:
        return box_sum(x) / count
    if x.shape[2] <= 128:  # OpenCV takes at most 512 channels and is fastest below ~128
        out = box_sum(np.ascontiguousarray(x)).reshape(x.shape)
    else:
        out = np.concatenate([box_sum(np.ascontiguousarray(x[:, :, c0:c0 + 128])).reshape(*x.shape[:2], -1)
                              for c0 in range(0, x.shape[2], 128)], axis=2)
    out /= count[:, :, None]
    return out


def _inverse_sym(sig: dict, k: int) -> np.ndarray:
    """Per-pixel inverse of a symmetric k x k matrix (k = 1 or 3) given by its upper entries ``{(i, j): [H, W]}``.

    Closed form (cofactors / determinant): the matrices are covariances plus ``eps * U``, so
    positive definite; much faster than a batched LAPACK inverse for millions of 3 x 3 matrices.
    """
    if k == 1:
        return (1.0 / sig[0, 0])[:, :, None, None]
    a, b, c, d, e, f = sig[0, 0], sig[0, 1], sig[0, 2], sig[1, 1], sig[1, 2], sig[2, 2]
    co = {(0, 0): d * f - e * e, (0, 1): c * e - b * f, (0, 2): b * e - c * d,
          (1, 1): a * f - c * c, (1, 2): b * c - a * e, (2, 2): a * d - b * b}
    det = a * co[0, 0] + b * co[0, 1] + c * co[0, 2]
    inv = np.empty(a.shape + (3, 3))
    for (i, j), v in co.items():
        inv[:, :, i, j] = inv[:, :, j, i] = v / det
    return inv


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float, chunk: int = 32) -> np.ndarray:
    """He et al.'s guided filter (TPAMI 2013, Alg. 1; colour guide: Eqs. 19-21) of every channel of ``src``.

    Args:
        guide: ``[H, W, 3]`` colour guide or ``[H, W]`` grey guide, float in [0, 1].
        src: ``[H, W, C]`` channels to filter, each independently.
        radius: window radius r (window ``2r+1``); eps: the regulariser epsilon (on the [0, 1] guide scale).
        chunk: channels filtered at once (bounds memory: about ``H*W*chunk*12`` float32 values).

    Returns:
        ``[H, W, C]`` float32. A constant channel stays constant; with a 3-channel guide every window
        fits ``q = a^T I + b`` with the window's 3x3 colour covariance (plus ``eps * U``) inverted per pixel.
    """
    h, w, n_ch = src.shape
    g = guide.astype(np.float32)
    out = np.empty((h, w, n_ch), dtype=np.float32)
    if g.ndim == 2:
        g = g[:, :, None]
    k = g.shape[2]
    mean_i = box_mean(g, radius).reshape(h, w, k)  # [H, W, k]
    # the k x k guide covariance per window (+ eps U), inverted per pixel in float64
    pairs = [(i, j) for i in range(k) for j in range(i, k)]
    prod = box_mean(np.stack([g[:, :, i] * g[:, :, j] for i, j in pairs], axis=2), radius).reshape(h, w, -1)
    m64 = mean_i.astype(np.float64)
    sig = {(i, j): prod[:, :, n].astype(np.float64) - m64[:, :, i] * m64[:, :, j] + (eps if i == j else 0.0)
           for n, (i, j) in enumerate(pairs)}
    inv = _inverse_sym(sig, k)  # [H, W, k, k]
    # contiguous [H, W, 1] planes: numpy broadcasts these several times faster than strided slices
    inv_ij = [[np.ascontiguousarray(inv[:, :, i, j, None], dtype=np.float32) for j in range(k)] for i in range(k)]
    mean_ij = [np.ascontiguousarray(mean_i[:, :, j, None]) for j in range(k)]
    g_j = [np.ascontiguousarray(g[:, :, j, None]) for j in range(k)]
    for c0 in range(0, n_ch, chunk):
        p = np.ascontiguousarray(src[:, :, c0:c0 + chunk], dtype=np.float32)  # [H, W, c]
        c = p.shape[2]
        mean_p = box_mean(p, radius).reshape(h, w, c)
        ip = box_mean(np.concatenate([g_j[j] * p for j in range(k)], axis=2), radius).reshape(h, w, k * c)
        cov = [ip[:, :, j * c:(j + 1) * c] - mean_ij[j] * mean_p for j in range(k)]  # k x [H, W, c]
        # a = Sigma^-1 cov(I, p) per pixel, b = mean_p - a . mean_I (He et al. Eqs. 19-20), as k x [H, W, c]
        a = [sum(inv_ij[i][j] * cov[j] for j in range(k)) for i in range(k)]
        b = mean_p - sum(a[i] * mean_ij[i] for i in range(k))
        mean_a = box_mean(np.concatenate(a, axis=2), radius).reshape(h, w, k * c)
        out[:, :, c0:c0 + chunk] = sum(mean_a[:, :, i * c:(i + 1) * c] * g_j[i] for i in range(k)) + \
            box_mean(b, radius).reshape(h, w, c)
    return out


# ----------------------------------------------------------------------------- the view


def standardise_and_clip(feats: np.ndarray, clip: float, inplace: bool = False) -> np.ndarray:
    """``[H, W, D]`` -> ``[H, W, D]`` float32: channels centred, all divided by one RMS, clipped to ``[-clip, clip]``.

    One scale for all channels (not one per channel) keeps their relative
    variances, so the PCA that follows still sees which channels vary most.
    ``inplace``: overwrite ``feats`` (a contiguous float32 array) instead of copying it.
    """
    h, w, d = feats.shape
    if inplace and feats.dtype == np.float32 and feats.flags.c_contiguous:
        x = feats.reshape(-1, d)
        x -= _column_mean(x)
    else:
        x = np.ascontiguousarray(feats, dtype=np.float32).reshape(-1, d)
        x = x - _column_mean(x)
    rms = float(np.sqrt(np.dot(x.ravel(), x.ravel()) / max(1, x.size)))
    if rms > 0:
        x /= rms
    return np.clip(x, -clip, clip, out=x).reshape(h, w, d)


def _column_mean(x: np.ndarray) -> np.ndarray:
    """Mean of the rows of a contiguous ``[N, D]`` float32 array, as one BLAS product (fast, float32)."""
    return (np.ones(len(x), dtype=np.float32) @ x) / max(1, len(x))


COV_PIXELS = 20_000  # the covariance is estimated on an evenly strided subsample of at most this many pixels


def principal_axes(x: np.ndarray, max_pixels: int = COV_PIXELS) -> np.ndarray:
    """Eigenvectors of the covariance of centred rows ``x [N, D]``, largest eigenvalue first, as float32 ``[D, D]``.

    The ``D x D`` covariance is taken over every ``step``-th row (``step = ceil(N / max_pixels)``;
    neighbouring pixels of an upsampled map are near copies of each other). An eigenvector's
    sign is arbitrary; each is flipped so that its largest-magnitude entry is positive, so the
    colours do not flip between runs.
    """
    sub = x[:: max(1, -(-len(x) // max_pixels))].astype(np.float32)
    cov = (sub.T @ sub).astype(np.float64) / max(1, len(sub))
    _, vecs = np.linalg.eigh(cov)  # ascending
    vecs = vecs[:, ::-1]
    vecs = vecs * np.where(vecs[np.abs(vecs).argmax(axis=0), np.arange(vecs.shape[1])] < 0, -1.0, 1.0)
    return np.ascontiguousarray(vecs, dtype=np.float32)  # float32: projecting float32 rows stays in float32


def minmax_rgb(proj: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """Up to 3 projections ``[N, <=3]`` -> uint8 ``[H, W, 3]``, each min-max scaled to 0..255.

    Missing channels, and projections without spread beyond rounding (below 1e-6 of the
    largest one's range), are 0 rather than amplified noise.
    """
    out = np.zeros((len(proj), 3))
    out[:, : proj.shape[1]] = proj[:, :3]
    lo, hi = out.min(axis=0), out.max(axis=0)
    span = np.where(hi - lo > 1e-6 * (hi - lo).max(initial=0.0), hi - lo, np.inf)
    rgb = (out - lo) / span * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(*shape_hw, 3)


def pca_rgb(feats: np.ndarray, max_pixels: int = COV_PIXELS) -> np.ndarray:
    """Per-image PCA to 3 channels, each min-max scaled to 0..255: ``[H, W, D]`` -> uint8 ``[H, W, 3]``.

    Centre, take the top-3 eigenvectors of the ``D x D`` covariance
    (:func:`principal_axes`), project every pixel, :func:`minmax_rgb`.
    """
    h, w, d = feats.shape
    x = np.ascontiguousarray(feats, dtype=np.float32).reshape(-1, d)
    x = x - _column_mean(x)
    return minmax_rgb(x @ principal_axes(x, max_pixels)[:, :3], (h, w))


def working_image(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """The image at the working size: scaled (area interpolation) so its longer side is at most ``max_side``."""
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image
    s = max_side / max(h, w)
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class ViewParams:
    """How one feature view is made (defaults: the supplement's procedure at a 480-px working size)."""

    max_side: int | None = 480  # working size (longer side, pixels); None: the image size
    clip: float = 5.0  # standardised features clipped to [-clip, clip]
    radius: int = 5  # guided-filter window 2r+1
    eps: float = 0.01  # guided-filter epsilon on the [0, 1] guide
    guide: Literal["colour", "grey", "none"] = "colour"  # the guided filter's guide; none: no filter
    # guided-filter the features' coordinates on their top this many principal axes (None: all D, the
    # supplement's procedure; the same result when the rank is <= this)
    filter_channels: int | None = 64
    # the extractor's own max_side: the image is downscaled before the forward pass, as in the auxlabels stage
    extract_max_side: int | None = None


def views_of_image(extractor, image: np.ndarray, params: ViewParams = ViewParams()) -> dict[str, np.ndarray]:
    """The feature view of one image, and the same without the guided filter.

    Args:
        extractor: a :class:`auxlabels.features.FeatureExtractor` (on the CPU or a GPU).
        image: uint8 ``[H, W, 3]`` RGB.
        params: working size, clipping, guided filter (:class:`ViewParams`).

    Returns:
        ``{"image": working image, "pca": PCA of the clipped features, "view": guided filter + PCA}``,
        all uint8 ``[h, w, 3]`` at the working size.
    """
    import torch
    import torch.nn.functional as F

    small = working_image(image, params.max_side)
    h, w = small.shape[:2]
    device = next((b.device for b in extractor.buffers()), torch.device("cpu"))
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].to(device)  # [1, 3, H, W], a copy
    if params.extract_max_side is not None and max(x.shape[-2:]) > params.extract_max_side:
        s = params.extract_max_side / max(x.shape[-2:])
        size = (max(1, round(x.shape[-2] * s)), max(1, round(x.shape[-1] * s)))
        x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True)
    with torch.no_grad():
        native = extractor(x).float()  # [1, D, h', w']
        # channels-last: the bilinear resize is several times faster on CPU, and [h, w, D] comes out contiguous
        native = native.contiguous(memory_format=torch.channels_last)
        up = F.interpolate(native, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    feats = standardise_and_clip(up.contiguous().cpu().numpy(), params.clip, inplace=True)  # [h, w, D], a fresh array
    d = feats.shape[2]
    x = feats.reshape(-1, d)
    x -= _column_mean(x)  # centred rows [N, D] (clipping moved the mean)
    k = d if params.filter_channels is None else min(d, params.filter_channels)
    # the guided filter is the same linear map on every channel, so it commutes with mixing channels:
    # filtering the coordinates on all D principal axes is filtering the features; on the top k it
    # drops only the low-variance rest (exact when the features have rank <= k)
    coords = x @ principal_axes(x)[:, :k]  # [N, k]
    out = {"image": small, "pca": minmax_rgb(coords[:, :3], (h, w))}
    if params.guide == "none":
        out["view"] = out["pca"]
        return out
    g = small.astype(np.float32) / 255.0
    if params.guide == "grey":
        g = g @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out["view"] = pca_rgb(guided_filter(g, coords.reshape(h, w, k), params.radius, params.eps))
    return out


# ----------------------------------------------------------------------------- the command


@dataclass
class FeatureViewConfig:
    """``auxseg featureview``: which images, which extractor, the view's parameters, where to write."""

    image_dir: str = ""  # folder of images (searched recursively)
    image_list: str | None = None  # optional text file of paths relative to image_dir, one per line
    max_images: PositiveInt | None = None  # only the first N images (sorted by path)
    out_dir: str = "runs/feature_view"
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    max_side: ranged(int, ge=8) | None = 480  # working size: longer side of the view in pixels (null: the image size)
    clip: PositiveFloat = 5.0  # clip the standardised features to [-clip, clip] (official code: raw features to +-5)
    guide: Literal["colour", "grey", "none"] = "colour"  # guided filter guide; none: PCA of the raw features
    filter_channels: ranged(int, ge=3) | None = 64  # filter the top this many principal axes of the features; null: all
    radius: PositiveInt = 5  # guided-filter window 2r+1 = 11 px (official code: MATLAB NeighborhoodSize 10)
    eps: PositiveFloat = 0.01  # guided-filter epsilon on the [0, 1] guide (MATLAB's default 0.01)
    progress: bool = True

    def view_params(self) -> ViewParams:
        """The view's parameters as :func:`views_of_image` takes them."""
        return ViewParams(max_side=self.max_side, clip=self.clip, radius=self.radius, eps=self.eps, guide=self.guide,
                          filter_channels=self.filter_channels, extract_max_side=self.extractor.max_side)


def validate(cfg: FeatureViewConfig) -> None:
    """Cross-field rules; raise ConfigError naming the key."""
    from .features import EXTRACTORS

    if not cfg.image_dir:
        raise ConfigError("image_dir: required (a folder of images)")
    check_separate(cfg.out_dir, "out_dir", {"image_dir": cfg.image_dir})
    if cfg.extractor.name not in EXTRACTORS:
        raise ConfigError(f"extractor.name: {cfg.extractor.name!r} is not one of {sorted(EXTRACTORS)}")


class NoImagesError(AuxsegError, FileNotFoundError):
    """The image folder (or list) names no image."""


def _images(cfg: FeatureViewConfig) -> tuple[Path, list[Path]]:
    root = Path(cfg.image_dir).expanduser()
    if cfg.image_list:
        paths = [root / rel for rel in read_path_list(cfg.image_list, "image")]
    else:
        paths, _ = scan_images(root)
        paths = [root / p for p in paths]
    paths = sorted(paths)[: cfg.max_images]
    if not paths:
        raise NoImagesError(f"image_dir: no images in {root}" + (f" listed by {cfg.image_list}" if cfg.image_list else ""))
    return root, paths


def run(cfg: FeatureViewConfig) -> dict:
    """Write ``<out_dir>/<relative path>.png`` (the view) for every image, plus ``config.yaml`` and ``feature_view.json``."""
    import torch

    from .features import build_extractor
    from .inputs import progress_bar

    validate(cfg)
    root, paths = _images(cfg)
    extractor = build_extractor(cfg.extractor).to(torch.device(cfg.extractor.device))  # fails before out_dir exists
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    written, skipped, seconds = [], {}, 0.0
    with progress_bar(len(paths), "feature view", cfg.progress) as bar:
        for path in paths:
            rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
            try:
                image = read_rgb(path)
            except (ImageReadError, FileNotFoundError) as err:
                skipped[str(rel)] = str(err)
                bar.update(1)
                continue
            t0 = time.perf_counter()
            views = views_of_image(extractor, image, cfg.view_params())
            seconds += time.perf_counter() - t0
            target = output_file(out, rel.with_suffix(".png").as_posix(), f"image {rel}")
            target.parent.mkdir(parents=True, exist_ok=True)
            write_rgb_png(target, views["view"])
            written.append(str(rel.with_suffix(".png")))
            bar.update(1)
    record = {
        "images": written, "skipped": skipped, "extractor": extractor.description, "config": to_dict(cfg),
        "seconds_per_image": seconds / max(1, len(written)),
    }
    atomic_write_text(out / "feature_view.json", json.dumps(record, indent=2) + "\n")
    return record
