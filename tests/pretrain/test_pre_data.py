"""Label-folder reading (manifest checks) and the deterministic, rank-splittable batch sampler."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from auxseg.images import write_label_png
from pretrain.config import AugmentConfig
from pretrain.data import LabelFolderError, StepSampler, TwoViewDataset, collate, read_label_folder


def copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_manifest(folder, **changes):
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    m.update(changes)
    path.write_text(json.dumps(m))


def test_reads_everything_from_the_manifest(gt_label_folder):
    f = read_label_folder(gt_label_folder)
    assert (f.num_labels, f.ignore_index, f.scope, len(f.images)) == (6, 255, "global", 6)
    assert f.image_root.is_dir()


def test_eval_images_are_never_trained_on(gt_label_folder, tmp_path):
    folder = copy_folder(gt_label_folder, tmp_path / "labels_copy")
    images = json.loads((folder / "manifest.json").read_text())["images"]
    edit_manifest(folder, eval_images=images[:2])
    f = read_label_folder(folder)  # the hash still covers every label PNG
    assert f.images == tuple(images[2:])
    edit_manifest(folder, eval_images=images)
    with pytest.raises(LabelFolderError, match="no training images"):
        read_label_folder(folder)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"complete": False}, "incomplete"),
        ({"format": "auxseg.auxlabels/0"}, "format"),
        ({"scope": "frame"}, "scope"),
        ({"labels_sha256": "0" * 64}, "labels_sha256 does not match"),
    ],
)
def test_refuses_bad_manifests_naming_the_file(gt_label_folder, tmp_path, change, message):
    folder = copy_folder(gt_label_folder, tmp_path / "labels_copy")
    edit_manifest(folder, **change)
    with pytest.raises(LabelFolderError, match=message) as err:
        read_label_folder(folder)
    assert str(folder) in str(err.value)


def test_refuses_missing_manifest_and_missing_label(gt_label_folder, tmp_path):
    with pytest.raises(LabelFolderError, match="no manifest.json"):
        read_label_folder(tmp_path)
    folder = copy_folder(gt_label_folder, tmp_path / "c")
    (folder / "labels" / "0002.png").unlink()
    with pytest.raises(LabelFolderError, match="0002.png"):
        read_label_folder(folder)


def test_changed_label_is_caught_by_the_hash(gt_label_folder, tmp_path):
    folder = copy_folder(gt_label_folder, tmp_path / "c")
    write_label_png(folder / "labels" / "0001.png", np.zeros((48, 64), np.uint8))
    with pytest.raises(LabelFolderError, match="labels changed"):
        read_label_folder(folder)
    read_label_folder(folder, verify_hash=False)  # the documented way around it


def test_label_of_the_wrong_size_names_both_files(gt_label_folder, tmp_path):
    folder = copy_folder(gt_label_folder, tmp_path / "c")
    write_label_png(folder / "labels" / "0001.png", np.zeros((10, 10), np.uint8))
    ds = TwoViewDataset(read_label_folder(folder, verify_hash=False), AugmentConfig(crop=(20, 24), out_size=24))
    with pytest.raises(LabelFolderError, match="0001.png.*10x10.*64x48"):
        ds[(1, 0, 0)]


def test_dataset_sample_is_deterministic_per_key(gt_label_folder):
    ds = TwoViewDataset(read_label_folder(gt_label_folder), AugmentConfig(crop=(32, 40), out_size=32), seed=1)
    a, b, c = ds[(2, 5, 1)], ds[(2, 5, 1)], ds[(2, 6, 1)]
    assert a["image"].shape == (2, 3, 32, 32) and a["label"].shape == a["coords"].shape == (2, 32, 32)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["coords"], b["coords"])
    assert not torch.equal(a["coords"], c["coords"])
    batch = collate([a, c])
    assert batch["image"].shape == (2, 2, 3, 32, 32) and batch["size"].tolist() == [[48, 64], [48, 64]]


def test_sampler_ranks_split_the_single_process_batch_and_resume_in_place():
    single = list(StepSampler(num_images=7, batch_size=4, seed=0, start_iter=0, max_iters=6))
    ranks = [list(StepSampler(7, 4, 0, 0, 6, rank=r, world_size=2)) for r in range(2)]
    for it in range(6):
        assert ranks[0][it] + ranks[1][it] == single[it]
    resumed = list(StepSampler(7, 4, 0, start_iter=3, max_iters=6))
    assert resumed == single[3:]
    # every image appears once per epoch (7 images, 24 draws over 3+ epochs)
    first_epoch = [k[0] for batch in single for k in batch][:7]
    assert sorted(first_epoch) == list(range(7))
    with pytest.raises(ValueError, match="not divisible"):
        StepSampler(7, 3, 0, 0, 6, rank=0, world_size=2)


def test_config_rejects_empty_ranges_and_bad_values(repo_dir):
    from auxseg.config import ConfigError, load_config
    from pretrain.config import PretrainConfig

    tiny = repo_dir / "configs/pretrain/tiny.yaml"
    load_config(PretrainConfig, tiny)
    with pytest.raises(ConfigError, match="augment.*crop.*empty"):
        load_config(PretrainConfig, tiny, ["augment.crop=[400,300]"])
    with pytest.raises(ConfigError, match="flip_p"):
        load_config(PretrainConfig, tiny, ["augment.flip_p=1.5"])
    with pytest.raises(ConfigError, match="min_per_label"):
        load_config(PretrainConfig, tiny, ["loss.infonce.min_per_label=1"])
    with pytest.raises(ConfigError, match="loss.infonce.mode.*'aux'"):
        load_config(PretrainConfig, tiny, ["loss.infonce.mode=auxx"])


@pytest.mark.realdata
def test_paper_augmentations_on_camvid_keep_labels_on_their_pixels(camvid, tmp_path):
    """Two CamVid frames, their ground truth as the label folder, Table 8 defaults at 321 px."""
    from auxseg.images import list_images, read_label
    from pretrain.data import write_groundtruth_label_folder

    data = tmp_path / "camvid2"
    for rel in list_images(camvid / "train")[:2]:
        (data / "train").mkdir(parents=True, exist_ok=True)
        (data / "train" / rel).symlink_to((camvid / "train" / rel).resolve())
        lab = read_label(camvid / "trainannot" / rel.with_suffix(".png"))
        write_label_png(data / "trainannot" / rel.with_suffix(".png"), np.where(lab < 11, lab, 255).astype(np.uint8))
    folder = read_label_folder(write_groundtruth_label_folder(data, tmp_path / "aux", num_classes=11))
    ds = TwoViewDataset(folder, AugmentConfig(), seed=0)
    for it in range(2):
        sample = ds[(it % 2, it, 0)]
        assert sample["image"].shape == (2, 3, 321, 321) and sample["size"].tolist() == [360, 480]
        gt = read_label(folder.label_path(folder.images[it % 2])).reshape(-1).astype(np.int64)
        for v in range(2):
            coords, label = sample["coords"][v].numpy(), sample["label"][v].numpy()
            valid = coords >= 0
            assert valid.any()
            np.testing.assert_array_equal(label[valid], gt[coords[valid]])
