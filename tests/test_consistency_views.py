"""The views of the consistency fine-tune: where each pseudo-label lands, the strong perturbations, the step.

The data is coded: every pixel's colour names its image and its position in it (R = 5 x, G = 5 y,
B = 60 image), so after any crop and flip the source pixel of every output pixel can be read back,
and a "perfect labeller" (the stored label map at the decoded pixel) gives the pseudo-label a
pixel must have. The train pipeline is the tiny preset's with the resize left out (crop 32 x 32
of 40 x 48 images, random flip), so no interpolation blurs the code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from auxseg.config import ConfigError, load_config
from auxseg.images import write_label_png, write_rgb_png
from finetune.config import FinetuneConfig, StrongViewConfig, resolve_paths
from finetune.consistency_data import StrongParams, cutmix_box, strong_view, unlabelled_pipeline

TINY_FINETUNE_MMSEG = Path(__file__).resolve().parents[1] / "configs/finetune/mmseg/tiny/deeplabv3_r18-d8_tiny.py"
H, W, NUM_IMAGES = 40, 48, 4
PHOTOMETRIC_OFF = ["consistency.strong.jitter_p=0", "consistency.strong.grayscale_p=0", "consistency.strong.blur_p=0"]


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """A coded CamVid-layout folder, an mmseg config without resize, and the label maps by image index."""
    root = tmp_path_factory.mktemp("coded")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=(NUM_IMAGES, H, W)).astype(np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    for split, count in (("train", NUM_IMAGES), ("val", 2)):
        for i in range(count):
            write_rgb_png(root / split / f"{i:04d}.png", np.stack([5 * xx, 5 * yy, np.full_like(xx, 60 * i)], -1).astype(np.uint8))
            write_label_png(root / f"{split}annot" / f"{i:04d}.png", labels[i])
    config = root / "coded_tiny.py"
    config.write_text(
        f"_base_ = ['{TINY_FINETUNE_MMSEG}']\n"
        "train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),\n"
        "                  dict(type='RandomCrop', crop_size=(32, 32)), dict(type='RandomFlip', prob=0.5),\n"
        "                  dict(type='PackSegInputs')]\n"
        "train_dataloader = dict(dataset=dict(pipeline=train_pipeline))\n"
        "model = dict(data_preprocessor=dict(size=(32, 32)))\n")
    return root, config, labels


def _prepared(coded, tmp_path, *overrides):
    """The consistency run's mmseg config as ``finetune.run.prepare`` leaves it, and its dataset and preprocessor."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS, MODELS

    from finetune.mmseg_config import load_mmseg_config
    from finetune.run import prepare

    root, config, _ = coded
    cfg = load_config(FinetuneConfig, None, [f"mmseg_config={config}", f"data_root={root}", f"work_dir={tmp_path}",
                                             "split.num_images=2", "num_workers=0", *overrides])
    paths = resolve_paths(cfg)
    mmcfg = load_mmseg_config(paths.mmseg_config)
    paths.work_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(cfg, paths, mmcfg)
    init_default_scope("mmseg")
    dataset = DATASETS.build(mmcfg.train_dataloader.dataset)
    return prepared, mmcfg, dataset, MODELS.build(mmcfg.model.data_preprocessor)


def _batch(dataset, preprocessor, indices, seed=0):
    from mmengine.dataset import pseudo_collate

    np.random.seed(seed)  # noqa: NPY002 - the dataset draws from numpy's global generator, as mmseg's transforms
    return preprocessor(pseudo_collate([dataset[i] for i in indices]), training=True)


def _decode(images: torch.Tensor, preprocessor) -> tuple[torch.Tensor, ...]:
    """Image index, x, y of every pixel of normalised RGB images ``[B, 3, H, W]``."""
    rgb = torch.round(images * preprocessor.std + preprocessor.mean).long()
    return rgb[:, 2] // 60, rgb[:, 0] // 5, rgb[:, 1] // 5


def _labeller(images, preprocessor, labels) -> torch.Tensor:
    """The label of each pixel's source pixel: what a perfect segmenter predicts ``[B, H, W]``."""
    index, x, y = _decode(images, preprocessor)
    return torch.from_numpy(labels.astype(np.int64))[index, y, x]


def test_pseudo_labels_land_where_their_strong_view_pixels_are_after_crop_flip_and_cutmix(coded, tmp_path):
    from finetune.consistency import mixed_images, mixed_targets

    prepared, _, dataset, pre = _prepared(coded, tmp_path, "consistency.method=unimatch",
                                          "consistency.strong.cutmix_p=1", *PHOTOMETRIC_OFF)
    labels = coded[2]
    assert prepared.consistency["unlabelled"]["num_images"] == 2 and len(dataset) == 2
    flipped = boxed = 0
    for seed in range(4):
        u = _batch(dataset, pre, [0, 1, 0, 1], seed)["unlabelled"]
        index, x, _ = _decode(u["weak"], pre)
        flipped += int((x[:, 0, 0] > x[:, 0, -1]).sum())  # x runs backwards: a flipped crop
        # the unlabelled images are the two outside the labelled split, each with the other as partner
        assert set(index[:, 0, 0].tolist()) == set(_decode(u["partner_weak"], pre)[0][:, 0, 0].tolist())
        # the diagnostic ground truth went through the image's crop and flip
        assert torch.equal(u["gt"], _labeller(u["weak"], pre, labels))
        weak = (torch.ones(4, 32, 32), _labeller(u["weak"], pre, labels))  # a confident, perfect weak prediction
        partner = (torch.full((4, 32, 32), 0.5), _labeller(u["partner_weak"], pre, labels))
        for v in range(2):
            assert torch.equal(u["strong"][v], u["weak"])  # photometric change off: the weak view, pixel for pixel
            target, conf, valid = mixed_targets(u, v, weak, partner)
            box = u["box"][v]
            boxed += int(box.any(dim=(1, 2)).sum())
            assert valid.all()
            assert torch.equal(target, _labeller(mixed_images(u, v), pre, labels))  # every pixel, in and out of the box
            assert torch.equal(conf, torch.where(box, 0.5, 1.0))
    assert 0 < flipped < 16 and boxed == 32  # both flip states seen; cutmix_p=1: every view has a box


def test_an_unlabelled_folder_is_read_as_given_and_has_no_ground_truth(coded, tmp_path):
    folder = tmp_path / "extra"
    yy, xx = np.mgrid[0:H, 0:W]
    for name in ("0000", "0001"):  # two images coded as image 4 in a sub-folder, no labels anywhere
        write_rgb_png(folder / "seq" / f"{name}.png", np.stack([5 * xx, 5 * yy, np.full_like(xx, 240)], -1).astype(np.uint8))
    prepared, _, dataset, pre = _prepared(coded, tmp_path / "work", "consistency.method=fixmatch",
                                          f"consistency.unlabelled_folder={folder}")
    info = prepared.consistency["unlabelled"]
    assert info["source"] == "folder" and info["num_images"] == 2 and info["scored_against_ground_truth"] is False
    assert (tmp_path / "work" / "unlabelled.txt").read_text().split() == ["seq/0000", "seq/0001"]
    assert len(dataset) == 2  # max(2 labelled, 2 unlabelled)
    u = _batch(dataset, pre, [0, 1])["unlabelled"]
    assert (_decode(u["weak"], pre)[0] == 4).all()  # the folder's images, not the training images (0..3)
    assert (u["gt"] == 255).all() and u["strong"].shape[0] == 1  # nothing to score against; one strong view


def test_the_weak_view_keeps_geometry_only_and_never_crops_by_labels():
    train = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="RandomResize", scale=(96, 64)),
             dict(type="RandomCrop", crop_size=(64, 64), cat_max_ratio=0.75), dict(type="RandomFlip", prob=0.5),
             dict(type="PhotoMetricDistortion"), dict(type="PackSegInputs")]
    steps = unlabelled_pipeline(train, with_ground_truth=True)
    assert [s["type"] for s in steps] == ["LoadImageFromFile", "LoadAnnotations", "RenameToDiagnostic", "RandomResize",
                                         "RandomCrop", "RandomFlip"]
    assert steps[4]["cat_max_ratio"] == 1.0  # the crop of an unlabelled image must not look at its labels
    assert [s["type"] for s in unlabelled_pipeline(train, with_ground_truth=False)][:2] == ["LoadImageFromFile",
                                                                                          "RandomResize"]
    with pytest.raises(ConfigError, match="RandomRotate is not known to the weak view"):
        unlabelled_pipeline([*train[:2], dict(type="RandomRotate", prob=1, degree=10), *train[3:]], True)


def test_strong_view_operations():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)  # BGR
    assert np.array_equal(strong_view(image, StrongParams(None, (0, 1, 2, 3), False, None)), image)
    gray = strong_view(image, StrongParams(None, (0, 1, 2, 3), True, None))
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    # ITU-R 601 luma of the RGB image (the BGR array reversed), cut to an integer as torchvision does
    luma = 0.2989 * image[..., 2] + 0.587 * image[..., 1] + 0.114 * image[..., 0]
    assert (luma - gray[..., 0] > -1e-4).all() and (luma - gray[..., 0] < 1 + 1e-4).all()
    brighter = strong_view(image, StrongParams((2.0, 1.0, 1.0, 0.0), (0, 1, 2, 3), False, None))
    assert np.array_equal(brighter, np.minimum(2 * image.astype(np.int64), 255).astype(np.uint8))
    flat = np.full((9, 9, 3), 77, np.uint8)  # a blur leaves a constant image alone
    assert np.array_equal(strong_view(flat, StrongParams(None, (0, 1, 2, 3), False, 2.0)), flat)


def test_cutmix_box_size_and_probability():
    cfg = dataclasses.replace(StrongViewConfig(), cutmix_p=1.0, cutmix_area=(0.25, 0.25), cutmix_aspect=(1.0, 1.0))
    for seed in range(5):
        box = cutmix_box(np.random.RandomState(seed), 8, 8, cfg)
        rows, cols = np.nonzero(box)
        assert box.sum() == 16 and rows.max() - rows.min() == 3 and cols.max() - cols.min() == 3  # one 4 x 4 square
    off = dataclasses.replace(cfg, cutmix_p=0.0)
    assert not cutmix_box(np.random.RandomState(0), 8, 8, off).any()


def _step(model, data):
    """Losses and parameter gradients of one consistency step (iteration 0 of the message hub)."""
    model.zero_grad()
    losses = model(**data, mode="loss")
    sum(v for k, v in losses.items() if "loss" in k).backward()
    return losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_the_step_never_trains_on_the_ground_truth_of_unlabelled_images(coded, tmp_path):
    """Scrambled ground truth of the unlabelled images: the same losses and gradients bit for bit, other accuracy."""
    from mmseg.registry import MODELS

    _, mmcfg, dataset, pre = _prepared(coded, tmp_path, "consistency.method=unimatch", "consistency.threshold=0")
    torch.manual_seed(0)
    model = MODELS.build(mmcfg.model)
    model.train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    data = _batch(dataset, pre, [0, 1])
    losses, grads = _step(model, data)
    model.load_state_dict(start)  # BN running statistics: the partner's pseudo-labels are taken in eval mode
    scrambled = dict(data, unlabelled=dict(data["unlabelled"], gt=torch.randint(0, 6, data["unlabelled"]["gt"].shape)))
    again, grads_again = _step(model, scrambled)
    assert {k for k in losses if "loss" in k} == {"decode.loss_ce", "aux.loss_ce", "loss_u_strong", "loss_u_fp"}
    for key in losses:
        if "loss" in key:
            assert torch.equal(losses[key], again[key]), key
    assert grads.keys() == grads_again.keys() and all(torch.equal(grads[n], grads_again[n]) for n in grads)
    assert len(grads) == len([p for p in model.parameters() if p.requires_grad])  # every parameter learns
    # threshold 0: every valid pixel is confident, and both accuracies count the same pixels
    assert losses["mask_ratio"].item() == 1.0 and losses["pseudo_acc"].item() == losses["pseudo_acc_all"].item()
    assert losses["pseudo_acc"].item() != again["pseudo_acc"].item()
    # FixMatch: one strong view, no perturbed-feature term
    model.settings = dataclasses.replace(model.settings, method="fixmatch")
    data = _batch(dataset, pre, [0, 1])  # no second strong view needed, but the batch may carry one
    fix, _ = _step(model, dict(data, unlabelled=dict(data["unlabelled"], strong=data["unlabelled"]["strong"][:1])))
    assert "loss_u_fp" not in fix and fix["loss_u_strong"].item() > 0


@pytest.mark.parametrize("config", sorted(p.relative_to(TINY_FINETUNE_MMSEG.parents[2]).as_posix()
                                         for p in TINY_FINETUNE_MMSEG.parents[1].glob("*/*.py")
                                         if p.parent.name != "_base_"))
def test_every_shipped_mmseg_config_takes_the_consistency_fine_tune(config):
    """DeepLabV3 and PSPNet of every dataset: the weak view's pipeline and the model switch are accepted."""
    from finetune.consistency_run import _switch_model
    from finetune.mmseg_config import inner_dataset, load_mmseg_config

    mmcfg = load_mmseg_config(TINY_FINETUNE_MMSEG.parents[2] / config)
    weak = unlabelled_pipeline(inner_dataset(mmcfg.train_dataloader).pipeline, with_ground_truth=True)
    assert "RandomCrop" in [s["type"] for s in weak]
    _switch_model(load_config(FinetuneConfig, None, ["consistency.method=unimatch"]), mmcfg)
    assert mmcfg.model.type == "ConsistencyEncoderDecoder" and mmcfg.model.consistency.method == "unimatch"
