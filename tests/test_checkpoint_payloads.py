"""No code from any checkpoint field runs: Python text in every string field we read stays text, and a
pickled object in any field is refused before anything is built (docs/reliability.md, checkpoint safety)."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision

from auxseg.checkpoint_io import CheckpointError, load_checkpoint, save_checkpoint
from auxseg.contracts.backbone import export_meta, read_backbone_weights
from auxseg.contracts.common import Provenance


class Payload:
    """Pickles as a call that creates a marker file (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _code(marker) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')\nmodel = dict(type='EncoderDecoder')\n"


def _resnet18_state() -> dict:
    torch.manual_seed(0)
    return {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}


def _export(tmp_path, marker, **meta_changes):
    meta = export_meta(arch="resnet18", stem="plain", key_format="torchvision",
                       provenance=Provenance({"cfg": _code(marker)}, 1, _code(marker), _code(marker)))
    meta.update(cfg=_code(marker), **meta_changes)
    path = tmp_path / "export.pth"
    save_checkpoint({"state_dict": _resnet18_state(), "meta": meta}, path)
    return path


def _readers(tmp_path):
    """Every project function that reads a backbone checkpoint file given by a user."""
    from auxlabels.config import ExtractorConfig
    from auxlabels.features import build_extractor
    from finetune.convert import prepare_init
    from finetune.mmseg_config import load_mmseg_config
    from pretrain.checkpoint import init_backbone
    from pretrain.model import DilatedResNet

    tiny = "configs/finetune/mmseg/tiny/deeplabv3_r18-d8_tiny.py"
    return {
        "read_backbone_weights": lambda p: read_backbone_weights(p),
        "pretrain init_backbone": lambda p: init_backbone(DilatedResNet("resnet18", "plain"), str(p)),
        "finetune prepare_init": lambda p: prepare_init("export", str(p), load_mmseg_config(tiny), tmp_path),
        "auxlabels auxseg_export": lambda p: build_extractor(ExtractorConfig(name="auxseg_export", checkpoint=str(p))),
        "auxlabels mmseg": lambda p: build_extractor(ExtractorConfig(name="mmseg", checkpoint=str(p), layer="decoder")),
    }


def test_python_text_in_every_field_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    marker = tmp_path / "ran"
    path = _export(tmp_path, marker)
    for name, read in _readers(tmp_path).items():
        try:
            read(path)
        except CheckpointError:
            pass  # the mmseg extractor refuses: it needs a config file the user names
        assert not marker.exists(), f"{name} executed text from a checkpoint"


@pytest.mark.parametrize("field", ["state_dict", "meta", "meta.config", "meta.mean", "top level"])
def test_a_pickled_object_in_any_field_is_refused_by_every_reader(tmp_path, monkeypatch, field):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    marker = tmp_path / "ran"
    ckpt = load_checkpoint(_export(tmp_path, tmp_path / "unused"))
    if field == "state_dict":
        ckpt["state_dict"]["conv1.weight"] = Payload(marker)
    elif field == "meta":
        ckpt["meta"]["versions"] = Payload(marker)
    elif field == "meta.config":
        ckpt["meta"]["config"] = {"model": Payload(marker)}
    elif field == "meta.mean":
        ckpt["meta"]["mean"] = [Payload(marker), 0.0, 0.0]
    else:
        ckpt["extra"] = Payload(marker)
    path = tmp_path / "payload.pth"
    torch.save(ckpt, path)  # a plain pickle: what an attacker would write
    for name, read in _readers(tmp_path).items():
        with pytest.raises(CheckpointError, match=r"payload\.pth"):
            read(path)
        assert not marker.exists(), f"{name} ran a pickled payload"


def test_a_training_checkpoint_config_is_data_only(tmp_path, monkeypatch):
    """``auxseg pretrain --export`` rebuilds the network from the checkpoint's config: plain data, checked by the schema."""
    from auxseg.config import ConfigError
    from pretrain.checkpoint import STATE_FORMAT
    from pretrain.cli import export_from_checkpoint

    marker = tmp_path / "ran"
    save_checkpoint({"format": STATE_FORMAT, "iteration": 1, "model": {}, "config": {"model": {"arch": _code(marker)}}},
                    tmp_path / "state.pth")
    with pytest.raises(ConfigError, match="model.arch"):
        export_from_checkpoint(tmp_path / "state.pth")
    assert not marker.exists()
