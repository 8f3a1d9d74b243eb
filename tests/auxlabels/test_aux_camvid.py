"""The stage on a few real CamVid validation images (skipped when the CamVid copy is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from auxlabels.config import AuxLabelsConfig
from auxlabels.pipeline import run
from auxseg.config import load_config
from auxseg.images import read_label

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.realdata
def test_camvid_val_subset(camvid: Path, tmp_path):
    names = sorted(p.name for p in (camvid / "val").glob("*.png"))[:4]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(names) + "\n")
    cfg = load_config(AuxLabelsConfig, REPO / "configs" / "auxlabels" / "camvid_r18.yaml", [
        f"image_dir={camvid / 'val'}", f"image_list={lst}", f"gt_dir={camvid / 'valannot'}",
        "extractor.random_init=true", "extractor.layer=layer3", f"out_dir={tmp_path / 'aux'}",
        "num_workers=0", "progress=false",
    ])
    m = run(cfg)
    assert m["num_labels"] == 17 and m["images"] == names
    label = read_label(tmp_path / "aux" / "labels" / names[0])
    assert label.shape == (360, 480) and label.dtype == np.uint8
    # ground-truth value 11 (Unlabelled) is ignored, so every evaluated pixel has a class 0..10
    assert m["pmiou"]["num_images"] == 4 and 0 < m["pmiou"]["pmiou"] < 100
    assert len(m["config"]["class_names"]) == 11
