"""A real Cityscapes frame in the official layout (../shared/data/realformat/cityscapes): prepare, check, fine-tune.

The frame (frankfurt_000000_000294, downscaled to 256x128) comes with the official labelIds,
instanceIds and labelTrainIds; its README says the three label files were resized separately, so
the official id -> train id table applied to labelIds differs from labelTrainIds at 77 pixels on
object borders. Skipped, with the reason, when ../shared is absent.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from auxseg.images import read_label, read_rgb
from loop.cli import main as auxseg_main

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT.parent / "shared" / "data" / "realformat" / "cityscapes"
FRAME = "frankfurt/frankfurt_000000_000294"
DIFFERING_PIXELS = 77  # the sample's README: labelIds -> train ids vs. the separately resized labelTrainIds
TINY_YAML = REPO_ROOT / "configs/finetune/tiny.yaml"

pytestmark = pytest.mark.skipif(not (SAMPLE / "gtFine").is_dir(),
                                reason=f"the real-format Cityscapes sample is not at {SAMPLE} (../shared is absent)")

# The tiny DeepLabV3-R18 on the Cityscapes dataset class and layout (19 classes, 255 = ignore).
TINY_CITYSCAPES = """\
_base_ = ['{tiny}']
model = dict(decode_head=dict(num_classes=19), auxiliary_head=dict(num_classes=19))
train_dataloader = dict(dataset=dict(
    _delete_=True, type='CityscapesDataset', data_root='',
    data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'), pipeline={{{{_base_.train_pipeline}}}}))
val_dataloader = dict(dataset=dict(
    _delete_=True, type='CityscapesDataset', data_root='',
    data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'), pipeline={{{{_base_.test_pipeline}}}}))
test_dataloader = val_dataloader
"""


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A copy of the sample without its labelTrainIds, the frame also as the one training image, prepared
    by ``auxseg data prepare cityscapes``; returns (root, the command's output lines)."""
    root = tmp_path_factory.mktemp("cityscapes")
    for split in ("val", "train"):
        for top, suffix in (("leftImg8bit", "_leftImg8bit.png"), ("gtFine", "_gtFine_labelIds.png"),
                            ("gtFine", "_gtFine_instanceIds.png")):
            dst = root / top / split / f"{FRAME}{suffix}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SAMPLE / top / "val" / f"{FRAME}{suffix}", dst)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert auxseg_main(["data", "prepare", "cityscapes", str(root)]) == 0
    return root, out.getvalue().splitlines()


@pytest.fixture
def prepared(prepared_run) -> Path:
    return prepared_run[0]


def test_prepare_converts_the_official_label_ids(prepared_run):
    prepared, out = prepared_run
    assert out[0].endswith(f"wrote 2 *_gtFine_labelTrainIds.png files under {prepared / 'gtFine'}")
    assert out[-1] == "no problems"
    ours = read_label(prepared / f"gtFine/val/{FRAME}_gtFine_labelTrainIds.png")
    official = read_label(SAMPLE / f"gtFine/val/{FRAME}_gtFine_labelTrainIds.png")
    differ = ours != official
    assert ours.shape == official.shape == (128, 256) and int(differ.sum()) == DIFFERING_PIXELS
    # every differing pixel lies on a border of the official train-id map (a 4-neighbour has another id)
    padded = np.pad(official, 1, mode="edge")
    border = ((padded[:-2, 1:-1] != official) | (padded[2:, 1:-1] != official)
              | (padded[1:-1, :-2] != official) | (padded[1:-1, 2:] != official))
    assert int((differ & border).sum()) == DIFFERING_PIXELS
    # the instance ids encode the same classes (id * 1000 + instance for things, the label id for stuff)
    instances = read_label(prepared / f"gtFine/val/{FRAME}_gtFine_instanceIds.png").astype(np.int64)
    labels = read_label(prepared / f"gtFine/val/{FRAME}_gtFine_labelIds.png")
    np.testing.assert_array_equal(np.where(instances >= 1000, instances // 1000, instances), labels)


def test_check_reads_the_prepared_folder(prepared, capsys):
    assert auxseg_main(["data", "check", str(prepared), "--dataset", "cityscapes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"{prepared} as cityscapes: 19 classes (0..18), ignore 255"
    assert out[3].split() == ["train", "1", "1", "1", "256x128", "10/19", "classes", "+", "255", "0"]
    assert out[4].split() == ["val", "1", "1", "1", "256x128", "10/19", "classes", "+", "255", "0"]


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_check_passes_the_sample_as_shipped(capsys):
    """The sample itself, with its official labelTrainIds, unmodified: read only, nothing written."""
    before = _listing(SAMPLE)
    assert auxseg_main(["data", "check", str(SAMPLE), "--dataset", "cityscapes", "--splits", "val"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[3].split() == ["val", "1", "1", "1", "256x128", "10/19", "classes", "+", "255", "0"]
    assert out[-1] == "no problems" and _listing(SAMPLE) == before


def test_a_literature_split_file_is_not_confirmed_without_the_training_images(capsys):
    """The sample has no train split: the 1/16 split file cannot be checked, and the check says so."""
    split = REPO_ROOT / "splits/cityscapes_literature/1_16/labeled.txt"
    assert auxseg_main(["data", "check", str(SAMPLE), "--dataset", "cityscapes", "--splits", "val",
                        "--split-file", str(split)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert not any("all in train" in line for line in out) and out[-1] == "1 problems"
    train = SAMPLE / "leftImg8bit/train"
    assert out[-2] == f"{split}: not checked: the images it names belong in {train}, which is missing"


def test_a_tiny_finetune_on_the_real_format(prepared, tmp_path, capsys):
    from auxseg.checkpoint_io import allow_mmengine_checkpoints
    from finetune.mmseg_config import load_mmseg_config

    config = tmp_path / "deeplabv3_r18-d8_tiny-cityscapes.py"
    config.write_text(TINY_CITYSCAPES.format(tiny=REPO_ROOT / "configs/finetune/mmseg/tiny/deeplabv3_r18-d8_tiny.py"))
    work = tmp_path / "work"
    rc = auxseg_main(["finetune", str(TINY_YAML), f"mmseg_config={config}", f"data_root={prepared}",
                      f"work_dir={work}", "max_iters=2", "val_interval=2", "checkpoint_interval=2"])
    assert rc == 0, capsys.readouterr().err
    results = json.loads((work / "results.json").read_text())
    assert results["evaluated_on"]["dataset"] == "CityscapesDataset" and results["evaluated_on"]["num_images"] == 1
    assert results["split"]["num_available"] == 1 and len(results["classes"]) == 19
    assert results["classes"][:3] == ["road", "sidewalk", "building"]
    # the same mIoU by another route: predict the frame with the checkpoint, count pixels against our labels
    from auxseg.mmseg_compat import import_mmseg

    import_mmseg()
    allow_mmengine_checkpoints()
    from mmseg.apis import inference_model, init_model

    model = init_model(load_mmseg_config(work / "mmseg_config.py"), str(work / "iter_2.pth"), device="cpu")
    image = prepared / f"leftImg8bit/val/{FRAME}_leftImg8bit.png"
    pred = inference_model(model, str(image)).pred_sem_seg.data[0].numpy()
    gt = read_label(prepared / f"gtFine/val/{FRAME}_gtFine_labelTrainIds.png")
    assert pred.shape == gt.shape == read_rgb(image).shape[:2]
    keep = gt != 255
    ious = []
    for c in range(19):
        union = ((pred == c) | (gt == c)) & keep
        if union.any():
            ious.append(((pred == c) & (gt == c) & keep).sum() / union.sum())
    assert results["mIoU"] == round(100.0 * float(np.mean(ious)), 2)
