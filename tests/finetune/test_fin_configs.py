"""Every shipped mmseg config builds, runs a 2x3x64x64 forward pass and follows the project's rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
MMSEG_CONFIGS = sorted(
    p for p in (REPO_ROOT / "configs/finetune/mmseg").rglob("*.py") if "_base_" not in p.parts
)
NUM_CLASSES = {"camvid": 11, "nyuv2": 40, "cityscapes": 19, "ade20k": 150, "tiny": 6}
DATASET_TYPES = {"camvid": "CamVidDataset", "nyuv2": "NYUv2Dataset", "cityscapes": "CityscapesDataset",
                 "ade20k": "ADE20KDataset", "tiny": "LabelFolderDataset"}


def test_every_dataset_has_both_models_at_both_depths():
    names = {p.relative_to(REPO_ROOT / "configs/finetune/mmseg").as_posix() for p in MMSEG_CONFIGS}
    for dataset in ("camvid", "nyuv2", "cityscapes", "ade20k"):
        for model in ("deeplabv3", "pspnet"):
            for depth in ("r18", "r50"):
                assert f"{dataset}/{model}_{depth}-d8_{dataset}.py" in names


@pytest.mark.parametrize("path", MMSEG_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_builds_and_forwards(path):
    from mmseg.registry import DATASETS, MODELS, TRANSFORMS

    from finetune.mmseg_config import load_mmseg_config

    cfg = load_mmseg_config(path)
    dataset = path.parent.name
    n = NUM_CLASSES[dataset]
    assert cfg.model.pretrained is None  # never reaches for open-mmlab downloads
    assert cfg.model.backbone.norm_cfg.type == "BN" and cfg.model.decode_head.norm_cfg.type == "BN"
    assert cfg.model.decode_head.num_classes == n and cfg.model.auxiliary_head.num_classes == n
    assert cfg.val_evaluator.type == "PerClassIoUMetric"
    assert cfg.train_dataloader.dataset.type == DATASET_TYPES[dataset]
    assert DATASETS.get(cfg.train_dataloader.dataset.type) is not None
    for step in cfg.train_dataloader.dataset.pipeline + cfg.val_dataloader.dataset.pipeline:
        TRANSFORMS.build(step)
    # one schedule per dataset: PolyLR ends where training ends
    assert cfg.param_scheduler[0].end == cfg.train_cfg.max_iters

    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64), mode="tensor")
    assert out.shape[:2] == (2, n) and torch.isfinite(out).all()
