"""``auxseg data prepare`` on files in the official formats: the NYUv2 .mat release, ADEChallengeData2016, CamVid."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from test_fin_datasets import make_nyuv2_release

from auxseg.images import read_label, write_label_png, write_rgb_png
from loop.cli import main as auxseg_main


def test_nyuv2_release_is_converted_then_checked(tmp_path, capsys):
    images, raw, mapping = make_nyuv2_release(tmp_path)
    out = tmp_path / "nyuv2"
    assert auxseg_main(["data", "prepare", "nyuv2", str(tmp_path), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"wrote 3 train / 2 test images and 40-class labels in {out}")
    assert lines[2] == f"{out} as nyuv2: 40 classes (0..39), ignore 255"
    assert lines[4].split()[:5] == ["train", "3", "3", "3", "16x12"] and lines[5].split()[:5] == ["test", "2", "2", "2", "16x12"]
    assert lines[-1] == "no problems"
    expected = np.where(raw[1] == 0, 255, mapping[np.maximum(raw[1].astype(int), 1) - 1] - 1)
    np.testing.assert_array_equal(read_label(out / "labels40/test/0002.png"), expected)


def test_nyuv2_without_the_release_names_what_is_missing(tmp_path, capsys):
    assert auxseg_main(["data", "prepare", "nyuv2", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"auxseg data prepare: error: {tmp_path}: no nyu_depth_v2_labeled.mat (the labelled release, "
                   "2.8 GB; docs/finetune.md, 'Datasets and their preparation')")


def make_ade_zip(root: Path) -> Path:
    """ADEChallengeData2016.zip as released: images/{training,validation}/*.jpg, annotations/.../*.png (0 = other)."""
    archive = root / "ADEChallengeData2016.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for split, prefix, n in (("training", "ADE_train", 3), ("validation", "ADE_val", 2)):
            for i in range(1, n + 1):
                img = root / "tmp.jpg"
                Image.fromarray(np.full((4, 6, 3), 40 * i, np.uint8)).save(img)
                zf.write(img, f"ADEChallengeData2016/images/{split}/{prefix}_{i:08d}.jpg")
                write_label_png(root / "tmp.png", np.array([[0, 1, 150, 7, 7, 0]] * 4, np.uint8))
                zf.write(root / "tmp.png", f"ADEChallengeData2016/annotations/{split}/{prefix}_{i:08d}.png")
        zf.writestr("ADEChallengeData2016/objectInfo150.txt", "Idx\tRatio\tTrain\tVal\tName\n")
    (root / "tmp.jpg").unlink()
    (root / "tmp.png").unlink()
    return archive


def test_ade20k_zip_is_unpacked_then_checked(tmp_path, capsys):
    make_ade_zip(tmp_path)
    assert auxseg_main(["data", "prepare", "ade20k", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    data_root = tmp_path / "ADEChallengeData2016"
    assert lines[0].endswith(f"unpacked 11 files from ADEChallengeData2016.zip into {data_root}")
    assert lines[2] == f"{data_root} as ade20k: 150 classes (1..150), ignore 0"
    assert lines[4].split() == ["training", "3", "3", "3", "6x4", "3/150", "classes", "+", "0", "0"]
    assert lines[5].split() == ["validation", "2", "2", "2", "6x4", "3/150", "classes", "+", "0", "0"]
    # a second run finds the folder and converts nothing
    assert auxseg_main(["data", "prepare", "ade20k", str(tmp_path)]) == 0
    assert "is already unpacked; nothing to convert" in capsys.readouterr().out.splitlines()[0]


def test_a_zip_member_that_leaves_the_folder_is_refused(tmp_path, capsys):
    archive = tmp_path / "dl" / "ADEChallengeData2016.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escaped.txt", "x")
    assert auxseg_main(["data", "prepare", "ade20k", str(archive.parent)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"auxseg data prepare: error: {archive}: ../escaped.txt: path '../escaped.txt' leaves its folder"
    assert not (tmp_path / "escaped.txt").exists()


def test_camvid_needs_no_conversion_and_is_checked(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        write_rgb_png(tmp_path / split / "0001TP_006690.png", rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
        write_label_png(tmp_path / f"{split}annot" / "0001TP_006690.png", np.arange(12, dtype=np.uint8)[None].repeat(9, 0))
    assert auxseg_main(["data", "prepare", "camvid", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"{tmp_path}: the SegNet release is read as it is; nothing to convert")
    assert lines[4].split() == ["train", "1", "1", "1", "12x9", "11/11", "classes", "+", "11", "0"]
    assert lines[-1] == "no problems"
