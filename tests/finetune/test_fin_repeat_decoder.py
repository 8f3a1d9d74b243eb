"""Repeatability of a fine-tune (the same command twice gives the same numbers and weights) and the
pre-trained decoder initialising mmseg's DeepLabV3 ASPPHead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from auxseg.checkpoint_io import CheckpointError, load_checkpoint
from loop.cli import main as auxseg_main

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_YAML = REPO_ROOT / "configs/finetune/tiny.yaml"


def _finetune(work: Path, root: Path, *extra: str) -> dict:
    assert auxseg_main(["finetune", str(TINY_YAML), f"data_root={root}", f"work_dir={work}", *extra]) == 0
    return json.loads((work / "results.json").read_text())


def test_the_same_fine_tune_twice_gives_identical_numbers(tmp_path, synthetic_root):
    a = _finetune(tmp_path / "a", synthetic_root)
    b = _finetune(tmp_path / "b", synthetic_root)
    assert a["mIoU"] == b["mIoU"] and a["per_class_iou"] == b["per_class_iou"]
    wa, wb = (load_checkpoint(tmp_path / d / "iter_4.pth")["state_dict"] for d in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _decoder_export(tmp_path: Path, channels: int) -> Path:
    from pretrain.export import export_decoder
    from pretrain.model import ASPP

    torch.manual_seed(5)
    return export_decoder(ASPP(512, channels), tmp_path, config={}, iteration=1, auxlabels_sha256=None,
                          auxlabels_manifest=None)


def test_a_decoder_export_initialises_the_aspp_head(tmp_path, synthetic_root):
    path = _decoder_export(tmp_path, channels=16)  # the tiny preset's decode head has 16 channels
    results = _finetune(tmp_path / "work", synthetic_root, f"init.decoder={path}")
    report = json.loads((tmp_path / "work" / "init_report.json").read_text())
    assert report["verified_decoder_tensors"] == report["decoder_tensors"] == 36
    assert results["init"]["decoder"] == str(path.resolve())


def test_a_decoder_export_of_another_width_is_refused_before_training(tmp_path, synthetic_root, capsys):
    path = _decoder_export(tmp_path, channels=32)
    rc = auxseg_main(["finetune", str(TINY_YAML), f"data_root={synthetic_root}", f"work_dir={tmp_path / 'w'}",
                      f"init.decoder={path}"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "decoder_mmseg.pth: the decoder export does not fit model.decode_head" in err and "channels 32" in err
    assert not (tmp_path / "w" / "iter_4.pth").exists()
    with pytest.raises(CheckpointError):
        from finetune.convert import prepare_decoder_init
        from finetune.mmseg_config import load_mmseg_config

        prepare_decoder_init(path, load_mmseg_config("configs/finetune/mmseg/tiny/deeplabv3_r18-d8_tiny.py"), tmp_path)
