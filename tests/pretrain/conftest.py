"""Fixtures of the pretrain tests: a tiny synthetic dataset and its ground truth as an auxiliary-label folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from auxseg.config import load_config
from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset
from pretrain.config import PretrainConfig
from pretrain.data import write_groundtruth_label_folder

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def gt_label_folder(session_tmp) -> Path:
    """An auxiliary-label folder per docs/contracts.md whose labels are the synthetic ground truth."""
    root = session_tmp / "pretrain_data"
    make_synthetic_dataset(root / "dataset", SyntheticSpec(num_train=6, num_val=0, height=48, width=64, seed=3))
    return write_groundtruth_label_folder(root / "dataset", root / "auxlabels")


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(out_dir, labels, *overrides) -> PretrainConfig``: the tiny preset on a label folder."""
    return _tiny_config


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


def _tiny_config(out_dir: Path, labels: Path, *overrides: str) -> PretrainConfig:
    """The tiny preset on the fixture folder, quiet (no progress bar, no TensorBoard unless asked)."""
    return load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", [
        f"out_dir={out_dir}", "data.source=folder", f"data.labels={labels}",
        "augment.crop=[40,48]", "augment.out_size=48", "train.progress=false", "train.tensorboard=false",
        *overrides,
    ])
