"""Auxiliary labels from local-prediction features: the `small_model` extractor reads the small-model export,
and a ResNet-18 trained with local_prediction works with the existing `auxseg_export` extractor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from independent import pmiou_by_enumeration

from auxlabels.config import AuxLabelsConfig, ExtractorConfig
from auxlabels.features import build_extractor
from auxlabels.pipeline import run
from auxseg.checkpoint_io import CheckpointError
from auxseg.config import ConfigError, load_config
from auxseg.contracts.common import IMAGENET_MEAN, IMAGENET_STD
from auxseg.contracts.small_model import save_small_model
from auxseg.nets.small import LinearModel, PixelModel, PredSeg1
from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "auxlabels" / "tiny.yaml"
IMG = torch.randint(0, 256, (2, 3, 48, 60), dtype=torch.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"),
                                  SyntheticSpec(num_train=2, num_val=6, height=48, width=64, seed=3))


def _normalised(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float() - mean) / std


@pytest.mark.parametrize(("cls", "dim", "stride"), [(PixelModel, 3, 1), (LinearModel, 50, 1), (PredSeg1, 256, 11)])
def test_the_extractor_returns_the_networks_features(tmp_path, cls, dim, stride):
    torch.manual_seed(0)
    net = cls().eval()
    path = save_small_model(tmp_path / "small_model.pth", net, config={"note": "test"}, iteration=7)
    ex = build_extractor(ExtractorConfig(name="small_model", checkpoint=str(path), layer="output"))
    with torch.no_grad():
        torch.testing.assert_close(ex(IMG), net(_normalised(IMG)))
    # the stride is measured on a 64 px input: predseg1's 12 gives a 6-wide map, 64 / 6 rounds to 11
    assert ex.dim == dim and ex.stride == stride
    assert ex.description["arch"] == net.arch and ex.description["checkpoint_sha256"]


def test_the_extractor_refuses_other_files_and_layers(tmp_path):
    path = save_small_model(tmp_path / "s.pth", LinearModel(), config={}, iteration=0)
    with pytest.raises(ConfigError, match="one output"):
        build_extractor(ExtractorConfig(name="small_model", checkpoint=str(path), layer="layer2"))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="not a small-model export"):
        build_extractor(ExtractorConfig(name="small_model", checkpoint=str(tmp_path / "plain.pth"), layer="output"))


def test_kmeans_labels_and_pmiou_from_a_small_model(data, tmp_path):
    torch.manual_seed(0)
    path = save_small_model(tmp_path / "small_model.pth", LinearModel(), config={}, iteration=0)
    cfg = load_config(AuxLabelsConfig, TINY, [
        f"image_dir={data / 'val'}", f"gt_dir={data / 'valannot'}", f"out_dir={tmp_path / 'aux'}",
        "extractor.name=small_model", f"extractor.checkpoint={path}", "extractor.random_init=false",
        "extractor.layer=output"])
    manifest = run(cfg)
    assert manifest["complete"] and manifest["num_labels"] == 9 and manifest["extractor"]["dim"] == 50
    assert np.load(tmp_path / "aux" / "centroids.npy").shape == (9, 50)
    report = json.loads((tmp_path / "aux" / "pmiou.json").read_text())
    files = [(tmp_path / "aux" / "labels" / rel, data / "valannot" / rel) for rel in manifest["images"]]
    assert report["num_images"] == 6
    assert report["pmiou"] == pytest.approx(pmiou_by_enumeration(files, 9, 6), abs=1e-9)  # a second route


def test_resnet18_trained_with_local_prediction_works_with_auxseg_export(tmp_path):
    from pretrain.config import PretrainConfig
    from pretrain.train import run as pretrain

    cfg = load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", [
        f"out_dir={tmp_path / 'pre'}", "loss.name=local_prediction", "train.max_iters=1", "train.progress=false",
        "train.tensorboard=false", "augment.out_size=48", "augment.crop=[40,48]",
        "loss.local_prediction.repetitions=1", "loss.local_prediction.locations=16"])
    assert pretrain(cfg).name == "backbone_mmseg.pth"
    path = tmp_path / "pre" / "backbone_torchvision.pth"
    ex = build_extractor(ExtractorConfig(name="auxseg_export", checkpoint=str(path), layer="layer3"))
    assert ex.dim == 256 and ex.description["arch"] == "resnet18"
    assert ex.description["output_stride"] == 8  # run as trained: dilated, not a stride-32 ResNet
    with torch.no_grad():
        assert ex.body(torch.zeros(1, 3, 40, 48)).shape == (1, 256, 5, 6)
    from auxseg.checkpoint_io import load_checkpoint

    trained = load_checkpoint(tmp_path / "pre" / "checkpoints" / "iter_0000001.pth")["model"]
    torch.testing.assert_close(ex.body.stem[0].weight, trained["net.backbone.conv1.weight"])
