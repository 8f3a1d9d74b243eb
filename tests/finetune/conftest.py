"""Fixtures of the fine-tune tests: tiny synthetic CamVid-layout data, small mmseg configs, export files."""

from __future__ import annotations

from pathlib import Path

import pytest
from fin_helpers import TINY_DEEPLAB, TrainedRun, resnet18_export, tiny_mmseg_cfg, train_tiny

from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_root(session_tmp) -> Path:
    """6 train + 2 val synthetic scenes of 48x64 (6 classes, 255 = ignore), CamVid layout."""
    root = session_tmp / "finetune_synthetic"
    return make_synthetic_dataset(root, SyntheticSpec(num_train=6, num_val=2, height=48, width=64, seed=0))


@pytest.fixture(scope="session")
def make_tiny_cfg():
    return tiny_mmseg_cfg


@pytest.fixture
def make_export():
    return resnet18_export


@pytest.fixture(scope="session")
def trained_deeplab(session_tmp, synthetic_root) -> TrainedRun:
    """DeepLabV3 (ResNetV1c) trained 2 iterations by mmengine's Runner, once per session."""
    return train_tiny(TINY_DEEPLAB, synthetic_root, session_tmp / "finetune_deeplab" / "work", "ResNetV1c")
