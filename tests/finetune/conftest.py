"""Fixtures of the fine-tune tests: tiny synthetic CamVid-layout data, small mmseg configs, export files."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_DEEPLAB = REPO_ROOT / "configs/finetune/mmseg/tiny/deeplabv3_r18-d8_tiny.py"
TINY_PSP = REPO_ROOT / "configs/finetune/mmseg/tiny/pspnet_r18-d8_tiny.py"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """6 train + 2 val synthetic scenes of 48x64 (6 classes, 255 = ignore), CamVid layout."""
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(root, SyntheticSpec(num_train=6, num_val=2, height=48, width=64, seed=0))


def tiny_mmseg_cfg(path: Path, data_root: Path, work_dir: Path, max_iters: int = 2):
    """The tiny mmseg config on ``data_root``: ``max_iters`` iterations, validate + checkpoint at the end."""
    from finetune.run import load_mmseg_config

    cfg = load_mmseg_config(path)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].dataset.data_root = str(data_root)
    cfg.train_cfg.max_iters = max_iters
    cfg.train_cfg.val_interval = 2
    cfg.param_scheduler[0].end = max_iters
    cfg.default_hooks.checkpoint.interval = 2
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=0)
    cfg.experiment_name = f"test_{work_dir.name}"
    return cfg


@pytest.fixture(scope="session")
def make_tiny_cfg():
    return tiny_mmseg_cfg


def resnet18_export(path: Path, deep: bool = False, seed: int = 0) -> Path:
    """Write a backbone export per docs/contracts.md section 2 (random weights, like a real export's format).

    Plain stem: a torchvision resnet18 state_dict minus ``fc``, torchvision keys.
    Deep stem: mmseg's own ResNetV1c-18 state_dict, mmseg keys.
    """
    from auxseg.checkpoint_io import save_checkpoint

    torch.manual_seed(seed)
    if deep:
        from finetune.mmcv_compat import import_mmseg

        import_mmseg()
        from mmseg.models.backbones import ResNetV1c

        state_dict = ResNetV1c(depth=18).state_dict()
        stem, key_format, mmseg_type = "deep", "mmseg", "ResNetV1c"
    else:
        import torchvision

        state_dict = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
        stem, key_format, mmseg_type = "plain", "torchvision", "ResNet"
    # distinctive values, so a test can tell loaded weights from a fresh init
    state_dict = {k: (v + 0.01 * torch.randn_like(v)) if v.is_floating_point() else v for k, v in state_dict.items()}
    meta = {
        "format": "auxseg.backbone/1",
        "arch": "resnet18",
        "stem": stem,
        "key_format": key_format,
        "mmseg_type": mmseg_type,
        "mean": [120.0, 115.0, 100.0],
        "std": [60.0, 58.0, 57.0],
        "channel_order": "rgb",
        "config": {"note": "test export"},
        "auxlabels_sha256": None,
        "auxlabels_manifest": None,
        "iteration": 10,
        "versions": {"torch": str(torch.__version__), "auxseg": "0.1.0"},
    }
    save_checkpoint({"state_dict": copy.deepcopy(state_dict), "meta": meta}, path)
    return path


@pytest.fixture
def make_export():
    return resnet18_export
