"""Soft priors in pre-training: warped like the labels, top-k through the batch, consumed by qr / rq."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from auxseg.checkpoint_io import CheckpointError, load_checkpoint
from auxseg.contracts.backbone import load_backbone_export
from auxseg.contracts.priors import write_label_priors
from loop.cli import main as auxseg_main
from pretrain.config import AugmentConfig, LossConfig
from pretrain.data import LabelFolderError, StepSampler, TwoViewDataset, collate, read_label_folder
from pretrain.objectives import StepBatch, build_objective
from pretrain.objectives.base import SoftPrior
from pretrain.train import run
from pretrain.transforms import prior_view

AUG = AugmentConfig(crop=(30, 40), out_size=32, scale=(0.8, 1.5), rotation=(-30, 30), cutout=(0, 0))


@pytest.fixture(scope="module")
def prior_folder(gt_label_folder, tmp_path_factory):
    """The ground-truth folder plus priors: 0.7 on the label, the rest spread; top 3 at stride 4."""
    folder = shutil.copytree(gt_label_folder, tmp_path_factory.mktemp("soft") / "labels")
    return write_label_priors(folder, confidence=0.7, topk=3, stride=4)


def test_prior_view_reads_the_cell_under_each_view_pixel():
    # a 4 x 6 image at stride 2 has a 2 x 3 grid whose cell c holds id c; coords pick pixels (y, x)
    ids = np.arange(6).reshape(1, 2, 3)
    probs = np.ones((1, 2, 3), np.float32)
    coords = np.array([[0 * 6 + 0, 1 * 6 + 5], [3 * 6 + 2, -1]])  # (0,0) (1,5) (3,2) padding
    out_ids, out_probs = prior_view(ids, probs, coords, width=6, stride=2)
    assert out_ids[0].tolist() == [[0, 2], [4, 0]]  # (1,5) -> cell (0,2); (3,2) -> cell (1,1)
    assert out_probs[0].tolist() == [[1, 1], [1, 0]]  # padding: no prior


def test_soft_prior_dense_and_grid():
    ids = torch.tensor([[2, 0], [1, 1]])
    probs = torch.tensor([[0.75, 0.25], [0.6, 0.4]])  # a repeated id adds up
    assert SoftPrior.dense(ids, probs, 3).tolist() == [[0.25, 0.0, 0.75], [0.0, 1.0, 0.0]]
    prior = SoftPrior(torch.arange(16).reshape(1, 1, 1, 4, 4).expand(1, 2, 1, 4, 4), torch.ones(1, 2, 1, 4, 4))
    grid_ids, grid_probs = prior.at_grid(2, 2)  # cell centres at pixels 1 and 3
    assert grid_ids[:4, 0].tolist() == [5, 7, 13, 15] and grid_probs.shape == (8, 1)


def test_views_carry_the_prior_warped_exactly_as_the_labels(prior_folder, tmp_path):
    folder = shutil.copytree(prior_folder, tmp_path / "f")
    write_label_priors(folder, confidence=0.7, topk=3, stride=1)  # one cell per pixel: argmax = label exactly
    f = read_label_folder(folder)
    ds = TwoViewDataset(f, AUG, seed=5, priors=True)
    keys = StepSampler(len(ds), 3, seed=5, start_iter=0, max_iters=1).batch_keys(0)
    batch = collate([ds[k] for k in keys])
    ids, probs, label = batch["prior_ids"], batch["prior_probs"], batch["label"]
    assert ids.shape == probs.shape == (3, 2, 3, 32, 32) and ids.dtype == torch.int64
    known = label != f.ignore_index
    assert torch.equal(ids[:, :, 0][known], label[known])  # the most probable id is the hard label
    padding = batch["coords"] < 0
    assert padding.any() and torch.all(probs.sum(2)[padding] == 0)
    torch.testing.assert_close(probs.sum(2)[~padding], torch.ones(int((~padding).sum())), atol=1e-5, rtol=0)
    without = collate([TwoViewDataset(f, AUG, seed=5)[k] for k in keys])  # the priors change nothing else
    assert "prior_ids" not in without and torch.equal(without["image"], batch["image"])


def test_one_hot_soft_priors_give_the_hard_label_loss(prior_folder):
    f = read_label_folder(prior_folder)
    torch.manual_seed(0)
    for name in ("qr", "rq"):
        cfg = getattr(LossConfig(name=name), name)
        obj = build_objective(name, cfg, 8)
        obj.check_folder(f)
        features = torch.randn(4, 8, 4, 4)  # b=2 images x 2 views
        label = torch.randint(0, f.num_labels, (2, 2, 32, 32))
        label[0, 1, :5] = f.ignore_index
        keep = (label != f.ignore_index).unsqueeze(2).float()
        prior = SoftPrior(label.clamp(max=f.num_labels - 1).unsqueeze(2), keep)  # one-hot, 0 where ignored
        common = dict(label=label, coords=torch.zeros_like(label), index=torch.arange(2), size=torch.tensor([[32, 32]] * 2),
                      folder=f, iteration=0)
        hard, _ = obj(features, StepBatch(**common, generator=torch.Generator().manual_seed(1)))
        soft, _ = obj(features, StepBatch(**common, generator=torch.Generator().manual_seed(1), prior=prior))
        torch.testing.assert_close(soft, hard)


@pytest.mark.parametrize("name", ["qr", "rq"])
def test_cli_pretraining_on_soft_priors_trains_and_exports(prior_folder, tmp_path, repo_dir, name):
    out = tmp_path / name
    args = ["pretrain", str(repo_dir / "configs/pretrain/tiny.yaml"), f"out_dir={out}", "data.source=folder",
            f"data.labels={prior_folder}", "augment.crop=[40,48]", "augment.out_size=48", "train.progress=false",
            "train.tensorboard=false", f"loss.name={name}", f"loss.{name}.use_priors=true", "train.max_iters=3",
            "train.log_every=1", "train.checkpoint_every=3"]
    assert auxseg_main(args) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    assert all(r["pixels"] > 100 for r in log)
    ckpt = load_checkpoint(out / "checkpoints" / "iter_0000003.pth")
    assert ckpt["priors_sha256"] == read_label_folder(prior_folder).priors_sha256
    assert load_backbone_export(out / "backbone_mmseg.pth")[1]["iteration"] == 3


def test_use_priors_on_a_folder_without_them_is_one_line_naming_it(gt_label_folder, tmp_path, repo_dir, capsys):
    args = ["pretrain", str(repo_dir / "configs/pretrain/tiny.yaml"), f"out_dir={tmp_path / 'x'}",
            "data.source=folder", f"data.labels={gt_label_folder}", "train.progress=false", "loss.name=qr",
            "loss.qr.use_priors=true"]
    assert auxseg_main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(gt_label_folder) in err[0] and "no soft priors" in err[0]
    with pytest.raises(LabelFolderError, match="soft priors"):
        TwoViewDataset(read_label_folder(gt_label_folder), AUG, priors=True)


def test_resume_against_other_priors_is_refused(prior_folder, tmp_path, tiny_config):
    folder = shutil.copytree(prior_folder, tmp_path / "f")
    overrides = ("loss.name=rq", "loss.rq.use_priors=true", "train.checkpoint_every=1")
    run(tiny_config(tmp_path / "run", folder, *overrides, "train.max_iters=1"))
    write_label_priors(folder, confidence=0.9, topk=3, stride=4)  # same labels, other priors
    with pytest.raises(CheckpointError, match="other soft priors"):
        run(tiny_config(tmp_path / "run", folder, *overrides, "train.max_iters=2"))
