"""The stage on a few real CamVid validation images (skipped when the CamVid copy is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dinov2_files import write_vits14_files
from independent import pmiou_by_enumeration, pmiou_by_subset_search
from PIL import Image

from auxlabels.config import AuxLabelsConfig
from auxlabels.pipeline import run
from auxseg.config import load_config
from auxseg.images import read_label

REPO = Path(__file__).resolve().parents[2]
CAMVID_R18 = REPO / "configs" / "auxlabels" / "camvid_r18.yaml"


@pytest.mark.realdata
def test_camvid_val_subset(camvid: Path, tmp_path):
    names = sorted(p.name for p in (camvid / "val").glob("*.png"))[:4]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(names) + "\n")
    cfg = load_config(AuxLabelsConfig, CAMVID_R18, [
        f"image_dir={camvid / 'val'}", f"image_list={lst}", f"gt_dir={camvid / 'valannot'}",
        "extractor.random_init=true", "extractor.layer=layer3", f"out_dir={tmp_path / 'aux'}",
        "num_workers=0", "progress=false",
    ])
    m = run(cfg)
    assert m["num_labels"] == 17 and m["images"] == names
    label = read_label(tmp_path / "aux" / "labels" / names[0])
    assert label.shape == (360, 480) and label.dtype == np.uint8
    # ground-truth value 11 (Unlabelled) is ignored, so every evaluated pixel has a class 0..10
    files = [(tmp_path / "aux" / "labels" / n, camvid / "valannot" / n) for n in names]
    want = pmiou_by_subset_search(files, 17, 11, ignore_values=[11])
    assert m["pmiou"]["num_images"] == 4 and m["pmiou"]["pmiou"] == pytest.approx(want, abs=1e-6)
    assert len(m["config"]["class_names"]) == 11


def test_subset_search_is_the_enumerated_matching(tmp_path):
    # the two routes of tests/independent.py against each other where both are cheap: K = 4, M = 3
    rng = np.random.default_rng(0)
    files = []
    for i in range(2):
        label, gt = rng.integers(0, 4, (12, 16)), rng.integers(0, 3, (12, 16))
        label[0, :5], gt[1, :3] = 255, 255  # ignored label pixels (misses) and ignored ground truth
        files.append((tmp_path / f"l{i}.png", tmp_path / f"g{i}.png"))
        Image.fromarray(label.astype(np.uint8)).save(files[-1][0])
        Image.fromarray(gt.astype(np.uint8)).save(files[-1][1])
    assert pmiou_by_subset_search(files, 4, 3) == pytest.approx(pmiou_by_enumeration(files, 4, 3), abs=1e-12)


@pytest.fixture(scope="module")
def vits14_files(tmp_path_factory):
    """A random-weight DINOv2 ViT-S/14 in Meta's, timm's and Hugging Face's layouts (tests/auxlabels/dinov2_files.py)."""
    return write_vits14_files(tmp_path_factory.mktemp("vits14"))


@pytest.mark.realdata
def test_camvid_labels_are_the_same_from_the_three_dinov2_layouts(camvid: Path, vits14_files, tmp_path):
    # `auxseg auxlabels` on CamVid frames with one ViT-S/14 written three ways: the same label PNGs and PmIoU
    from loop.cli import main

    names = sorted(p.name for p in (camvid / "val").glob("*.png"))[:2]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(names) + "\n")
    common = [f"image_dir={camvid / 'val'}", f"image_list={lst}", f"gt_dir={camvid / 'valannot'}",
              "extractor.name=dinov2", "num_workers=0", "progress=false"]
    labels, pmious = {}, {}
    for layout, path in vits14_files.items():
        out = tmp_path / f"aux_{layout}"
        assert main(["auxlabels", str(CAMVID_R18), *common, f"extractor.checkpoint={path}", f"out_dir={out}"]) == 0
        m = json.loads((out / "manifest.json").read_text())
        ext = m["extractor"]
        assert (ext["arch"], ext["layout"], ext["native_stride"]) == ("dinov2_vits14", layout, 14)
        labels[layout] = {n: (out / "labels" / n).read_bytes() for n in names}
        pmious[layout] = m["pmiou"]["pmiou"]
    assert labels["meta"] == labels["timm"] == labels["hf"]
    assert pmious["meta"] == pmious["timm"] == pmious["hf"]
    files = [(tmp_path / "aux_meta" / "labels" / n, camvid / "valannot" / n) for n in names]
    assert pmious["meta"] == pytest.approx(pmiou_by_subset_search(files, 17, 11, ignore_values=[11]), abs=1e-6)
    label = read_label(tmp_path / "aux_meta" / "labels" / names[0])
    assert label.shape == (360, 480) and len(np.unique(label)) >= 5  # real clusters, not one colour
