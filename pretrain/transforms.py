"""Paired two-view augmentation (supplement Table 8).

Each view is one affine warp of the original image, composed of scaling,
rotation about the image centre, a square crop window and a horizontal flip,
followed by a resize of the window to a fixed output side (so views batch).
The same warp is applied to

- the image (bilinear),
- its label map (nearest), and
- a map of original pixel coordinates (``y * W + x``; ``-1`` where the view
  shows padding, a value no real pixel can have),

so the label map is, by construction, ``label[coords]`` and the same physical
pixel can be found in both views. Padding is the ignore value in the label
map and the mean colour in the image. Photometric ops (colour jitter,
grayscale, cutout) then act on the image only. All random parameters are drawn
per sample from a ``numpy.random.Generator`` seeded by (seed, epoch, image),
so a view does not depend on which worker or process made it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from auxseg.contracts.common import IMAGENET_MEAN, IMAGENET_STD
from pretrain.config import AugmentConfig

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD  # RGB, 0-255 scale (the backbone export's meta records them)


@dataclass(frozen=True)
class ViewParams:
    """The random parameters of one view; geometry in pixels of the original image.

    scale: isotropic scale factor; angle: rotation in degrees (positive = clockwise
    on screen, as y points down); crop: side of the square window in the scaled,
    rotated plane whose origin is the image centre; window: (x, y) of the window's
    top-left corner in that plane; flip: horizontal flip of the window; out_size:
    side of the output view (the window is resized to it).
    """

    scale: float
    angle: float
    crop: int
    window: tuple[float, float]
    flip: bool
    out_size: int
    jitter: tuple[float, float, float, float] | None = None  # brightness, contrast, saturation factors, hue shift
    jitter_order: tuple[int, ...] = (0, 1, 2, 3)
    grayscale: bool = False
    cutout: tuple[int, int, int] = (0, 0, 0)  # side, top, left in output pixels (side 0 = none)


def sample_view_params(rng: np.random.Generator, height: int, width: int, cfg: AugmentConfig) -> ViewParams:
    """Draw one view's parameters for an image of ``height x width`` px (Table 8 ranges in ``cfg``)."""
    scale = float(rng.uniform(*cfg.scale))
    angle = float(rng.uniform(*cfg.rotation))
    crop = int(rng.integers(cfg.crop[0], cfg.crop[1] + 1))
    # bounding box of the scaled, rotated image in the plane centred on the image centre
    corners = np.array([[-width, -height], [width, -height], [width, height], [-width, height]]) / 2.0
    box = corners @ _rotation(angle).T * scale
    lo, hi = box.min(axis=0), box.max(axis=0)
    # the window lies inside the box where the box is larger, else it covers the box fully
    window = tuple(float(rng.uniform(min(a, b - crop), max(a, b - crop))) for a, b in zip(lo, hi))
    flip = bool(rng.random() < cfg.flip_p)
    jitter, order = None, (0, 1, 2, 3)
    if rng.random() < cfg.color_jitter_p:
        b, c, s, h = cfg.color_jitter
        jitter = (
            float(rng.uniform(max(0.0, 1 - b), 1 + b)),
            float(rng.uniform(max(0.0, 1 - c), 1 + c)),
            float(rng.uniform(max(0.0, 1 - s), 1 + s)),
            float(rng.uniform(-h, h)),
        )
        order = tuple(int(i) for i in rng.permutation(4))  # torchvision's ColorJitter also shuffles
    grayscale = bool(rng.random() < cfg.grayscale_p)
    side = int(rng.integers(cfg.cutout[0], cfg.cutout[1] + 1))
    top = int(rng.integers(0, max(1, cfg.out_size - side + 1)))
    left = int(rng.integers(0, max(1, cfg.out_size - side + 1)))
    return ViewParams(scale, angle, crop, window, flip, cfg.out_size, jitter, order, grayscale, (side, top, left))


def _rotation(angle_deg: float) -> np.ndarray:
    t = math.radians(angle_deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def view_to_original(p: ViewParams, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Affine map from output pixel centres to continuous original coordinates.

    Returns ``(A [2, 2], b [2])`` such that the centre of output pixel
    ``(col, row)`` sits at original ``(x, y) = A @ (col, row) + b`` (pixel ``i``
    covers ``[i, i + 1)``, so its centre is ``i + 0.5``).
    """
    s_out = p.out_size
    flip = np.diag([-1.0 if p.flip else 1.0, 1.0])
    flip_offset = np.array([p.crop if p.flip else 0.0, 0.0])
    rot_inv = _rotation(p.angle).T
    # window coords w = flip @ (crop / out) * (u + 0.5) + flip_offset; plane z = window + w;
    # original = rot_inv @ z / scale + centre
    a = rot_inv @ flip * (p.crop / (s_out * p.scale))
    b = rot_inv @ (np.asarray(p.window) + flip_offset) / p.scale + np.array([width, height]) / 2.0 + a @ [0.5, 0.5]
    return a, b


def warp_view(
    image: np.ndarray, label: np.ndarray, p: ViewParams, ignore_index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply a view's geometry to an image, its label map and the pixel-coordinate map.

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        label: integer ``[H, W]`` label map.
        p: the view's parameters.
        ignore_index: label value written where the view shows padding.

    Returns:
        image uint8 ``[S, S, 3]`` (padding = mean colour), label ``[S, S]`` int64
        (nearest; padding = ignore_index), coords ``[S, S]`` int64 (``y * W + x`` of
        the original pixel each output pixel shows; -1 on padding). ``S = p.out_size``.
    """
    height, width = label.shape
    a, b = view_to_original(p, height, width)
    s = p.out_size
    cols, rows = np.meshgrid(np.arange(s, dtype=np.float64), np.arange(s, dtype=np.float64))
    x = a[0, 0] * cols + a[0, 1] * rows + b[0]
    y = a[1, 0] * cols + a[1, 1] * rows + b[1]
    xi, yi = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    coords = np.where(inside, yi * width + xi, -1)
    flat = label.reshape(-1).astype(np.int64)
    out_label = np.where(inside, flat[np.clip(coords, 0, None)], ignore_index)
    # cv2 maps destination index -> source index: index = centre - 0.5
    m = np.concatenate([a, (b - 0.5)[:, None]], axis=1)
    fill = tuple(float(v) for v in MEAN)
    out_image = cv2.warpAffine(
        np.ascontiguousarray(image), m, (s, s),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=fill,
    )
    return out_image, out_label, coords


def photometric(image: np.ndarray, p: ViewParams) -> torch.Tensor:
    """Colour jitter, grayscale and cutout on a uint8 ``[S, S, 3]`` view -> normalised float ``[3, S, S]``.

    Cutout erases the image only (to the mean colour, i.e. 0 after normalisation);
    the labels under it stay, so the network must infer them from context (choice).
    """
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # [3, S, S] uint8
    if p.jitter is not None:
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        identity = (1.0, 1.0, 1.0, 0.0)  # factors that leave a uint8 image unchanged, bit for bit
        for i in p.jitter_order:
            if p.jitter[i] != identity[i]:  # a hue range of 0 would otherwise cost an RGB->HSV->RGB round trip
                img = ops[i](img, p.jitter[i])
    if p.grayscale:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    out = (img.float() - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    side, top, left = p.cutout
    if side > 0:
        out[:, top : top + side, left : left + side] = 0.0
    return out


def prior_view(ids: np.ndarray, probs: np.ndarray, coords: np.ndarray, width: int,
               stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A view's soft prior: the stored top-k prior read through the view's coordinate map.

    The same warp as the label map (which is ``label[coords]``): output pixel
    ``(i, j)`` shows original pixel ``coords[i, j] = y * W + x``, whose prior is
    that of stored cell ``(min(y // stride, h - 1), min(x // stride, w - 1))``
    (the mapping the label PNGs were upsampled with).

    Args:
        ids, probs: ``[k, h, w]`` the image's stored prior (``auxseg.contracts.priors.read_prior_topk``).
        coords: int64 ``[S, S]`` from :func:`warp_view` (-1 on padding).
        width: W of the original image.
        stride: the folder's ``prior_stride``.
    Returns:
        ids int64 ``[k, S, S]`` and probs float32 ``[k, S, S]`` (all 0 on padding).
    """
    k, h, w = ids.shape
    inside = coords >= 0
    c = np.clip(coords, 0, None)
    cell = np.minimum(c // width // stride, h - 1) * w + np.minimum(c % width // stride, w - 1)  # [S, S]
    out_ids = ids.reshape(k, -1)[:, cell]
    out_probs = np.where(inside[None], probs.reshape(k, -1)[:, cell], 0.0).astype(np.float32)
    return torch.from_numpy(out_ids.astype(np.int64)), torch.from_numpy(out_probs)


def make_view(
    image: np.ndarray, label: np.ndarray, p: ViewParams, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One augmented view: (image float ``[3, S, S]``, label int64 ``[S, S]``, coords int64 ``[S, S]``)."""
    img, lab, coords = warp_view(image, label, p, ignore_index)
    return photometric(img, p), torch.from_numpy(lab), torch.from_numpy(coords)
