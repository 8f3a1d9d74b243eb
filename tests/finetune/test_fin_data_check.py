"""``auxseg data check`` finds each planted fault of a tiny dataset, naming its file; the pipeline runs it first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auxseg.images import write_label_png, write_rgb_png
from finetune.dataset_check import LAYOUTS, check_dataset, folder_layout
from loop.cli import main as auxseg_main

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_folder(root: Path, n_train: int = 4, n_val: int = 2) -> Path:
    """A clean CamVid-layout dataset of 3 classes (values 0..2, 255 = ignore), 8x6 images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            write_rgb_png(root / split / f"f{i}.png", rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
            label = rng.integers(0, 3, (6, 8)).astype(np.uint8)
            label[0, 0] = 255
            write_label_png(root / f"{split}annot" / f"f{i}.png", label)
    return root


def plant_faults(root: Path) -> dict[str, str]:
    """Seven faults, one file each: {path: words its problem line must hold}."""
    bad = np.full((6, 8), 1, np.uint8)
    bad[2, 3] = 7  # class 7 of 3
    write_label_png(root / "trainannot/f0.png", bad)
    (root / "trainannot/f1.png").unlink()  # image without label
    write_label_png(root / "valannot/extra.png", np.zeros((6, 8), np.uint8))  # label without image
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "trainannot/f2.png")  # an RGB (colour) label
    write_label_png(root / "trainannot/f3.png", np.zeros((5, 8), np.uint8))  # 8x5 label, 8x6 image
    (root / "val/f1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # unreadable image
    (root / "split.txt").write_text("f0\nf1\nf9\n")  # the labelled images; f9 does not exist
    return {
        str(root / "trainannot/f0.png"): "label values 7 are not classes of folder (3 classes (0..2), ignore 255)",
        str(root / "train/f1.png"): f"image without label (expected {root / 'trainannot/f1'}.png)",
        str(root / "valannot/extra.png"): f"label without image (expected {root / 'val/extra'}.png)",
        str(root / "trainannot/f2.png"): "label PNG in mode RGB (3 channels)",
        str(root / "trainannot/f3.png"): "label is 8x5, its image 8x6",
        str(root / "val/f1.png"): "cannot read image",
        str(root / "split.txt"): "names 'f9', which is not an image of",
    }


def test_a_clean_folder_has_no_problems_and_a_table(tmp_path):
    report = check_dataset(make_folder(tmp_path), folder_layout(3), split_files=[_split(tmp_path, "f0\nf3\n")])
    assert report.ok and report.problems == []
    table = report.table()
    assert table[0] == f"{tmp_path} as folder: 3 classes (0..2), ignore 255"
    assert table[1].split() == ["split", "images", "labels", "paired", "image", "sizes", "label", "values", "problems"]
    assert table[2].split() == ["train", "4", "4", "4", "8x6", "3/3", "classes", "+", "255", "0"]
    assert table[3].split() == ["val", "2", "2", "2", "8x6", "3/3", "classes", "+", "255", "0"]
    assert table[4] == f"  split file {tmp_path / 'split.txt'}: 2 images, all in train"


def _split(root: Path, text: str) -> Path:
    (root / "split.txt").write_text(text)
    return root / "split.txt"


def test_every_planted_fault_is_one_problem_naming_its_file(tmp_path):
    root = make_folder(tmp_path)
    expected = plant_faults(root)
    report = check_dataset(root, folder_layout(3), split_files=[root / "split.txt"])
    found = {p.path: str(p) for p in report.problems}
    assert sorted(found) == sorted(expected)  # each fault once, nothing else
    for path, words in expected.items():
        assert found[path].startswith(path) and words in found[path], found[path]
    rows = {sp.name: sp for sp in report.splits}
    assert (rows["train"].images, rows["train"].labels, rows["train"].paired, rows["train"].problems) == (4, 3, 3, 4)
    assert (rows["val"].images, rows["val"].labels, rows["val"].paired, rows["val"].problems) == (2, 3, 2, 2)


def test_training_images_outside_the_split_files_may_be_unlabelled(tmp_path):
    """A folder of images with a few labels: the split file names the labelled ones, the others are used unlabelled."""
    root = make_folder(tmp_path)
    for stem in ("f2", "f3"):
        (root / "trainannot" / f"{stem}.png").unlink()
    assert [str(p).split(": ", 1)[1] for p in check_dataset(root, folder_layout(3)).problems] == [
        f"image without label (expected {root / 'trainannot/f2'}.png)",
        f"image without label (expected {root / 'trainannot/f3'}.png)"]
    report = check_dataset(root, folder_layout(3), split_files=[_split(root, "f0\nf1\n")])
    assert report.ok and [(sp.name, sp.images, sp.labels, sp.unlabelled) for sp in report.splits] == [
        ("train", 4, 2, 2), ("val", 2, 2, 0)]
    assert "  train: 2 images without label, named by no split file: used unlabelled" in report.table()[4]


def test_the_command_prints_the_table_one_line_per_problem_and_fails(tmp_path, capsys):
    root = make_folder(tmp_path)
    expected = plant_faults(root)
    rc = auxseg_main(["data", "check", str(root), "--dataset", "folder", "--num-classes", "3",
                      "--split-file", str(root / "split.txt")])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1 and out[-1] == "7 problems"
    problem_lines = out[-8:-1]
    assert sorted(line.split(":")[0] for line in problem_lines) == sorted(expected)
    assert out[1] == f"{root} as folder: 3 classes (0..2), ignore 255"
    assert auxseg_main(["data", "check", str(make_folder(tmp_path / "clean")), "--dataset", "folder",
                        "--num-classes", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no problems"


def test_a_folder_of_another_layout_is_named(tmp_path):
    root = make_folder(tmp_path)
    report = check_dataset(root, LAYOUTS["cityscapes"])
    assert [str(p) for p in report.problems] == [
        f"{root / 'leftImg8bit/train'}: folder missing (the cityscapes layout has leftImg8bit/train/ and gtFine/train/)",
        f"{root / 'gtFine/train'}: folder missing (the cityscapes layout has leftImg8bit/train/ and gtFine/train/)",
        f"{root / 'leftImg8bit/val'}: folder missing (the cityscapes layout has leftImg8bit/val/ and gtFine/val/)",
        f"{root / 'gtFine/val'}: folder missing (the cityscapes layout has leftImg8bit/val/ and gtFine/val/)",
    ]


def test_the_pipeline_checks_the_folder_before_its_first_step(tmp_path):
    from auxseg.config import load_config
    from finetune.dataset_check import DatasetCheckError
    from loop.pipeline import PipelineConfig, prepare_data

    root = make_folder(tmp_path / "data")
    plant_faults(root)
    cfg = load_config(PipelineConfig, REPO_ROOT / "configs/pipeline/demo.yaml",
                      ["data.synthetic=null", f"data.root={root}", "data.num_classes=3", "data.ignore_values=[255]",
                       f"work_dir={tmp_path / 'run'}"])
    with pytest.raises(DatasetCheckError) as err:
        prepare_data(cfg, tmp_path / "run")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"data.root: {root}: ")
    assert "(and 5 more)" in message and f"auxseg data check {root} --dataset folder --num-classes 3 --ignore 255" in message
    assert not (tmp_path / "run").exists()  # nothing written before the check passed


def test_a_split_file_is_checked_when_the_training_split_is_not(tmp_path, capsys):
    """``--splits val --split-file F``: F's names are still looked up among the training images (listed, not
    read); with no training folder at all, F is reported as not checked, never as "all in train"."""
    root = make_folder(tmp_path)
    split = _split(root, "f0\nf9\n")
    report = check_dataset(root, folder_layout(3), split_files=[split], splits=["val"])
    assert [sp.name for sp in report.splits] == ["val"]
    assert [str(p) for p in report.problems] == [f"{split}: names 'f9', which is not an image of {root / 'train'}"]
    split.write_text("f0\nf3\n")
    report = check_dataset(root, folder_layout(3), split_files=[split], splits=["val"])
    assert report.ok and report.table()[-1] == f"  split file {split}: 2 images, all in train"
    for image in (root / "train").iterdir():
        image.unlink()
    (root / "train").rmdir()
    rc = auxseg_main(["data", "check", str(root), "--dataset", "folder", "--num-classes", "3", "--splits", "val",
                      "--split-file", str(split)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1 and out[-1] == "1 problems" and not any("all in train" in line for line in out)
    assert out[-2] == f"{split}: not checked: the images it names belong in {root / 'train'}, which is missing"


def test_prepare_refuses_out_for_a_dataset_other_than_nyuv2(tmp_path, capsys):
    assert auxseg_main(["data", "prepare", "camvid", str(tmp_path), "--out", str(tmp_path / "elsewhere")]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"auxseg data prepare: error: --out is for nyuv2 only; the camvid dataset stays in ROOT ({tmp_path})\n")
    assert not (tmp_path / "elsewhere").exists()
