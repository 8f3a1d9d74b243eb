"""The Cityscapes splits of the semi-supervised literature, shipped as presets, resolve like the seeded ones."""

from __future__ import annotations

import re
import shlex
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


def test_each_fraction_splits_the_same_2975_images_in_two():
    """Per fraction, the labelled and unlabelled lists share no image and together name the same 2,975 images
    (each line an image of leftImg8bit/train and its gtFine labelTrainIds)."""
    folder = resolve_path(PRESET)
    everything = None
    for fraction, count in LABELLED.items():
        lines = {name: [ln.split() for ln in (folder / fraction / name).read_text().splitlines() if ln.strip()]
                 for name in ("labeled.txt", "unlabeled.txt")}
        for pairs in lines.values():
            assert all(len(p) == 2 and p[0].startswith("leftImg8bit/train/") and p[0].endswith("_leftImg8bit.png")
                       and p[1] == p[0].replace("leftImg8bit", "gtFine", 1).replace(
                           "_leftImg8bit.png", "_gtFine_labelTrainIds.png") for p in pairs)
        labelled = [p[0] for p in lines["labeled.txt"]]
        unlabelled = [p[0] for p in lines["unlabeled.txt"]]
        assert len(set(labelled)) == len(labelled) == count and len(set(unlabelled)) == len(unlabelled)
        assert not set(labelled) & set(unlabelled)
        union = set(labelled) | set(unlabelled)
        assert len(union) == 2975 and union == (everything if everything is not None else union)
        everything = union


SHARED_SPLITS = REPO_ROOT.parent / "shared" / "data" / "splits" / "cityscapes_literature"


@pytest.mark.skipif(not SHARED_SPLITS.is_dir(), reason=f"no copy of the published splits at {SHARED_SPLITS} "
                                                         "(../shared is absent)")
def test_the_presets_equal_the_published_files_byte_for_byte():
    folder = resolve_path(PRESET)

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    shipped, published = files(folder), files(SHARED_SPLITS)
    assert sorted(shipped) == sorted(published)
    assert [name for name in shipped if shipped[name] != published[name]] == []


def _doc_commands() -> list[str]:
    """The commands of docs/your_own_data.md's recipe that hand the unlabelled list to the auxiliary labels."""
    text = (REPO_ROOT / "docs/your_own_data.md").read_text()
    block = text.split("# fine-tune on the 186 labelled images of 1/16\n", 1)[1].split("```", 1)[0]
    block = re.sub(r"\\\n\s*", " ", block)  # continuation lines
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_the_documented_unlabelled_list_feeds_the_auxiliary_labels(tmp_path, monkeypatch):
    """The recipe of docs/your_own_data.md ("Label splits"), run as written in a new folder: the auxlabels
    command's image_dir and image_list (the shipped 1/16 unlabelled split, read as "<image> <label>" pairs)
    select exactly those 2,789 images of a Cityscapes folder (empty files: nothing is labelled), and the
    pretrain command reads the folder the auxlabels command writes."""
    from auxlabels.config import AuxLabelsConfig
    from auxlabels.inputs import collect_images
    from auxseg.config import load_config
    from pretrain.config import PretrainConfig

    commands = _doc_commands()
    stages = ("auxseg finetune ", "auxseg auxlabels ", "auxseg pretrain ")
    assert all(c.startswith(stages) for c in commands), commands  # nothing to run by hand in between
    unlabelled = image_paths(resolve_path(f"{PRESET}/1_16/unlabeled.txt"))
    for rel in unlabelled + image_paths(resolve_path(f"{PRESET}/1_16/labeled.txt")):
        path = tmp_path / "data/cityscapes" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def overrides(prefix: str) -> list[str]:
        [command] = [c for c in commands if c.startswith(prefix)]
        return [w for w in shlex.split(command)[3:] if not w.endswith("=...")]  # extractor.checkpoint=...

    monkeypatch.chdir(tmp_path)  # the recipe's paths are relative to where it runs
    aux = load_config(AuxLabelsConfig, REPO_ROOT / "configs/auxlabels/default.yaml", overrides("auxseg auxlabels "))
    inputs = collect_images(aux)
    assert len(unlabelled) == 2789 and [it.rel for it in inputs.items] == sorted(unlabelled)
    pre = load_config(PretrainConfig, REPO_ROOT / "configs/pretrain/default.yaml", overrides("auxseg pretrain "))
    assert pre.data.labels == aux.out_dir
