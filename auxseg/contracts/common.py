"""Constants and the versions block that every artefact of the project shares."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

# ImageNet statistics on the 0-255 scale, RGB order: what torchvision and MoCo weights were
# trained with, and what pre-training normalises with.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# ResNet stem -> the mmseg backbone type with that stem (plain: torchvision / ResNetV1b 7x7 stem;
# deep: ResNetV1c's three 3x3 convs)
MMSEG_TYPE_OF_STEM = {"plain": "ResNet", "deep": "ResNetV1c"}

# Distributions whose versions shape an artefact; read from package metadata (no slow imports).
VERSIONED_PACKAGES = ("numpy", "torch", "torchvision", "faiss-cpu", "faiss-gpu", "fast-slic", "scikit-learn",
                      "scikit-image", "scipy", "pillow", "mmsegmentation", "mmengine")


@dataclass(frozen=True)
class Provenance:
    """Where an export comes from: recorded in the meta block of every export (docs/contracts.md sections 2, 2b)."""

    config: dict  # the resolved training config
    iteration: int  # the training iteration the weights are from
    auxlabels_sha256: str | None = None  # labels_sha256 of the label folder trained on
    auxlabels_manifest: str | None = None  # that folder's manifest.json


def versions(packages: tuple[str, ...] = VERSIONED_PACKAGES) -> dict[str, str]:
    """``{"python": ..., "auxseg": ..., <distribution>: <version>}`` for the installed ``packages``."""
    from auxseg import __version__

    found = {"python": platform.python_version(), "auxseg": __version__}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
