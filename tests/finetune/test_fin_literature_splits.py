"""The Cityscapes splits of the semi-supervised literature, shipped as presets, resolve like the seeded ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from auxseg.paths import resolve_path
from finetune.config import FinetuneConfig, SplitConfig, resolve_paths
from finetune.splits import SplitError, read_split

REPO_ROOT = Path(__file__).resolve().parents[2]
PRESET = "splits/cityscapes_literature"
LABELLED = {"1_16": 186, "1_8": 372, "1_4": 744, "1_2": 1488, "1_30": 100}
CITYSCAPES_CONFIG = REPO_ROOT / "configs/finetune/mmseg/cityscapes/deeplabv3_r18-d8_cityscapes.py"


def image_paths(split_file: Path) -> list[str]:
    return [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cityscapes_names(tmp_path_factory) -> Path:
    """The 2,975 training images as empty files in the official layout, named by the split files themselves."""
    root = tmp_path_factory.mktemp("cityscapes")
    folder = resolve_path(PRESET)
    names = set(image_paths(folder / "1_16/labeled.txt")) | set(image_paths(folder / "1_16/unlabeled.txt"))
    for rel in names:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
    return root


def test_the_presets_ship_with_their_source_and_licence():
    folder = resolve_path(PRESET)
    assert folder == REPO_ROOT / "auxseg/presets" / PRESET
    assert "UniMatch" in (folder / "README.md").read_text() and "MIT License" in (folder / "LICENSE-UniMatch").read_text()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == sorted(LABELLED)


@pytest.mark.parametrize("fraction", sorted(LABELLED))
def test_each_split_resolves_to_its_published_count(cityscapes_names, fraction):
    from finetune.splits import list_stems

    available = list_stems(cityscapes_names / "leftImg8bit/train", "_leftImg8bit.png")
    assert len(available) == 2975
    kwargs = dict(image_prefix="leftImg8bit/train", img_suffix="_leftImg8bit.png")
    labelled = read_split(resolve_path(f"{PRESET}/{fraction}/labeled.txt"), available, **kwargs)
    unlabelled = read_split(resolve_path(f"{PRESET}/{fraction}/unlabeled.txt"), available, **kwargs)
    assert len(labelled) == LABELLED[fraction] and len(unlabelled) == 2975 - LABELLED[fraction]
    assert not set(labelled) & set(unlabelled) and sorted(set(labelled) | set(unlabelled)) == available
    assert all(stem.count("/") == 1 for stem in labelled)  # <city>/<city>_<seq>_<frame>, as the fine-tune's stems


def test_split_file_selects_the_labelled_images_of_a_finetune(cityscapes_names, tmp_path):
    """``split.file=splits/cityscapes_literature/1_16/labeled.txt`` with the Cityscapes mmseg config: 186 images."""
    from finetune.mmseg_config import load_mmseg_config
    from finetune.run import choose_split

    mmcfg = load_mmseg_config(CITYSCAPES_CONFIG)
    mmcfg.train_dataloader.dataset.data_root = str(cityscapes_names)
    cfg = FinetuneConfig(split=SplitConfig(file=f"{PRESET}/1_16/labeled.txt"), work_dir=str(tmp_path))
    info = choose_split(cfg, mmcfg, resolve_paths(cfg))
    assert info["mode"] == "file" and info["num_images"] == 186 and info["num_available"] == 2975
    first = image_paths(resolve_path(f"{PRESET}/1_16/labeled.txt"))[0]
    stem = first.removeprefix("leftImg8bit/train/").removesuffix("_leftImg8bit.png")
    assert stem in (tmp_path / "split.txt").read_text().split()


def test_a_pair_line_outside_the_training_images_is_refused(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png gtFine/val/x.png\n")
    with pytest.raises(SplitError, match=r"bad\.txt:1: image .* is not a training image of this dataset "
                                         r"\(expected leftImg8bit/train/<stem>_leftImg8bit\.png\)"):
        read_split(bad, image_prefix="leftImg8bit/train", img_suffix="_leftImg8bit.png")
    bad.write_text("leftImg8bit/train/a_leftImg8bit.png ../../etc/passwd\n")
    with pytest.raises(Exception, match=r"bad\.txt:1: path '\.\./\.\./etc/passwd' leaves its folder"):
        read_split(bad, image_prefix="leftImg8bit/train", img_suffix="_leftImg8bit.png")


def test_data_check_resolves_a_literature_split_file(cityscapes_names):
    from finetune.dataset_check import LAYOUTS, split_file_stems

    stems = split_file_stems(resolve_path(f"{PRESET}/1_8/labeled.txt"), LAYOUTS["cityscapes"])
    assert len(stems) == 372 and all((cityscapes_names / "leftImg8bit/train" / f"{s}_leftImg8bit.png").is_file()
                                     for s in stems)
