"""Datasets on files the tests write in the official formats: CamVid, NYUv2 (.mat release), Cityscapes, ADE20K."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auxseg.images import read_label, read_rgb, write_label_png, write_rgb_png
from finetune.config import FinetuneConfig, SplitConfig, resolve_paths

REPO_ROOT = Path(__file__).resolve().parents[2]
LOAD = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]


def loaded_labels(dataset) -> list[np.ndarray]:
    """The label maps as mmseg's pipeline delivers them to the model (after label_map / reduce_zero_label)."""
    return [dataset[i]["data_samples"].gt_sem_seg.data[0].numpy() for i in range(len(dataset))]


def build(cfg: dict):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    import finetune.datasets  # noqa: F401  (registers the classes)

    init_default_scope("mmseg")  # the pipeline's transforms are looked up in mmseg's scope, as in a Runner
    return DATASETS.build(cfg)


def test_camvid_unlabelled_becomes_ignore_and_split_file_selects(tmp_path):
    rng = np.random.default_rng(0)
    labels = {}
    for name in ("a", "b", "c"):
        write_rgb_png(tmp_path / "train" / f"{name}.png", rng.integers(0, 255, (6, 8, 3), dtype=np.uint8))
        labels[name] = rng.integers(0, 12, (6, 8)).astype(np.uint8)  # 0..10 classes, 11 = Unlabelled
        write_label_png(tmp_path / "trainannot" / f"{name}.png", labels[name])
    (tmp_path / "split.txt").write_text("a\nc\n")
    ds = build(dict(type="CamVidDataset", data_root=str(tmp_path), ann_file=str(tmp_path / "split.txt"),
                    data_prefix=dict(img_path="train", seg_map_path="trainannot"), pipeline=LOAD))
    assert len(ds) == 2 and len(ds.metainfo["classes"]) == 11
    for got, name in zip(loaded_labels(ds), ("a", "c")):
        expected = np.where(labels[name] == 11, 255, labels[name])
        np.testing.assert_array_equal(got, expected)


def make_nyuv2_release(root: Path, n: int = 5, h: int = 12, w: int = 16):
    """A tiny labelled release in the official layout: HDF5 .mat + splits.mat + classMapping40.mat."""
    import h5py
    import scipy.io

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)  # [N, H, W, 3] as seen in MATLAB
    raw = rng.integers(0, 895, (n, h, w)).astype(np.uint16)  # 894 classes, 0 = unlabelled
    raw[:, 0, 0] = 0
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        # MATLAB v7.3 keeps column-major order: HDF5 sees the axes reversed
        f["images"] = images.transpose(0, 3, 2, 1)  # [N, 3, W, H]
        f["labels"] = raw.transpose(0, 2, 1)  # [N, W, H]
        f["depths"] = np.zeros((n, w, h), dtype=np.float32)
    mapping = rng.integers(1, 41, (1, 894))  # raw k -> mapClass[k-1] in 1..40
    scipy.io.savemat(root / "classMapping40.mat", {"mapClass": mapping, "className": np.array(["wall"] * 40)})
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array([[1], [3], [4]]), "testNdxs": np.array([[2], [5]])})
    return images, raw, mapping.ravel()


def test_prepare_nyuv2_tool_converts_official_layout(tmp_path):
    images, raw, mapping = make_nyuv2_release(tmp_path)
    out = tmp_path / "nyuv2"
    res = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools/prepare_nyuv2.py"), "--labeled", str(tmp_path / "nyu_depth_v2_labeled.mat"),
         "--splits", str(tmp_path / "splits.mat"), "--mapping", str(tmp_path / "classMapping40.mat"), "--out", str(out)],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (out / "images/train").iterdir()) == ["0001.png", "0003.png", "0004.png"]
    assert sorted(p.name for p in (out / "labels40/test").iterdir()) == ["0002.png", "0005.png"]
    for split, idx in (("train", 0), ("test", 1), ("train", 3)):
        name = f"{idx + 1:04d}.png"
        np.testing.assert_array_equal(read_rgb(out / "images" / split / name), images[idx])
        expected = np.where(raw[idx] == 0, 255, mapping[np.maximum(raw[idx].astype(int), 1) - 1] - 1)
        label = read_label(out / "labels40" / split / name)
        assert label.dtype == np.uint8 and label[0, 0] == 255
        np.testing.assert_array_equal(label, expected)

    # the converted folder is what NYUv2Dataset reads, through mmseg's own pipeline
    ds = build(dict(type="NYUv2Dataset", data_root=str(out),
                    data_prefix=dict(img_path="images/test", seg_map_path="labels40/test"), pipeline=LOAD))
    assert len(ds) == 2 and len(ds.metainfo["classes"]) == 40
    np.testing.assert_array_equal(loaded_labels(ds)[0], read_label(out / "labels40/test/0002.png"))


def test_prepare_nyuv2_rejects_wrong_files(tmp_path):
    from finetune.nyuv2 import NYUv2FormatError, convert, read_class_mapping

    make_nyuv2_release(tmp_path)
    (tmp_path / "short.txt").write_text("1 2 3\n")
    with pytest.raises(NYUv2FormatError, match=r"short\.txt: expected 894"):
        read_class_mapping(tmp_path / "short.txt")
    (tmp_path / "not_hdf5.mat").write_bytes(b"MATLAB 5.0 nonsense")
    with pytest.raises(NYUv2FormatError, match="not_hdf5.mat"):
        convert(tmp_path / "not_hdf5.mat", tmp_path / "classMapping40.mat", tmp_path / "splits.mat", tmp_path / "o")
    import scipy.io

    scipy.io.savemat(tmp_path / "badsplit.mat", {"trainNdxs": np.array([[0]]), "testNdxs": np.array([[2]])})
    with pytest.raises(NYUv2FormatError, match=r"badsplit\.mat.*1-based"):
        convert(tmp_path / "nyu_depth_v2_labeled.mat", tmp_path / "classMapping40.mat", tmp_path / "badsplit.mat",
                tmp_path / "o")


def test_cityscapes_labelids_to_trainids_and_mmseg_layout(tmp_path):

    ids = np.array([[7, 8, 26, 33], [0, 1, 255, 34], [24, 25, 11, 21]], dtype=np.uint8)
    train_ids = np.array([[0, 1, 13, 18], [255, 255, 255, 255], [11, 12, 2, 8]], dtype=np.uint8)
    for city, frame in (("aachen", "aachen_000000_000019"), ("bonn", "bonn_000001_000019")):
        write_rgb_png(tmp_path / f"leftImg8bit/train/{city}/{frame}_leftImg8bit.png", np.zeros((3, 4, 3), np.uint8))
        write_label_png(tmp_path / f"gtFine/train/{city}/{frame}_gtFine_labelIds.png", ids)
        (tmp_path / f"gtFine/train/{city}/{frame}_gtFine_color.png").write_bytes(b"")
    res = subprocess.run([sys.executable, str(REPO_ROOT / "tools/prepare_cityscapes.py"), str(tmp_path / "gtFine")],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "wrote 2" in res.stdout, res.stderr

    from finetune.mmseg_config import load_mmseg_config
    from finetune.run import choose_split

    cfg = load_mmseg_config(REPO_ROOT / "configs/finetune/mmseg/cityscapes/pspnet_r50-d8_cityscapes.py")
    cfg.train_dataloader.dataset.data_root = str(tmp_path)
    ft = FinetuneConfig(split=SplitConfig(num_images=1), work_dir=str(tmp_path))
    info = choose_split(ft, cfg, resolve_paths(ft))
    assert info["num_available"] == 2 and info["num_images"] == 1
    stem = (tmp_path / "split.txt").read_text().strip()
    assert stem in ("aachen/aachen_000000_000019", "bonn/bonn_000001_000019")
    ds_cfg = dict(cfg.train_dataloader.dataset)
    ds = build({**ds_cfg, "pipeline": LOAD})
    assert len(ds) == 1 and ds[0]["data_samples"].img_path.endswith(f"{stem}_leftImg8bit.png")
    np.testing.assert_array_equal(loaded_labels(ds)[0], train_ids)


def test_ade20k_layout_reduce_zero_label_and_jpg_split(tmp_path):
    from finetune.mmseg_config import load_mmseg_config
    from finetune.run import choose_split

    label = np.array([[0, 1, 2], [150, 149, 0]], dtype=np.uint8)  # 0 = "other" in ADE20K, ignored
    for i in range(1, 4):
        (tmp_path / "images/training").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / f"images/training/ADE_train_{i:08d}.jpg")
        write_label_png(tmp_path / f"annotations/training/ADE_train_{i:08d}.png", label)
    cfg = load_mmseg_config(REPO_ROOT / "configs/finetune/mmseg/ade20k/deeplabv3_r18-d8_ade20k.py")
    cfg.train_dataloader.dataset.data_root = str(tmp_path)
    ft = FinetuneConfig(split=SplitConfig(fraction=0.5), work_dir=str(tmp_path))
    info = choose_split(ft, cfg, resolve_paths(ft))
    assert info["num_available"] == 3 and info["num_images"] == 2  # round(1.5) = 2
    ds_cfg = dict(cfg.train_dataloader.dataset)
    train_load = [s for s in ds_cfg["pipeline"] if s["type"] == "LoadAnnotations"]
    assert train_load[0]["reduce_zero_label"] is True
    ds = build({**ds_cfg, "pipeline": [LOAD[0], train_load[0], LOAD[2]]})
    assert len(ds) == 2 and len(ds.metainfo["classes"]) == 150
    np.testing.assert_array_equal(loaded_labels(ds)[0], np.array([[255, 0, 1], [149, 148, 255]]))


@pytest.mark.realdata
def test_real_camvid_loads_through_mmseg(camvid):
    ds = build(dict(type="CamVidDataset", data_root=str(camvid), data_prefix=dict(img_path="val", seg_map_path="valannot"),
                    pipeline=LOAD))
    assert len(ds) == 101
    raw = read_label(Path(ds.get_data_info(0)["seg_map_path"]))
    got = ds[0]["data_samples"].gt_sem_seg.data[0].numpy()
    assert got.shape == (360, 480) and raw.max() <= 11
    np.testing.assert_array_equal(got, np.where(raw == 11, 255, raw))
