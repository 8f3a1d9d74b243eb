"""The network, initial weights (ImageNet, MoCo, our export) and the export loading into mmseg / torchvision."""

from __future__ import annotations

import pytest
import torch
import torchvision

from auxseg.checkpoint_io import CheckpointError, check_keys, save_checkpoint
from auxseg.contracts.backbone import load_backbone_export
from pretrain.checkpoint import init_backbone
from pretrain.config import ModelConfig
from pretrain.export import export_backbone
from pretrain.model import DilatedResNet, PretrainNet


def mmseg_backbone(mmseg_type: str, depth: int):
    from auxseg.mmseg_compat import import_mmseg

    import_mmseg()
    from mmseg.models.backbones import ResNet, ResNetV1c

    cls = {"ResNet": ResNet, "ResNetV1c": ResNetV1c}[mmseg_type]
    return cls(depth=depth, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True)


def export(tmp_path, arch, stem):
    torch.manual_seed(0)
    backbone = DilatedResNet(arch, stem)
    paths = export_backbone(backbone, tmp_path, config={"model": {"arch": arch}}, iteration=7,
                            auxlabels_sha256="ab" * 32, auxlabels_manifest="/x/manifest.json")
    return backbone, paths


@pytest.mark.parametrize("arch, stem", [("resnet18", "plain"), ("resnet50", "plain"), ("resnet18", "deep"),
                                        ("resnet50", "deep")])
def test_export_loads_into_mmseg_with_zero_missing_keys(tmp_path, arch, stem):
    backbone, paths = export(tmp_path, arch, stem)
    state, meta = load_backbone_export(paths["mmseg"])
    assert meta["mmseg_type"] == ("ResNet" if stem == "plain" else "ResNetV1c") and meta["stem"] == stem
    # loadable without our loader too, with weights_only=True
    raw = torch.load(paths["mmseg"], weights_only=True)
    assert raw["meta"]["iteration"] == 7 and raw["meta"]["auxlabels_sha256"] == "ab" * 32
    model = mmseg_backbone(meta["mmseg_type"], int(arch[6:]))
    check_keys(model.state_dict().keys(), state.keys(), paths["mmseg"], "mmseg backbone")
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    # same weights -> same features: the dilation/stride layout matches mmseg's DeepLabV3 backbone
    model.eval()
    backbone.eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[-1], backbone(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_output_stride_16_computes_what_mmseg_d16_computes_with_the_same_weights(arch):
    """model.output_stride=16: only the last stage dilated, as mmseg's -d16 backbone (strides (1, 2, 2, 1),
    dilations (1, 1, 1, 2), contract_dilation); the weights are the stride-8 network's, key for key."""
    from auxseg.mmseg_compat import import_mmseg

    import_mmseg()
    from mmseg.models.backbones import ResNetV1c

    torch.manual_seed(0)
    ours = DilatedResNet(arch, "deep", output_stride=16).eval()
    assert ours.state_dict().keys() == DilatedResNet(arch, "deep").state_dict().keys()
    theirs = ResNetV1c(depth=int(arch[6:]), strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2),
                       contract_dilation=True)
    theirs.load_state_dict(ours.state_dict())
    theirs.eval()  # mmseg's ResNet.train() returns None: no chaining
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        out = ours(x)
        assert out.shape[-2:] == (3, 4)
        torch.testing.assert_close(theirs(x)[-1], out, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="output_stride"):
        DilatedResNet(arch, "deep", output_stride=32)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_plain_export_loads_into_torchvision_with_zero_missing_keys(tmp_path, arch):
    _, paths = export(tmp_path, arch, "plain")
    state, meta = load_backbone_export(paths["torchvision"])
    assert meta["key_format"] == "torchvision"
    model = getattr(torchvision.models, arch)(weights=None)
    expected = [k for k in model.state_dict() if not k.startswith("fc.")]
    check_keys(expected, state.keys(), paths["torchvision"])
    result = model.load_state_dict(state, strict=False)
    assert result.unexpected_keys == [] and sorted(result.missing_keys) == ["fc.bias", "fc.weight"]


def test_deep_stem_has_no_torchvision_export(tmp_path):
    _, paths = export(tmp_path, "resnet18", "deep")
    assert set(paths) == {"mmseg"}


def test_loader_refuses_wrong_files(tmp_path):
    _, paths = export(tmp_path, "resnet18", "plain")
    ckpt = torch.load(paths["mmseg"], weights_only=True)
    bad = dict(ckpt, meta=dict(ckpt["meta"], format="other/1"))
    save_checkpoint(bad, tmp_path / "bad_format.pth")
    with pytest.raises(CheckpointError, match="bad_format.pth.*format"):
        load_backbone_export(tmp_path / "bad_format.pth")
    state = dict(ckpt["state_dict"])
    state.pop("layer4.1.bn2.running_var")
    save_checkpoint(dict(ckpt, state_dict=state), tmp_path / "missing_key.pth")
    with pytest.raises(CheckpointError, match="missing_key.pth.*layer4.1.bn2.running_var"):
        load_backbone_export(tmp_path / "missing_key.pth")
    save_checkpoint(dict(ckpt, meta=dict(ckpt["meta"], stem="deep")), tmp_path / "wrong_stem.pth")
    with pytest.raises(CheckpointError, match="wrong_stem.pth"):
        load_backbone_export(tmp_path / "wrong_stem.pth")


def test_init_from_torchvision_moco_and_our_export(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    save_checkpoint(tv.state_dict(), tmp_path / "imagenet.pth")
    moco = {f"module.encoder_q.{k}": v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    moco.update({"module.encoder_q.fc.0.weight": torch.zeros(512, 512), "module.encoder_q.fc.2.weight": torch.zeros(128, 512),
                 "module.encoder_k.conv1.weight": torch.zeros(1)})
    save_checkpoint({"state_dict": moco, "epoch": 200}, tmp_path / "moco.pth")
    for name, kind in (("imagenet.pth", "torchvision"), ("moco.pth", "moco")):
        backbone = DilatedResNet("resnet18", "plain")
        assert init_backbone(backbone, str(tmp_path / name)).startswith(kind)
        torch.testing.assert_close(backbone.conv1.weight, tv.conv1.weight)
        torch.testing.assert_close(backbone.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)
    _, paths = export(tmp_path / "exp", "resnet18", "deep")
    deep = DilatedResNet("resnet18", "deep")
    assert init_backbone(deep, str(paths["mmseg"])).startswith("export:")


def test_init_refuses_mismatched_checkpoints(tmp_path):
    save_checkpoint(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="r18.pth.*missing keys: stem"):
        init_backbone(DilatedResNet("resnet18", "deep"), str(tmp_path / "r18.pth"))  # plain weights, deep stem
    with pytest.raises(CheckpointError, match="r18.pth"):
        init_backbone(DilatedResNet("resnet50", "plain"), str(tmp_path / "r18.pth"))
    with pytest.raises(CheckpointError, match="not found"):
        init_backbone(DilatedResNet("resnet18", "plain"), str(tmp_path / "nothing.pth"))


@pytest.mark.parametrize("decoder", ["none", "aspp"])
def test_every_trainable_parameter_gets_a_gradient(decoder):
    from pretrain.losses import PixelTargets, supervised_infonce
    from pretrain.model import ProjectionHead
    from pretrain.sampling import sampled_embeddings

    net = PretrainNet(ModelConfig(arch="resnet18", decoder=decoder, decoder_channels=32))
    head = ProjectionHead(net.out_channels, 32, 16)
    features = net(torch.randn(4, 3, 33, 33))  # [b*V = 4, C, 5, 5]
    ids = (torch.arange(4 * 25) % 3).view(2, 2, 5, 5)
    feats, sel_ids = sampled_embeddings(features, ids, 64, 2, torch.Generator().manual_seed(0), head.rows)
    assert feats.shape == (63, 16)  # 3 labels x 21 pixels
    loss, _ = supervised_infonce(feats, PixelTargets(sel_ids))
    loss.backward()
    net = torch.nn.ModuleDict({"net": net, "head": head})
    no_grad = [n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert no_grad == []


def test_projecting_sampled_rows_equals_projecting_the_map():
    from pretrain.model import ProjectionHead

    net = PretrainNet(ModelConfig(arch="resnet18")).eval()
    head = ProjectionHead(net.out_channels, 32, 16)
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        dense = head(net(x))  # [2, 16, 5, 5]
        rows = head.rows(net(x).permute(0, 2, 3, 1).reshape(-1, 512))
    assert dense.shape == (2, 16, 5, 5)
    torch.testing.assert_close(dense.norm(dim=1), torch.ones(2, 5, 5))
    torch.testing.assert_close(rows, dense.permute(0, 2, 3, 1).reshape(-1, 16), rtol=1e-5, atol=1e-6)


def test_decoder_export_loads_into_mmseg_aspp_head(tmp_path):
    from auxseg.contracts.backbone import load_decoder_export
    from auxseg.mmseg_compat import import_mmseg
    from pretrain.export import export_decoder
    from pretrain.model import ASPP

    import_mmseg()
    from mmseg.models.decode_heads import ASPPHead

    torch.manual_seed(0)
    aspp = ASPP(64, 16)
    path = export_decoder(aspp, tmp_path, config={}, iteration=3, auxlabels_sha256=None, auxlabels_manifest=None)
    state, meta = load_decoder_export(path)
    head = ASPPHead(in_channels=meta["in_channels"], channels=meta["channels"], dilations=tuple(meta["dilations"]),
                    num_classes=5, norm_cfg=dict(type="BN"))  # as in mmseg DeepLabV3 configs
    result = head.load_state_dict(state, strict=False)
    assert result.unexpected_keys == [] and sorted(result.missing_keys) == ["conv_seg.bias", "conv_seg.weight"]
    head.eval()
    aspp.eval()
    x = torch.randn(2, 64, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(head._forward_feature([x]), aspp(x), rtol=1e-4, atol=1e-5)
