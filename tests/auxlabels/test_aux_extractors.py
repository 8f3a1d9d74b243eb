"""Every checkpoint format the extractors accept, on files written here; wrong files fail naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from auxlabels.config import ExtractorConfig
from auxlabels.features import build_extractor, working_features
from auxseg.checkpoint_io import CheckpointError
from auxseg.mmseg_compat import build_in_mmseg_scope

IMG = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)


def _resnet18_file(tmp_path, seed=0, drop_fc=False):
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    state = model.state_dict()
    if drop_fc:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    path = tmp_path / f"resnet18_{seed}{'_nofc' if drop_fc else ''}.pth"
    torch.save(state, path)
    return model.eval(), path


def _reference(model, x, upto="layer3"):
    x = (x.float() - torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)) / torch.tensor(
        [58.395, 57.12, 57.375]
    ).view(1, 3, 1, 1)
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(model, name)(x)
        if name == upto:
            return x


@pytest.mark.parametrize("drop_fc", [False, True])
def test_torchvision_resnet18_loads_the_weights(tmp_path, drop_fc):
    model, path = _resnet18_file(tmp_path, drop_fc=drop_fc)
    ex = build_extractor(ExtractorConfig(name="resnet18", checkpoint=str(path), layer="layer3"))
    with torch.no_grad():
        out = ex(IMG)
        ref = _reference(model, IMG)
    torch.testing.assert_close(out, ref)
    assert ex.dim == 256 and ex.stride == 16
    assert ex.description["checkpoint_sha256"] and ex.description["name"] == "resnet18"


def test_working_features_are_unit_norm_at_stride():
    feats = torch.randn(2, 16, 3, 4)
    out = working_features(feats, (45, 60), 8)
    assert out.shape == (2, 6, 8, 16)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 6, 8))
    # same values as the plain NCHW resize + normalise, only laid out pixels-major
    ref = torch.nn.functional.interpolate(feats, size=(6, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, torch.nn.functional.normalize(ref, dim=1).permute(0, 2, 3, 1))


def test_resnet50_file_rejected_as_resnet18(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match="r50.pth") as err:
        build_extractor(ExtractorConfig(name="resnet18", checkpoint=str(path)))
    assert "unexpected keys" in str(err.value)


def test_not_a_checkpoint_and_missing_file(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        build_extractor(ExtractorConfig(name="resnet18", checkpoint=str(bad)))
    with pytest.raises(CheckpointError, match="nothere.pth"):
        build_extractor(ExtractorConfig(name="resnet18", checkpoint=str(tmp_path / "nothere.pth")))
    with pytest.raises(CheckpointError, match="random_init"):
        build_extractor(ExtractorConfig(name="resnet18"))
    with pytest.raises(ValueError, match="not one of"):
        build_extractor(ExtractorConfig(name="alexnet", random_init=True, checkpoint=None))


def test_random_init_only_explicit_and_seeded():
    a = build_extractor(ExtractorConfig(name="resnet18", random_init=True, seed=1, layer="layer2"))
    b = build_extractor(ExtractorConfig(name="resnet18", random_init=True, seed=1, layer="layer2"))
    torch.testing.assert_close(a(IMG), b(IMG))
    assert a.description["random_init"] is True and a.description["checkpoint"] is None


def test_moco_checkpoint(tmp_path):
    model, _ = _resnet18_file(tmp_path, seed=2)
    state = {}
    for k, v in model.state_dict().items():
        if not k.startswith("fc."):
            state["module.encoder_q." + k] = v
            state["module.encoder_k." + k] = v.clone()  # momentum encoder: ignored
    # MoCo v2's MLP head: fc.0 (hidden) and fc.2 (output)
    for pre in ("module.encoder_q.", "module.encoder_k."):
        state[pre + "fc.0.weight"] = torch.randn(512, 512)
        state[pre + "fc.0.bias"] = torch.randn(512)
        state[pre + "fc.2.weight"] = torch.randn(128, 512)
        state[pre + "fc.2.bias"] = torch.randn(128)
    state["module.queue"] = torch.randn(128, 64)
    path = tmp_path / "moco.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state}, path)
    ex = build_extractor(ExtractorConfig(name="moco_resnet18", checkpoint=str(path), layer="layer3"))
    torch.testing.assert_close(ex(IMG), _reference(model, IMG))

    # a MoCo file with one encoder_q key missing fails, naming the file and the key
    del state["module.encoder_q.layer2.0.conv1.weight"]
    broken = tmp_path / "moco_broken.pth.tar"
    torch.save({"state_dict": state}, broken)
    with pytest.raises(CheckpointError, match=r"moco_broken.pth.tar.*layer2.0.conv1.weight"):
        build_extractor(ExtractorConfig(name="moco_resnet18", checkpoint=str(broken)))
    # a plain torchvision file is not a MoCo checkpoint
    _, plain = _resnet18_file(tmp_path, seed=3)
    with pytest.raises(CheckpointError, match="not a MoCo checkpoint"):
        build_extractor(ExtractorConfig(name="moco_resnet18", checkpoint=str(plain)))


def _mmseg_model_cfg(head: str) -> dict:
    norm = dict(type="BN", requires_grad=True)
    if head == "ASPPHead":
        decode = dict(type="ASPPHead", in_channels=512, in_index=3, channels=32, dilations=(1, 6, 12, 18))
    else:
        decode = dict(type="PSPHead", in_channels=512, in_index=3, channels=32, pool_scales=(1, 2, 3, 6))
    decode.update(dropout_ratio=0.1, num_classes=4, norm_cfg=norm, align_corners=False,
                  loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
        backbone=dict(type="ResNetV1c", depth=18, num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                      strides=(1, 2, 1, 1), norm_cfg=norm, norm_eval=False, style="pytorch", contract_dilation=True),
        decode_head=decode,
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


def _mmseg_checkpoint(tmp_path, head: str, with_cfg: bool = True):
    from auxseg.mmseg_compat import import_mmseg

    import_mmseg()
    from mmengine.config import Config
    from mmseg.registry import MODELS

    cfg = Config(dict(model=_mmseg_model_cfg(head)))
    torch.manual_seed(0)
    model = build_in_mmseg_scope(MODELS, cfg.model).eval()
    meta = {"cfg": cfg.pretty_text, "epoch": 1} if with_cfg else {"epoch": 1}
    path = tmp_path / f"deeplab_{head}.pth"
    torch.save({"meta": meta, "state_dict": model.state_dict()}, path)
    cfg_path = tmp_path / "model_cfg.py"
    cfg.dump(str(cfg_path))
    return model, path, cfg_path


@pytest.mark.parametrize("head", ["ASPPHead", "PSPHead"])
def test_mmseg_decoder_feature(tmp_path, head):
    model, path, cfg_path = _mmseg_checkpoint(tmp_path, head)
    ex = build_extractor(ExtractorConfig(name="mmseg", checkpoint=str(path), config=str(cfg_path), layer="decoder"))
    assert ex.dim == 32 and ex.stride == 8
    x = (IMG.float() - torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)) / torch.tensor(
        [58.395, 57.12, 57.375]
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model.decode_head._forward_feature(model.backbone(x))
    torch.testing.assert_close(ex(IMG), ref)


def test_mmseg_config_file_and_errors(tmp_path):
    model, path, cfg_path = _mmseg_checkpoint(tmp_path, "ASPPHead", with_cfg=False)
    with pytest.raises(CheckpointError, match="extractor.config is required"):
        build_extractor(ExtractorConfig(name="mmseg", checkpoint=str(path)))
    ex = build_extractor(ExtractorConfig(name="mmseg", checkpoint=str(path), config=str(cfg_path), layer="backbone"))
    assert ex.dim == 512
    # a checkpoint missing the decoder weights fails, naming the file
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("decode_head.bottleneck")}
    broken = tmp_path / "deeplab_broken.pth"
    torch.save({"meta": {}, "state_dict": state}, broken)
    with pytest.raises(CheckpointError, match=r"deeplab_broken.pth.*missing keys: decode_head.bottleneck"):
        build_extractor(ExtractorConfig(name="mmseg", checkpoint=str(broken), config=str(cfg_path)))


def test_mmseg_checkpoint_config_text_is_never_executed(tmp_path):
    """A checkpoint whose meta['cfg'] holds Python: building the extractor must not run it."""
    model, path, cfg_path = _mmseg_checkpoint(tmp_path, "ASPPHead")
    marker = tmp_path / "payload_ran"
    ckpt = torch.load(path, weights_only=True)
    ckpt["meta"]["cfg"] = f"open({str(marker)!r}, 'w').write('x')\nmodel = dict(type='EncoderDecoder')\n"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="never executed"):
        build_extractor(ExtractorConfig(name="mmseg", checkpoint=str(path), layer="decoder"))
    ex = build_extractor(ExtractorConfig(name="mmseg", checkpoint=str(path), config=str(cfg_path), layer="decoder"))
    assert ex.dim == 32 and not marker.exists()


def _export_meta(arch, stem, key_format, mmseg_type):
    return {
        "format": "auxseg.backbone/1", "arch": arch, "stem": stem, "key_format": key_format,
        "mmseg_type": mmseg_type, "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
        "channel_order": "rgb", "config": {}, "auxlabels_sha256": None, "auxlabels_manifest": None,
        "iteration": 10, "versions": {"torch": str(torch.__version__), "auxseg": "0.1.0"},
    }


def test_auxseg_export_torchvision(tmp_path):
    model, _ = _resnet18_file(tmp_path, seed=4)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "export_tv.pth"
    torch.save({"state_dict": state, "meta": _export_meta("resnet18", "plain", "torchvision", "ResNet")}, path)
    ex = build_extractor(ExtractorConfig(name="auxseg_export", checkpoint=str(path), layer="layer3"))
    torch.testing.assert_close(ex(IMG), _reference(model, IMG))
    # a torchvision state_dict is not an export: the format check names the file
    _, plain = _resnet18_file(tmp_path, seed=5)
    with pytest.raises(CheckpointError, match=r"resnet18_5.pth: not an auxseg backbone export"):
        build_extractor(ExtractorConfig(name="auxseg_export", checkpoint=str(plain)))


def test_auxseg_export_mmseg_v1c(tmp_path):
    from auxseg.mmseg_compat import import_mmseg

    import_mmseg()
    from mmseg.registry import MODELS

    torch.manual_seed(0)
    backbone = build_in_mmseg_scope(MODELS, dict(type="ResNetV1c", depth=18, out_indices=(0, 1, 2, 3)))
    backbone.eval()  # mmseg's ResNet.train() returns None, so no chaining
    path = tmp_path / "export_mm.pth"
    meta = _export_meta("resnet18", "deep", "mmseg", "ResNetV1c")
    torch.save({"state_dict": backbone.state_dict(), "meta": meta}, path)
    ex = build_extractor(ExtractorConfig(name="auxseg_export", checkpoint=str(path), layer="layer4"))
    x = (IMG.float() - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(meta["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = backbone(x)[3]
    torch.testing.assert_close(ex(IMG), ref)
    # the same weights declared as a plain-stem ResNet fail loudly (stem.* keys unexpected)
    torch.save({"state_dict": backbone.state_dict(), "meta": _export_meta("resnet18", "plain", "mmseg", "ResNet")},
               tmp_path / "export_wrongstem.pth")
    with pytest.raises(CheckpointError, match=r"export_wrongstem.pth.*stem"):
        build_extractor(ExtractorConfig(name="auxseg_export", checkpoint=str(tmp_path / "export_wrongstem.pth")))


@pytest.mark.parametrize("with_classifier", [False, True])
def test_vgg19(tmp_path, with_classifier):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    features = make_layers(cfgs["E"]).eval()  # torchvision's VGG-19 `features`, same key names
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    if with_classifier:  # the full ImageNet file also holds classifier.0/3/6 (small stand-ins here)
        for i in (0, 3, 6):
            state[f"classifier.{i}.weight"] = torch.zeros(2, 2)
            state[f"classifier.{i}.bias"] = torch.zeros(2)
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    ex = build_extractor(ExtractorConfig(name="vgg19", checkpoint=str(path), layer="conv4"))
    assert ex.stride == 8 and ex.dim == 512
    x = (IMG.float() - torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)) / torch.tensor(
        [58.395, 57.12, 57.375]
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(ex(IMG), features[:27](x))
    with torch.device("meta"):  # key names of the real torchvision model, without initialising 143M weights
        real_keys = set(torchvision.models.vgg19(weights=None).state_dict())
    assert set(state) <= real_keys and (not with_classifier or set(state) == real_keys)
    resnet_path = tmp_path / "r18_for_vgg.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet_path)
    with pytest.raises(CheckpointError, match="r18_for_vgg.pth"):
        build_extractor(ExtractorConfig(name="vgg19", checkpoint=str(resnet_path)))
    assert np.isfinite(ex.dim)


def test_the_extractor_registry_is_the_one_list_of_names(capsys):
    from auxlabels.config import AuxLabelsConfig
    from auxlabels.features import EXTRACTOR_HELP, EXTRACTORS, FeatureExtractor, register_extractor
    from auxlabels.pipeline import check_config as validate  # the cross-field rules and the extractor name
    from auxseg.config import ConfigError
    from loop.cli import main

    cfg = AuxLabelsConfig(image_dir="x", num_classes=2, extractor=ExtractorConfig(name="resnet5O", random_init=True))
    with pytest.raises(ConfigError, match="extractor.name: 'resnet5O' is not a registered extractor.*'resnet50'"):
        validate(cfg)
    # a new extractor is one function; config validation and --help see it at once
    @register_extractor("test_identity", "identity features (test)")
    def build_identity(cfg):
        return FeatureExtractor(torch.nn.Identity(), description={"arch": "identity"})

    try:
        validate(AuxLabelsConfig(image_dir="x", num_classes=2,
                                 extractor=ExtractorConfig(name="test_identity", random_init=True)))
        ex = build_extractor(ExtractorConfig(name="test_identity", random_init=True))
        assert ex.dim == 3 and ex.description["name"] == "test_identity"
        with pytest.raises(SystemExit):
            main(["auxlabels", "--help"])
        text = capsys.readouterr().out
        assert all(name in text for name in EXTRACTORS) and "identity features (test)" in text
    finally:
        EXTRACTORS.pop("test_identity")
        EXTRACTOR_HELP.pop("test_identity")
