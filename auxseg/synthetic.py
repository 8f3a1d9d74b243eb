"""A small segmentation dataset this project generates itself (no downloads).

Scenes are made of a few classes whose appearance is distinct and consistent
across images (a colour plus a class-specific texture), laid out as a sky
band, a ground band and random objects, so clustering pixel features *across
images* recovers the classes. It is the built-in default dataset of the demo
and the fixture of the tests.

Layout written (the CamVid/SegNet layout, which ``finetune`` also reads)::

    root/train/0000.png      root/trainannot/0000.png
    root/val/0000.png        root/valannot/0000.png
    root/dataset.json        class names, ignore index, sizes, seed
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auxseg.config import PositiveInt, Seed, ranged
from auxseg.files import atomic_write_json
from auxseg.images import write_label_png, write_rgb_png

CLASS_NAMES = ("sky", "ground", "wall", "tree", "car", "person")
# RGB base colours and texture (stripe period in px, angle in degrees)
_APPEARANCE = {
    "sky": ((120, 170, 235), (0, 0)),
    "ground": ((110, 100, 90), (6, 0)),
    "wall": ((190, 120, 80), (8, 90)),
    "tree": ((40, 130, 50), (4, 45)),
    "car": ((200, 40, 40), (10, 135)),
    "person": ((230, 200, 60), (3, 90)),
}
IGNORE_INDEX = 255


@dataclass(frozen=True)
class SyntheticSpec:
    num_train: PositiveInt = 24
    num_val: PositiveInt = 8
    height: ranged(int, ge=8) = 96
    width: ranged(int, ge=8) = 128
    num_classes: ranged(int, ge=1, le=254) = 6
    seed: Seed = 0


def _texture(h: int, w: int, period: int, angle: float, rng: np.random.Generator) -> np.ndarray:
    """A [h, w] pattern in [-1, 1]: stripes of the given period and angle, plus noise."""
    if period == 0:
        return rng.normal(0, 0.15, size=(h, w))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = np.deg2rad(angle)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
    return 0.7 * stripes + rng.normal(0, 0.2, size=(h, w))


def make_scene(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image ``[H, W, 3]`` uint8 and its label map ``[H, W]`` uint8."""
    h, w = spec.height, spec.width
    names = CLASS_NAMES[: spec.num_classes]
    label = np.zeros((h, w), dtype=np.uint8)
    horizon = int(h * rng.uniform(0.3, 0.5))
    label[horizon:] = 1  # ground below the horizon, sky above
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(rng.integers(2, 6)):
        cls = int(rng.integers(2, spec.num_classes))
        bh, bw = int(rng.integers(h // 8, h // 2)), int(rng.integers(w // 10, w // 3))
        cy = int(rng.integers(horizon - bh // 2, min(h, horizon + bh)))
        cx = int(rng.integers(0, w))
        if rng.random() < 0.5:  # rectangle
            mask = (abs(yy - cy) <= bh // 2) & (abs(xx - cx) <= bw // 2)
        else:  # ellipse
            mask = ((yy - cy) / max(bh / 2, 1)) ** 2 + ((xx - cx) / max(bw / 2, 1)) ** 2 <= 1
        label[mask] = cls
    image = np.zeros((h, w, 3), dtype=np.float32)
    brightness = rng.uniform(0.8, 1.2)  # per-image lighting, so colour alone is not enough
    for cls, name in enumerate(names):
        mask = label == cls
        if not mask.any():
            continue
        colour, (period, angle) = _APPEARANCE[name]
        tex = _texture(h, w, period, angle, rng)
        for c in range(3):
            image[..., c][mask] = (colour[c] * brightness + 35 * tex[mask])
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_synthetic_dataset(root: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write a synthetic dataset in the CamVid layout under ``root``; returns ``root``.

    Deterministic for a given ``spec`` (seeded). Existing files are overwritten.
    """
    root = Path(root)
    if not 2 <= spec.num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be in 2..{len(CLASS_NAMES)}, got {spec.num_classes}")
    rng = np.random.default_rng(spec.seed)
    for split, count in (("train", spec.num_train), ("val", spec.num_val)):
        for i in range(count):
            image, label = make_scene(spec, rng)
            write_rgb_png(root / split / f"{i:04d}.png", image)
            write_label_png(root / f"{split}annot" / f"{i:04d}.png", label)
    atomic_write_json(
        root / "dataset.json",
        {
            "format": "auxseg.synthetic/1",
            "class_names": list(CLASS_NAMES[: spec.num_classes]),
            "num_classes": spec.num_classes,
            "ignore_index": IGNORE_INDEX,
            "layout": "camvid",
            "spec": dataclasses.asdict(spec),
        },
    )
    return root
