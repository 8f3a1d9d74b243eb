"""Backbone initialisation: export / torchvision / MoCo / mmseg checkpoints -> mmseg backbone, exact key checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from auxseg.checkpoint_io import CheckpointError, load_checkpoint, save_checkpoint
from auxseg.contracts.backbone import infer_resnet, load_backbone_export
from auxseg.contracts.common import IMAGENET_MEAN
from finetune.convert import load_backbone_weights, prepare_init, verify_loaded

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = REPO_ROOT / "configs/finetune/mmseg/tiny/deeplabv3_r18-d8_tiny.py"


def tiny_cfg():
    from finetune.mmseg_config import load_mmseg_config

    return load_mmseg_config(TINY)


def build_backbone(cfg):
    from mmseg.registry import MODELS

    return MODELS.build(cfg.model.backbone)


@pytest.mark.parametrize("deep", [False, True], ids=["plain-torchvision-keys", "deep-mmseg-keys"])
def test_export_initialises_backbone_with_zero_missing_keys(tmp_path, make_export, deep):
    export = make_export(tmp_path / "export.pth", deep=deep)
    cfg = tiny_cfg()
    report = prepare_init("export", str(export), cfg, tmp_path)
    assert report["missing_keys"] == [] and report["unexpected_keys"] == []
    assert cfg.model.backbone.type == ("ResNetV1c" if deep else "ResNet")
    assert cfg.model.backbone.init_cfg == dict(type="Pretrained", checkpoint=str(tmp_path / "init_backbone.pth"))
    assert cfg.model.data_preprocessor.mean == [120.0, 115.0, 100.0]  # from the export's meta
    assert cfg.model.data_preprocessor.std == [60.0, 58.0, 57.0]
    assert cfg.model.pretrained is None
    # mmengine's init_cfg path really loads these tensors, and verify_loaded proves it
    backbone = build_backbone(cfg)
    backbone.init_weights()
    assert verify_loaded(backbone, report["converted"]) == len(load_checkpoint(export)["state_dict"])
    fresh = build_backbone(tiny_cfg() if deep else cfg)
    fresh.init_cfg = None
    with pytest.raises(CheckpointError, match="differ from the checkpoint"):
        verify_loaded(fresh, report["converted"])


def test_wrong_checkpoint_fails_loudly_naming_the_file(tmp_path, make_export):
    # a deep-stem export whose meta claims the plain stem: meta and weights disagree
    deep = make_export(tmp_path / "deep.pth", deep=True)
    ckpt = load_checkpoint(deep)
    ckpt["meta"].update(stem="plain", mmseg_type="ResNet", key_format="mmseg")
    save_checkpoint(ckpt, tmp_path / "lying.pth")
    with pytest.raises(CheckpointError, match=r"lying.pth: resnet18 plain-stem backbone keys do not match.*unexpected keys: stem.0.weight"):
        prepare_init("export", str(tmp_path / "lying.pth"), tiny_cfg(), tmp_path)
    # a backbone missing one block: exact key check names the file and the missing keys
    ckpt = load_checkpoint(make_export(tmp_path / "plain.pth"))
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("layer4.1.bn2")}
    ckpt["state_dict"]["proj.0.weight"] = torch.zeros(1)
    save_checkpoint(ckpt, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"broken\.pth.*missing keys: layer4\.1\.bn2.*unexpected keys: proj\.0"):
        prepare_init("export", str(tmp_path / "broken.pth"), tiny_cfg(), tmp_path)
    assert not (tmp_path / "init_backbone.pth").exists()  # nothing written for a refused checkpoint


def test_depth_mismatch_and_format_errors(tmp_path, make_export):
    import torchvision

    r50 = {k: v for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    save_checkpoint(r50, tmp_path / "r50.pth")
    with pytest.raises(CheckpointError, match="ResNet-50 but the mmseg config builds a ResNet-18"):
        prepare_init("torchvision", str(tmp_path / "r50.pth"), tiny_cfg(), tmp_path)
    save_checkpoint({"state_dict": {}, "meta": {"format": "other/9"}}, tmp_path / "fmt.pth")
    with pytest.raises(CheckpointError, match=r"fmt\.pth.*'other/9'"):
        load_backbone_export(tmp_path / "fmt.pth")
    with pytest.raises(CheckpointError, match="no init.checkpoint"):
        prepare_init("export", None, tiny_cfg(), tmp_path)
    save_checkpoint({"state_dict": {"head.weight": torch.zeros(2)}}, tmp_path / "nores.pth")
    with pytest.raises(CheckpointError, match=r"nores\.pth: not ResNet"):
        load_backbone_weights("torchvision", tmp_path / "nores.pth")


def test_torchvision_and_moco_checkpoints(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    save_checkpoint(net.state_dict(), tmp_path / "imagenet.pth")  # as torchvision saves it, fc included
    weights = load_backbone_weights("torchvision", tmp_path / "imagenet.pth")
    assert not any(k.startswith("fc.") for k in weights.state_dict)
    assert (weights.depth, weights.stem, weights.mean) == (18, "plain", list(IMAGENET_MEAN))
    cfg = tiny_cfg()
    report = prepare_init("torchvision", str(tmp_path / "imagenet.pth"), cfg, tmp_path)
    assert report["missing_keys"] == [] and cfg.model.backbone.type == "ResNet"

    # MoCo v2: module.encoder_q.* with an MLP fc, plus the key encoder and the queue
    moco = {f"module.encoder_q.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    moco.update({"module.encoder_q.fc.0.weight": torch.zeros(4, 512), "module.encoder_q.fc.2.weight": torch.zeros(2, 4),
                 "module.encoder_k.conv1.weight": torch.zeros(1), "module.queue": torch.zeros(2, 3)})
    save_checkpoint({"epoch": 200, "arch": "resnet18", "state_dict": moco}, tmp_path / "moco.pth")
    weights = load_backbone_weights("moco", tmp_path / "moco.pth")
    assert set(weights.state_dict) == {k for k in net.state_dict() if not k.startswith("fc.")}
    assert torch.equal(weights.state_dict["conv1.weight"], net.conv1.weight)
    with pytest.raises(CheckpointError, match="not a MoCo checkpoint"):
        load_backbone_weights("moco", tmp_path / "imagenet.pth")


def test_mmseg_checkpoint_and_infer_resnet(tmp_path):
    from auxseg.mmseg_compat import import_mmseg

    import_mmseg()
    from mmseg.models.backbones import ResNetV1c

    sd = {f"backbone.{k}": v for k, v in ResNetV1c(depth=18).state_dict().items()}
    sd["decode_head.conv_seg.weight"] = torch.zeros(1)
    save_checkpoint({"meta": {}, "state_dict": sd}, tmp_path / "seg.pth")
    weights = load_backbone_weights("mmseg", tmp_path / "seg.pth")
    assert (weights.depth, weights.stem) == (18, "deep") and "decode_head.conv_seg.weight" not in weights.state_dict
    cfg = tiny_cfg()
    assert prepare_init("mmseg", str(tmp_path / "seg.pth"), cfg, tmp_path)["unexpected_keys"] == []
    assert cfg.model.backbone.type == "ResNetV1c"
    assert infer_resnet({"conv1.weight": 0, "layer1.0.conv3.weight": 0, **{f"layer{s}.{b}.x": 0 for s, n in
                         zip(range(1, 5), (3, 4, 6, 3)) for b in range(n)}}, "x") == (50, "plain")


def test_random_init_clears_pretrained():
    cfg = tiny_cfg()
    cfg.model.pretrained = "open-mmlab://resnet18_v1c"
    report = prepare_init("random", None, cfg, Path("/nonexistent"))
    assert cfg.model.pretrained is None and cfg.model.backbone.init_cfg is None
    assert report["type"] == "random" and report["checkpoint"] is None


@pytest.mark.parametrize("stem", ["plain", "deep"])
def test_real_pretrain_export_initialises_backbone(tmp_path, stem):
    """The files `pretrain` itself exports (every key format) load with zero missing/unexpected keys."""
    export_mod = pytest.importorskip("pretrain.export")
    from pretrain.model import DilatedResNet

    paths = export_mod.export_backbone(DilatedResNet("resnet18", stem), tmp_path / "export", config={}, iteration=1,
                                       auxlabels_sha256=None, auxlabels_manifest=None)
    assert paths
    for key_format, path in paths.items():
        cfg = tiny_cfg()
        report = prepare_init("export", str(path), cfg, tmp_path / key_format)
        assert report["missing_keys"] == [] and report["unexpected_keys"] == [], key_format
        assert cfg.model.backbone.type == {"plain": "ResNet", "deep": "ResNetV1c"}[stem]
        backbone = build_backbone(cfg)
        backbone.init_weights()
        assert verify_loaded(backbone, report["converted"]) == report["num_tensors"]
