"""Colours for label maps in figures (the pipeline report and tools/visualize_auxlabels.py)."""

from __future__ import annotations

import numpy as np


def palette(n: int, seed: int = 0) -> np.ndarray:
    """``[n, 3]`` uint8 distinct-ish colours (seeded), stable across runs."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 256, size=(n, 3), dtype=np.uint8)


def colourise(label: np.ndarray, colours: np.ndarray, ignore) -> np.ndarray:
    """``[H, W, 3]`` colours of a label map; ignore values (and ids beyond the palette) are black."""
    out = np.zeros((*label.shape, 3), dtype=np.uint8)
    valid = (label < len(colours)) & ~np.isin(label, list(ignore))
    out[valid] = colours[label[valid]]
    return out


def blend(image: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colour`` as uint8."""
    return (image.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)
