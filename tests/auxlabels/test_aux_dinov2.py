"""DINOv2 / DINO / timm extractors: the three checkpoint layouts, exact key checks, equivalence with an
independent implementation (Hugging Face Transformers), dense features at the working stride, no downloads."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dinov2_files import (
    DEPTH,
    GRID,
    HEADS,
    TINY_ARCHS,
    D,
    perturbed,
    tiny_arch_name,
    tiny_spec,
    vits14_timm_state,
    write_three_layouts,
    write_vits14_files,
)

from auxlabels.config import ExtractorConfig
from auxlabels.features import build_extractor, working_features
from auxlabels.vit_extractors import (
    build_timm_vit,
    crop_to_valid,
    interpolate_patch_pos,
    patch_input_size,
    resolve_blocks,
)
from auxseg.checkpoint_io import CheckpointError
from auxseg.config import ConfigError
from auxseg.contracts import vit_checkpoints as vc
from auxseg.contracts.vit_checkpoints import (
    DINO_ARCHS,
    DINOV2_ARCHS,
    LAYOUTS,
    detect_layout,
    read_vit_weights,
    vit_shapes,
)

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "auxlabels" / "tiny.yaml")
IMG = torch.randint(0, 256, (1, 3, 100, 130), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tiny_arch(monkeypatch):
    """Register tiny DINOv2 architectures (the table is the one list of sizes; the real ones are large)."""
    for name, spec in TINY_ARCHS.items():
        monkeypatch.setitem(DINOV2_ARCHS, name, spec)


# ----------------------------------------------------------------------------- key sets


@pytest.mark.parametrize("name", sorted(DINOV2_ARCHS) + [f"dino_{n}" for n in sorted(DINO_ARCHS)])
def test_timm_layout_shapes_are_timms_own_model(name):
    # every table entry (ViT-g's SwiGLU width included) against timm's VisionTransformer, built on the meta device
    spec = DINO_ARCHS[name[5:]] if name.startswith("dino_") else DINOV2_ARCHS[name]
    model = build_timm_vit(spec, device="meta")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == vit_shapes(spec, "timm")


def test_timm_layout_matches_timms_named_dinov2_models():
    import timm

    for arch, timm_name in (("vits14", "vit_small_patch14_dinov2"), ("vitg14_reg4", "vit_giant_patch14_reg4_dinov2")):
        model = timm.create_model(timm_name, pretrained=False, device="meta")
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == vit_shapes(DINOV2_ARCHS[arch], "timm")


def test_layout_detection():
    assert detect_layout(vit_shapes(DINOV2_ARCHS["vits14"], "meta")) == "meta"
    assert detect_layout(vit_shapes(DINOV2_ARCHS["vits14_reg4"], "meta")) == "meta"
    assert detect_layout(vit_shapes(DINOV2_ARCHS["vits14_reg4"], "timm")) == "timm"
    assert detect_layout(vit_shapes(DINOV2_ARCHS["vitg14"], "hf")) == "hf"
    assert detect_layout(vit_shapes(DINO_ARCHS["vits8"], "meta"), "dino") == "meta"
    # the layouts differ where the issue says they do
    meta, timm_, hf = (set(vit_shapes(DINOV2_ARCHS["vitg14_reg4"], lay)) for lay in ("meta", "timm", "hf"))
    assert {"register_tokens", "mask_token", "blocks.0.mlp.w12.weight", "blocks.0.ls1.gamma"} <= meta
    assert {"reg_token", "blocks.0.mlp.fc1.weight"} <= timm_ and "mask_token" not in timm_
    assert {"encoder.layer.0.attention.attention.query.weight", "encoder.layer.0.layer_scale1.lambda1"} <= hf


# ----------------------------------------------------------------------------- equivalence with Hugging Face


def _hf_model(registers: int, swiglu: bool):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install .[dev])")
    kw = dict(hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=HEADS, image_size=GRID * 14,
              patch_size=14, use_swiglu_ffn=swiglu)
    if registers:
        if not hasattr(transformers, "Dinov2WithRegistersModel"):
            pytest.skip(f"transformers {transformers.__version__} has no Dinov2WithRegistersModel")
        model = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **kw))
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**kw))
    torch.manual_seed(registers + 2 * swiglu)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("registers,swiglu", [(0, False), (4, False), (0, True), (4, True)])
def test_same_patch_features_as_hugging_face(tmp_path, tiny_arch, registers, swiglu):
    hf = _hf_model(registers, swiglu)
    hf.save_pretrained(tmp_path)  # its own layout: model.safetensors
    ex = build_extractor(ExtractorConfig(name="dinov2", checkpoint=str(tmp_path / "model.safetensors"),
                                         blocks=[0, -1]))
    assert ex.description["layout"] == "hf"
    assert ex.description["arch"] == f"dinov2_tiny_r{registers}{'_swiglu' if swiglu else ''}"
    tokens = ex.body.net  # DinoViTTokens
    official = (tokens.interp_offset, tokens.interp_antialias)
    # native grid (16 x 16: no resampling), then a 13 x 19 grid: HF resamples the positions to the grid size,
    # with antialiasing for the register model (as official DINOv2 does there) and without it otherwise, where
    # official DINOv2 uses the 0.1 offset: our default is the official one, so for the comparison we switch to HF's
    for hw in ((224, 224), (182, 266)):
        img = torch.randint(0, 256, (2, 3, *hw), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        x = (img.float() - ex.mean) / ex.std
        with torch.no_grad():
            out = hf(pixel_values=x, output_hidden_states=True)
        gh, gw = hw[0] // 14, hw[1] // 14
        first = hf.layernorm(out.hidden_states[1])  # block 0, after the final norm (get_intermediate_layers)

        want = torch.cat([t[:, 1 + registers:].transpose(1, 2).reshape(2, D, gh, gw)  # [B, D, gh, gw]
                          for t in (first, out.last_hidden_state)], dim=1)
        if hw != (224, 224) and not registers:
            tokens.interp_offset, tokens.interp_antialias = 0.0, False
        torch.testing.assert_close(ex(img), want, atol=1e-5, rtol=0)
        tokens.interp_offset, tokens.interp_antialias = official
        if hw != (224, 224) and not registers:  # the official resampling is a different one: not silently HF's
            assert (ex(img) - want).abs().max() > 1e-3


def _official_interpolate(pos_embed, w, h, patch, offset, antialias):
    """facebookresearch/dinov2 ``DinoVisionTransformer.interpolate_pos_encoding`` (Apache-2.0), with its
    ``x`` / ``self`` arguments made explicit; ``w``, ``h`` are the input's dims 2 and 3, as there."""
    n = pos_embed.shape[1] - 1
    npatch = (w // patch) * (h // patch)
    if npatch == n and w == h:
        return pos_embed
    pos_embed = pos_embed.float()
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch, h // patch
    m = int(math.sqrt(n))
    kwargs = {}
    if offset:
        kwargs["scale_factor"] = (float(w0 + offset) / m, float(h0 + offset) / m)
    else:
        kwargs["size"] = (w0, h0)
    patch_pos_embed = F.interpolate(patch_pos_embed.reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic",
                                    antialias=antialias, **kwargs)
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


@pytest.mark.parametrize("offset,antialias", [(0.1, False), (0.0, True)])
@pytest.mark.parametrize("hw", [(37 * 14, 37 * 14), (26 * 14, 35 * 14), (60 * 14, 45 * 14)])
def test_position_resampling_is_the_official_one(offset, antialias, hw):
    pos = torch.randn(1, 1 + 37 * 37, 8)
    want = _official_interpolate(pos, hw[0], hw[1], 14, offset, antialias)[:, 1:]
    got = interpolate_patch_pos(pos[:, 1:], (hw[0] // 14, hw[1] // 14), offset, antialias)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert DINOV2_ARCHS["vits14"].pos_interpolation == (0.1, False)
    assert DINOV2_ARCHS["vits14_reg4"].pos_interpolation == (0.0, True)
    assert DINO_ARCHS["vits8"].pos_interpolation == (0.1, False)


# ----------------------------------------------------------------------------- the three layouts


@pytest.mark.parametrize("registers,swiglu", [(0, False), (4, True)])
def test_three_layouts_give_the_same_features(tmp_path, tiny_arch, registers, swiglu):
    spec = tiny_spec(registers, swiglu)
    timm_state = perturbed(build_timm_vit(spec).state_dict())
    paths = write_three_layouts(tmp_path, timm_state, tiny_arch_name(registers, swiglu), spec)
    img = IMG  # 100 x 130, not a patch multiple: padded, position embeddings resampled
    feats = {}
    for layout, path in paths.items():
        ex = build_extractor(ExtractorConfig(name="dinov2", checkpoint=str(path)))
        assert ex.description["layout"] == layout and ex.description["checkpoint_sha256"]
        feats[layout] = ex(img)
    assert feats["meta"].shape == (1, D, 8, 10)
    torch.testing.assert_close(feats["meta"], feats["timm"], atol=1e-5, rtol=0)
    torch.testing.assert_close(feats["hf"], feats["meta"], atol=0, rtol=0)  # no arithmetic between these two


def _refusal(path, arch=None, family="dinov2") -> str | None:
    """The error reading ``path`` raises (asserted one line, naming the file); None when the file is accepted."""
    try:
        read_vit_weights(path, family, arch)
    except CheckpointError as err:
        msg = str(err)
        assert "\n" not in msg and str(path) in msg, msg
        return msg
    return None


def test_missing_or_renamed_key_is_refused_naming_file_and_key(tmp_path, tiny_arch):
    spec = tiny_spec()
    paths = write_three_layouts(tmp_path, perturbed(build_timm_vit(spec).state_dict()), "tiny_r0", spec)
    meta = torch.load(paths["meta"], weights_only=True)

    def refused(state, name, *expect, arch=None):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        with pytest.raises(CheckpointError) as err:
            build_extractor(ExtractorConfig(name="dinov2", checkpoint=str(path), arch=arch))
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg
        for e in expect:
            assert e in msg, msg

    # a model built "by hand" without init_values has no LayerScale: its file lacks ls1.gamma
    refused({k: v for k, v in meta.items() if k != "blocks.1.ls1.gamma"}, "no_ls/dinov2_tiny_r0_pretrain.pth",
            "missing keys: blocks.1.ls1.gamma")
    renamed = dict(meta)
    renamed["blocks.0.ls1.weight"] = renamed.pop("blocks.0.ls1.gamma")
    refused(renamed, "renamed/dinov2_tiny_r0_pretrain.pth", "missing keys: blocks.0.ls1.gamma",
            "unexpected keys: blocks.0.ls1.weight")
    refused({k: v for k, v in meta.items() if k != "mask_token"} | {"register_tokens": torch.zeros(1, 4, D)},
            "reg_without_mask.pth", "missing keys: mask_token")
    refused(dict(meta, pos_embed=meta["pos_embed"][:, :100]), "short_pos/dinov2_tiny_r0_pretrain.pth",
            "pos_embed (1, 100, 48)", "expected (1, 257, 48)")
    # a ViT-S/14 named for a tiny file: 3 of its 12 blocks are there
    refused(meta, "named_vits14.pth", "dinov2 vits14 (meta layout) keys do not match", "missing keys: blocks.10.",
            arch="vits14")
    # one HF key removed (the config.json beside it names the model)
    from safetensors.torch import load_file, save_file

    hf = load_file(str(paths["hf"]))
    del hf["encoder.layer.2.layer_scale2.lambda1"]
    save_file(hf, str(paths["hf"].parent / "broken.safetensors"))
    with pytest.raises(CheckpointError, match=r"broken\.safetensors.*missing keys: encoder\.layer\.2\.layer_scale2"):
        build_extractor(ExtractorConfig(name="dinov2", checkpoint=str(paths["hf"].parent / "broken.safetensors")))
    # not a ViT at all, and not a checkpoint at all
    refused({"conv1.weight": torch.zeros(1)}, "resnet.pth", "not a dinov2 backbone: it has neither cls_token")
    # Meta's linear-head files sit beside the backbones with similar names
    refused({"weight": torch.zeros(1000, 1920), "bias": torch.zeros(1000)}, "dinov2_vits14_linear_head.pth",
            "not a dinov2 backbone", "a linear head or another model?")
    # a config.json whose register count is not a count
    config_path = paths["hf"].parent / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(dict(config, model_type="dinov2_with_registers", num_register_tokens=None)))
    with pytest.raises(CheckpointError, match=r"num_register_tokens None, not a count"):
        build_extractor(ExtractorConfig(name="dinov2", checkpoint=str(paths["hf"])))
    config_path.write_text(json.dumps(config))
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}  garbage")
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        build_extractor(ExtractorConfig(name="dinov2", checkpoint=str(tmp_path / "garbage.safetensors")))


@pytest.fixture(scope="module")
def vits14_key_files(tmp_path_factory):
    """DINOv2 ViT-S/14 without and with registers in the three layouts, named as published, every tensor a
    zero expanded to its shape (the key sets and shapes of the real files in a few kB each)."""
    out = {}
    for registers in (0, 4):
        arch = "vits14_reg4" if registers else "vits14"
        out[registers] = write_three_layouts(tmp_path_factory.mktemp(arch), vits14_timm_state(registers, random=False),
                                             arch, DINOV2_ARCHS[arch], safetensors=False)
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("registers", [0, 4])
def test_every_single_key_deletion_is_refused(vits14_key_files, monkeypatch, registers, layout):
    # a register model without its register tokens has the key set of the model without registers, and Meta's
    # file without mask_token has timm's: the file's name and the config.json beside it must tell them apart
    path = vits14_key_files[registers][layout]
    arch = "vits14_reg4" if registers else "vits14"
    weights = read_vit_weights(path, "dinov2")
    assert (weights.arch, weights.layout) == (arch, layout)
    state = torch.load(path, weights_only=True)
    # the file's bytes are read as above; here each key set minus one key is read as if it were that file
    # (its name, and for HF the config.json beside it), 1,000 reads in a second instead of a minute
    accepted, unnamed = [], []
    for key in sorted(state):
        monkeypatch.setattr(vc, "load_weights_file", lambda _, key=key: {k: v for k, v in state.items() if k != key})
        for named in (None, arch):
            msg = _refusal(path, named)
            if msg is None:
                accepted.append(f"{key} (extractor.arch {named})")
            elif key not in msg:
                unnamed.append(f"{key}: {msg}")
    assert not accepted, f"{len(accepted)} of {len(state)} one-key deletions accepted: {accepted[:4]}"
    assert not unnamed, unnamed[:4]


def test_what_a_file_states_about_itself_is_checked(vits14_key_files, tmp_path):
    # the register count of Meta's and HF's files is only in their register key: the file's name or the
    # config.json beside it must state it, or extractor.arch must name the model
    meta_reg = torch.load(vits14_key_files[4]["meta"], weights_only=True)
    meta = torch.load(vits14_key_files[0]["meta"], weights_only=True)

    def saved(state, name):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        return path

    no_reg = saved({k: v for k, v in meta_reg.items() if k != "register_tokens"}, "renamed/weights.pth")
    msg = _refusal(no_reg)
    assert "vits14, vits14_reg4" in msg and "register_tokens" in msg and "extractor.arch" in msg
    assert "missing keys: register_tokens" in _refusal(no_reg, "vits14_reg4")
    plain = saved(meta, "renamed/vits14.pth")  # Meta's file under another name: the same question
    assert "extractor.arch" in _refusal(plain)
    assert read_vit_weights(plain, "dinov2", "vits14").layout == "meta"
    assert read_vit_weights(saved(meta_reg, "renamed/reg.pth"), "dinov2").arch == "vits14_reg4"  # key says 4
    # the name contradicts the file
    msg = _refusal(saved(meta_reg, "lies/dinov2_vits14_pretrain.pth"))
    assert "dinov2_vits14_pretrain.pth says vits14" in msg and "vits14_reg4" in msg
    assert "says 4 registers" in _refusal(saved(meta, "lies/vits14_reg4.pth"), "vits14")
    timm_state = torch.load(vits14_key_files[0]["timm"], weights_only=True)
    assert "missing keys: mask_token" in _refusal(saved(timm_state, "timm_as_meta/dinov2_vits14_pretrain.pth"))
    # the HF config.json beside the file: checked, and required to infer a model without registers
    hf_dir = vits14_key_files[0]["hf"].parent
    hf = torch.load(hf_dir / "pytorch_model.bin", weights_only=True)
    alone = saved(hf, "hf_alone/pytorch_model.bin")
    assert "embeddings.register_tokens" in _refusal(alone) and "config.json" in _refusal(alone)
    assert read_vit_weights(alone, "dinov2", "vits14").layout == "hf"
    config = json.loads((hf_dir / "config.json").read_text())
    for change, expect in (({"hidden_size": 768}, "hidden_size 768"),
                           ({"num_attention_heads": 12}, "num_attention_heads 12"),
                           ({"model_type": "vit"}, "model_type 'vit'")):
        (tmp_path / "hf_alone" / "config.json").write_text(json.dumps(config | change))
        msg = _refusal(alone)
        assert "config.json" in msg and expect in msg, msg
    (tmp_path / "hf_alone" / "config.json").write_text(json.dumps(config | {"model_type": "dinov2_with_registers"}))
    assert "missing keys: embeddings.register_tokens" in _refusal(alone)  # read as the model it says it is
    (tmp_path / "hf_alone" / "config.json").write_text("{not json")
    assert "config.json" in _refusal(alone)


def test_config_errors_name_the_key(tiny_arch):
    with pytest.raises(ConfigError, match="extractor.arch: required with random_init"):
        build_extractor(ExtractorConfig(name="dinov2", random_init=True))
    with pytest.raises(ConfigError, match=r"extractor.blocks: \[3\] out of range"):
        build_extractor(ExtractorConfig(name="dinov2", random_init=True, arch="tiny_r0", blocks=[3]))
    with pytest.raises(ConfigError, match="extractor.layer"):
        build_extractor(ExtractorConfig(name="dinov2", random_init=True, arch="tiny_r0", layer="layer2"))
    with pytest.raises(ConfigError, match="extractor.arch: 'resnet_50' is not a timm model.*resnet50"):
        build_extractor(ExtractorConfig(name="timm", random_init=True, arch="resnet_50"))
    assert resolve_blocks([], 12) == [11] and resolve_blocks([-1, 2, 11], 12) == [2, 11]


# ----------------------------------------------------------------------------- dense features


def test_input_size_keeps_aspect_and_caps_tokens():
    assert patch_input_size((360, 480), 14, 14, 4096) == (360, 480)  # padded to 364 x 490: 26 x 35 tokens
    assert patch_input_size((360, 480), 14, 8, 4096) == (630, 840)  # tokens at stride 8: 45 x 60
    h, w = patch_input_size((1024, 2048), 14, 8, 4096)
    assert math.ceil(h / 14) * math.ceil(w / 14) <= 4096 and abs(w / h - 2) < 0.01
    h, w = patch_input_size((5000, 10), 14, 14, 4)
    assert math.ceil(h / 14) * math.ceil(w / 14) <= 4 and w == 1  # the short side keeps at least one pixel


def test_crop_to_valid_samples_the_image_part_only():
    # a map whose value is the row (column) index of the token; the padding holds garbage
    gh, gw = 4, 5
    rows = torch.arange(gh, dtype=torch.float32).view(1, 1, gh, 1).expand(1, 1, gh, gw)
    cols = torch.arange(gw, dtype=torch.float32).view(1, 1, 1, gw).expand(1, 1, gh, gw)
    feats = torch.cat([rows, cols]).reshape(1, 2, gh, gw).clone()
    out = crop_to_valid(feats, (3.5, 4.0))  # the image covers 3.5 of 4 token rows and 4 of 5 columns
    # cell i's centre lies at (i + 0.5) * 3.5 / 4 token rows; a token's value sits at its centre k + 0.5
    want_rows = (torch.arange(gh) + 0.5) * 3.5 / 4 - 0.5
    want_cols = (torch.arange(gw) + 0.5) * 4.0 / 5 - 0.5
    torch.testing.assert_close(out[0, 0, :, 0], want_rows.clamp(min=0))
    torch.testing.assert_close(out[0, 1, 0, :], want_cols.clamp(min=0))
    torch.testing.assert_close(crop_to_valid(feats, (4.0, 5.0)), feats)  # nothing padded: unchanged


def test_features_at_the_working_stride(tiny_arch):
    ex = build_extractor(ExtractorConfig(name="dinov2", random_init=True, arch="tiny_r4", blocks=[1, 2]))
    img = torch.randint(0, 256, (1, 3, 45, 60), dtype=torch.uint8)
    native = ex(img)
    assert native.shape == (1, 2 * D, 4, 5)  # 45 x 60 padded to 56 x 70: a 4 x 5 grid, cropped back
    assert working_features(native, (45, 60), 8).shape == (1, 6, 8, 2 * D)
    fine = build_extractor(ExtractorConfig(name="dinov2", random_init=True, arch="tiny_r4", token_stride=8))
    assert fine(img).shape == (1, D, 6, 8) and fine.stride == 8  # tokens at the working stride
    capped = build_extractor(ExtractorConfig(name="dinov2", random_init=True, arch="tiny_r4", token_stride=2,
                                             max_tokens=50))
    out = capped(img)
    assert out.shape[-2] * out.shape[-1] <= 50 and capped.description["max_tokens"] == 50


def test_native_stride_is_the_token_stride(tiny_arch):
    # the manifest's native_stride: 14 px per token, not what a 64 px probe measures (64 / 5 tokens = 12.8)
    for token_stride, want in ((None, 14), (8, 8), (14, 14), (20, 20)):
        ex = build_extractor(ExtractorConfig(name="dinov2", random_init=True, arch="tiny_r0", token_stride=token_stride))
        assert (ex.stride, ex.description["native_stride"]) == (want, want), token_stride
    vit = build_extractor(ExtractorConfig(name="timm", arch="vit_tiny_patch16_224", random_init=True, token_stride=12))
    assert vit.description["native_stride"] == 12
    cnn = build_extractor(ExtractorConfig(name="timm", arch="resnet18", random_init=True, blocks=[3]))
    assert cnn.description["native_stride"] == 16  # measured: layer3 of a ResNet


# ----------------------------------------------------------------------------- timm, DINO v1, no downloads


def test_generic_timm_extractor_cnn_and_vit(tmp_path, monkeypatch):
    import timm

    torch.manual_seed(0)
    cnn = timm.create_model("resnet18", pretrained=False).eval()
    state = {k: v for k, v in cnn.state_dict().items() if not k.startswith("fc.")}  # no classifier: fine
    torch.save(state, tmp_path / "r18.pth")
    loads = []  # every load_state_dict of the build is strict, the classifier-less file's too
    load = torch.nn.Module.load_state_dict
    monkeypatch.setattr(torch.nn.Module, "load_state_dict",
                        lambda self, sd, strict=True, **kw: loads.append(strict) or load(self, sd, strict=strict, **kw))
    ex = build_extractor(ExtractorConfig(name="timm", arch="resnet18", checkpoint=str(tmp_path / "r18.pth"),
                                         blocks=[3, 4]))
    assert loads == [True]
    monkeypatch.undo()
    img = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    x = (img.float() - ex.mean) / ex.std
    with torch.no_grad():
        l3, l4 = cnn.forward_intermediates(x, indices=[3, 4], intermediates_only=True)
    want = torch.cat([l3, F.interpolate(l4, size=l3.shape[-2:], mode="bilinear", align_corners=False)], 1)
    torch.testing.assert_close(ex(img), want)
    del state["layer2.0.bn1.running_var"]
    torch.save(state, tmp_path / "r18_broken.pth")
    with pytest.raises(CheckpointError, match=r"r18_broken\.pth.*missing keys: layer2\.0\.bn1\.running_var"):
        build_extractor(ExtractorConfig(name="timm", arch="resnet18", checkpoint=str(tmp_path / "r18_broken.pth")))
    vit = build_extractor(ExtractorConfig(name="timm", arch="vit_tiny_patch16_224", random_init=True))
    assert vit(img).shape == (1, 192, 4, 6) and vit.description["patch_size"] == 16


def test_dino_v1_from_metas_layout(tmp_path):
    spec = DINO_ARCHS["vits16"]
    state = perturbed(build_timm_vit(spec).state_dict())
    torch.save(state, tmp_path / "dino_deitsmall16_pretrain.pth")
    ex = build_extractor(ExtractorConfig(name="dino", checkpoint=str(tmp_path / "dino_deitsmall16_pretrain.pth")))
    assert ex.description["arch"] == "dino_vits16" and ex.description["layout"] == "meta"
    assert ex(torch.randint(0, 256, (1, 3, 48, 64), dtype=torch.uint8)).shape == (1, 384, 3, 4)


def test_nothing_is_downloaded(monkeypatch, tiny_arch):
    import huggingface_hub
    import timm.models._builder as builder

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(builder, "load_pretrained", no_network)
    monkeypatch.setattr(builder, "load_custom_pretrained", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    build_extractor(ExtractorConfig(name="dinov2", random_init=True, arch="tiny_r0"))
    build_extractor(ExtractorConfig(name="timm", random_init=True, arch="vit_small_patch14_dinov2"))


# ----------------------------------------------------------------------------- the stage and the other commands


@pytest.fixture(scope="module")
def vits14_files(tmp_path_factory):
    """A random-weight DINOv2 ViT-S/14 in the three layouts (timm's own model definition as the source)."""
    return write_vits14_files(tmp_path_factory.mktemp("vits14"))


def test_auxlabels_command_gives_identical_labels_from_the_three_layouts(vits14_files, tmp_path, capsys):
    from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset
    from loop.cli import main

    data = make_synthetic_dataset(tmp_path / "data", SyntheticSpec(num_train=2, num_val=4, height=48, width=64,
                                                                   seed=5))
    tiny = TINY
    common = [f"image_dir={data / 'val'}", f"gt_dir={data / 'valannot'}", "extractor.name=dinov2",
              "extractor.random_init=false", "extractor.layer=layer4", "extractor.stride=8", "extractor.blocks=[-1]"]
    labels = {}
    for layout, path in vits14_files.items():
        out = tmp_path / f"aux_{layout}"
        assert main(["auxlabels", tiny, *common, f"extractor.checkpoint={path}", f"out_dir={out}"]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["complete"] is True
        ext = manifest["extractor"]
        assert (ext["arch"], ext["layout"], ext["name"]) == ("dinov2_vits14", layout, "dinov2")
        assert ext["checkpoint_sha256"] and ext["max_tokens"] == 4096
        labels[layout] = {p.name: p.read_bytes() for p in sorted((out / "labels").rglob("*.png"))}
    assert len(labels["meta"]) == 4
    assert labels["meta"] == labels["timm"] == labels["hf"]
    from auxseg.images import read_label

    assert len(np.unique(read_label(tmp_path / "aux_meta" / "labels" / "0000.png"))) >= 3  # real clusters
    # one key removed: a one-line error naming the file and the key, exit 1
    meta = torch.load(vits14_files["meta"], weights_only=True)
    del meta["blocks.7.ls2.gamma"]
    broken = tmp_path / "broken" / "dinov2_vits14_pretrain.pth"
    broken.parent.mkdir()
    torch.save(meta, broken)
    capsys.readouterr()
    rc = main(["auxlabels", tiny, *common, f"extractor.checkpoint={broken}", f"out_dir={tmp_path / 'bad'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0 and str(broken) in err and "blocks.7.ls2.gamma" in err


def test_featureview_takes_the_new_extractors(vits14_files, tmp_path, capsys):
    # featureview, softsegments and the report build extractors through the same registry (build_extractor)
    from auxseg.images import read_rgb, write_rgb_png
    from loop.cli import main

    rng = np.random.default_rng(0)
    write_rgb_png(tmp_path / "img" / "a.png", (rng.random((40, 56, 3)) * 255).astype(np.uint8))
    out = tmp_path / "view"
    assert main(["featureview", f"image_dir={tmp_path / 'img'}", f"out_dir={out}", "extractor.name=dinov2",
                 f"extractor.checkpoint={vits14_files['hf']}", "radius=2", "progress=false"]) == 0
    assert read_rgb(out / "a.png").shape == (40, 56, 3)
    assert json.loads((out / "feature_view.json").read_text())["extractor"]["layout"] == "hf"


def test_softsegments_takes_the_new_extractors(vits14_files, tmp_path):
    from auxseg.contracts.label_folder import read_label_folder
    from auxseg.images import write_rgb_png
    from loop.cli import main

    rng = np.random.default_rng(1)
    for name in ("a.png", "b.png"):  # two regions, so the segments have an edge to follow
        img = np.zeros((32, 40, 3), np.uint8)
        img[:, :18], img[:, 18:] = (200, 60, 40), (30, 90, 210)
        write_rgb_png(tmp_path / "img" / name, np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8))
    fast = dict(eigenvectors=16, initial_layers=8, initial_iterations=12, final_outer_iterations=5,
                final_cg_iterations=50, final_polish_iterations=200)  # as test_soft_segments.py, for 32 x 40 images
    out = tmp_path / "soft"
    assert main(["softsegments", f"image_dir={tmp_path / 'img'}", f"out_dir={out}", "soft.segments=3",
                 "progress=false", *[f"soft.{k}={v}" for k, v in fast.items()], "guide_radius=2",
                 "extractor.name=dinov2", f"extractor.checkpoint={vits14_files['timm']}"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert (m["extractor"]["name"], m["extractor"]["arch"], m["extractor"]["layout"]) == ("dinov2", "dinov2_vits14",
                                                                                         "timm")
    assert m["extractor"]["native_stride"] == 14 and m["semantic_features"].startswith("feature view")
    folder = read_label_folder(out)  # labels, priors, hashes
    assert folder.images == ("a.png", "b.png") and folder.num_labels == 3 and folder.has_priors


def test_a_study_arm_labels_with_dinov2(vits14_files, tmp_path):
    # the pipeline's labelling extractor is its segmenter (auxlabels.extractor.* are the pipeline's keys); a
    # study arm replaces it with stage_overrides, applied after the pipeline filled in its own values
    from loop.study import cell_dir, load_study, plan

    study_tiny = Path(__file__).resolve().parents[2] / "configs" / "study" / "tiny.yaml"
    dinov2 = ["extractor.name=dinov2", f"extractor.checkpoint={vits14_files['hf']}", "extractor.config=null",
              "extractor.layer=layer4"]
    arms = [{"name": "none", "pretrain": False}, {"name": "infonce"},
            {"name": "dinov2", "stage_overrides": {"auxlabels": dinov2}}]
    common = [f"work_dir={tmp_path / 'study'}", "pretrain_seeds=[0]", "finetune_seeds=[0]"]
    p = plan(load_study(study_tiny, [*common, "arms=" + json.dumps(arms)]))
    aux = {c.label.split("(")[-1].rstrip(")"): c for c in p.cells.values() if c.kind == "auxlabels"}
    assert set(aux) == {"infonce", "dinov2"}
    assert aux["infonce"].config["extractor"]["name"] == "mmseg"
    assert aux["dinov2"].config["extractor"]["name"] == "dinov2"
    # what the cell would run once the segmenter it depends on has finished
    seg = cell_dir(p.work_dir, aux["dinov2"].deps[0])
    seg.mkdir(parents=True)
    (seg / "last_checkpoint").write_text("iter_2.pth")
    cfg, _, _ = aux["dinov2"].run(p.work_dir, aux["dinov2"].key)
    assert cfg.extractor.checkpoint == str(vits14_files["hf"]) and cfg.image_dir.endswith("train")
    ex = build_extractor(cfg.extractor)
    assert (ex.description["arch"], ex.description["layout"]) == ("dinov2_vits14", "hf")
    # the segmenter's mmseg_config.py, which the pipeline fills in, is refused rather than ignored
    left = aux["dinov2"].run(p.work_dir, aux["dinov2"].key)[0].extractor
    left.config = str(seg / "mmseg_config.py")
    with pytest.raises(ConfigError, match="extractor.config: dinov2 reads no model config"):
        build_extractor(left)
    # as a plain arm override the same key is refused: the pipeline owns it
    arms[2] = {"name": "dinov2", "overrides": ["auxlabels.extractor.name=dinov2"]}
    with pytest.raises(ConfigError, match="auxlabels.extractor.name: the pipeline sets this key itself"):
        plan(load_study(study_tiny, [*common, "arms=" + json.dumps(arms)]))


def test_study_arms_with_different_dinov2_files_label_apart(tmp_path):
    from loop.study import load_study, plan

    study_tiny = Path(__file__).resolve().parents[2] / "configs" / "study" / "tiny.yaml"
    arms = [{"name": "none", "pretrain": False}]
    for arch in ("vits14", "vitb14"):  # the files need not exist to plan
        arms.append({"name": arch, "stage_overrides": {"auxlabels": [
            "extractor.name=dinov2", f"extractor.checkpoint={tmp_path / f'dinov2_{arch}_pretrain.pth'}",
            "extractor.config=null", "extractor.layer=layer4"]}})
    p = plan(load_study(study_tiny, [f"work_dir={tmp_path / 'study'}", "pretrain_seeds=[0]", "finetune_seeds=[0]",
                                     "arms=" + json.dumps(arms)]))
    assert len([c for c in p.cells.values() if c.kind == "auxlabels"]) == 2
    # once the files exist they are told apart by content: equal bytes share a label folder, other bytes do not
    for arch, content in (("vits14", b"one"), ("vitb14", b"one")):
        (tmp_path / f"dinov2_{arch}_pretrain.pth").write_bytes(content)

    def keys() -> set[str]:
        p = plan(load_study(study_tiny, [f"work_dir={tmp_path / 'study'}", "pretrain_seeds=[0]", "finetune_seeds=[0]",
                                         "arms=" + json.dumps(arms)]))
        return {c.key for c in p.cells.values() if c.kind == "auxlabels"}

    assert len(keys()) == 1
    (tmp_path / "dinov2_vitb14_pretrain.pth").write_bytes(b"two")
    assert len(keys()) == 2
    # the same file named through the whole section ("extractor={...}") is identified the same way
    arms[2]["stage_overrides"]["auxlabels"] = [
        f"extractor={{name: dinov2, checkpoint: {tmp_path / 'dinov2_vitb14_pretrain.pth'}, config: null, "
        "layer: layer4}"]
    assert len(keys()) == 2
    (tmp_path / "dinov2_vitb14_pretrain.pth").write_bytes(b"one")
    assert len(keys()) == 1


def test_the_reader_needs_no_timm():
    # ground floor: key sets and shapes come from the spec, not from a model class
    code = "import sys, auxseg.contracts.vit_checkpoints as v; assert 'timm' not in sys.modules; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-500:]
    assert vit_shapes(vc.DINOV2_ARCHS["vitb14"], "meta")["pos_embed"] == (1, 1370, 768)


def test_label_folders_made_before_the_vit_keys_still_resume(monkeypatch, tmp_path):
    # at their defaults the new extractor keys leave the fingerprint of a config without them
    import copy

    from auxlabels import resume
    from auxlabels.config import AuxLabelsConfig
    from auxseg.config import load_config, to_dict

    cfg = load_config(AuxLabelsConfig, TINY, [f"out_dir={tmp_path}"])
    now = resume.fingerprint(cfg, [], None)
    before = to_dict(cfg)
    for key in ("arch", "blocks", "token_stride", "max_tokens"):
        del before["extractor"][key]
    monkeypatch.setattr(resume, "to_dict", lambda _: copy.deepcopy(before))
    assert resume.fingerprint(cfg, [], None) == now
    monkeypatch.undo()
    vit = load_config(AuxLabelsConfig, TINY, [f"out_dir={tmp_path}", "extractor.blocks=[2]"])
    assert resume.fingerprint(vit, [], None) != now
