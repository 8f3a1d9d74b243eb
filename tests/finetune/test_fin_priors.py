"""Fine-tuning from priors: coarse-prior construction by hand, QR/RQ as mmseg losses (hand values, equal to the pure
functions, hard priors = cross-entropy), the prior's path through the pipeline and the head, argmax r, and tiny
fine-tunes through the CLI with ce / qr / rq on coarse priors and with a prior folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from independent import miou_by_inference
from scipy.special import ndtr

from auxseg.methods.implicit_posterior import implied_posterior, qr_loss, rq_loss, smooth
from finetune.losses import PriorFCNHead, QRLoss, RQLoss
from finetune.priors import coarse_prior, prior_to_labels
from loop.cli import main as auxseg_main

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_YAML = REPO_ROOT / "configs/finetune/tiny.yaml"

# q and p of two pixels (as in tests/pretrain/test_pre_implicit_posterior.py), as [B=1, K=2, H=1, W=2] maps
Q = torch.tensor([[0.5, 0.5], [0.8, 0.2]], dtype=torch.float64)
P = torch.tensor([[0.9, 0.1], [0.5, 0.5]], dtype=torch.float64)


def as_map(rows: torch.Tensor) -> torch.Tensor:
    """[N, K] -> [1, K, 1, N]."""
    return rows.T[None, :, None, :]


# ----------------------------------------------------------------------------- coarse priors


def test_coarse_prior_majority_ties_and_ignore_by_hand():
    lab = np.array([[0, 1, 2, 2],
                    [1, 0, 255, 2],
                    [3, 3, 255, 255],
                    [3, 4, 255, 255]])
    prior = coarse_prior(lab, num_classes=5, factor=2, sigma=0)
    # blocks: {0,1,1,0} tie -> 0; {2,2,255,2} -> 2 (255 does not vote); {3,3,3,4} -> 3; all ignored -> no label
    want = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [3, 3, 255, 255], [3, 3, 255, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(prior_to_labels(prior), want)
    assert prior.shape == (5, 4, 4) and set(np.unique(prior)) == {0.0, 1.0}
    np.testing.assert_array_equal(prior.sum(0), (want != 255).astype(np.float32))  # ignored block: row of zeros
    # factor 1, no blur: the one-hot labels
    np.testing.assert_array_equal(prior_to_labels(coarse_prior(lab, 5, 1, 0)), np.where(lab < 5, lab, 255))


def test_prior_to_labels_ignores_rows_without_a_single_maximum():
    prior = np.array([[0.7, 0.5, 1 / 3, 0.0],
                      [0.2, 0.5, 1 / 3, 0.0],
                      [0.1, 0.0, 1 / 3, 0.0]], dtype=np.float32)[:, None, :]  # [K=3, 1, 4]
    assert prior_to_labels(prior)[0].tolist() == [0, 255, 255, 255]  # clear, tie, uniform, no information


def test_coarse_prior_blur_by_hand_and_partial_blocks():
    # left half class 0, right half class 1, blocks of 4: the blur across the border is a Gaussian CDF
    lab = np.zeros((8, 8), dtype=np.int64)
    lab[:, 4:] = 1
    prior = coarse_prior(lab, num_classes=2, factor=4, sigma=4.0)
    c = np.arange(8) + 0.5  # pixel centres; the image is 0..8, so the Gaussian mass outside it drops out
    p1 = (ndtr((8 - c) / 4) - ndtr((4 - c) / 4)) / (ndtr((8 - c) / 4) - ndtr((0 - c) / 4))
    for row in range(8):
        np.testing.assert_allclose(prior[1, row], p1, rtol=1e-6)
        np.testing.assert_allclose(prior[0, row], 1 - p1, rtol=1e-6)
    assert prior_to_labels(prior)[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # 5x5 with blocks of 2: the last row/column of blocks is partial (1 pixel) and votes alone
    lab = np.zeros((5, 5), dtype=np.int64)
    lab[4, :] = 1
    np.testing.assert_array_equal(prior_to_labels(coarse_prior(lab, 2, 2, 0))[4], [1] * 5)


def test_coarse_prior_truncates_far_from_labels():
    lab = np.full((1, 64), 255)
    lab[0, :4] = 2
    prior = coarse_prior(lab, num_classes=3, factor=4, sigma=2.0)
    labels = prior_to_labels(prior)[0]
    # blocks farther than 4 sigma = 8 px from the labelled block get no information (ignored)
    assert (labels[:12] == 2).all() and (labels[13:] == 255).all()


# ----------------------------------------------------------------------------- the mmseg losses


def test_qr_and_rq_losses_by_hand_with_an_ignored_pixel():
    logits = as_map(Q.log())  # softmax(log q) = q
    prior = as_map(P)
    # a third pixel with a prior row of zeros (ignored) and arbitrary logits changes nothing
    logits = torch.cat([logits, torch.tensor([3.0, -1.0], dtype=torch.float64)[None, :, None, None]], dim=3)
    prior = torch.cat([prior, torch.zeros(1, 2, 1, 1, dtype=torch.float64)], dim=3)
    qbar = (0.65, 0.35)
    neg_cross = 0.5 * ((0.5 * math.log(0.9) + 0.5 * math.log(0.1)) + (0.8 * math.log(0.5) + 0.2 * math.log(0.5)))
    want_qr = sum(m * math.log(m) for m in qbar) - neg_cross
    assert QRLoss(smoothing=0.0)(logits, prior).item() == pytest.approx(want_qr, rel=1e-6)
    r = implied_posterior(Q, P)
    want_rq = sum(float(r[i, c]) * (math.log(float(r[i, c])) - math.log(float(Q[i, c])))
                  for i in range(2) for c in range(2)) / 2
    assert RQLoss(smoothing=0.0)(logits, prior).item() == pytest.approx(want_rq, rel=1e-6)
    # with the default smoothing (1e-4) they are the pure functions of the smoothed q and p, times loss_weight
    q, p = smooth(Q), smooth(P)
    assert QRLoss()(logits, prior).item() == pytest.approx(qr_loss(q, p).item(), rel=1e-6)
    assert RQLoss(loss_weight=0.4)(logits, prior).item() == pytest.approx(0.4 * rq_loss(q, p).item(), rel=1e-6)
    assert QRLoss().loss_name == "loss_qr" and RQLoss().loss_name == "loss_rq"
    with pytest.raises(ValueError, match="loss_"):
        RQLoss(loss_name="rq")


def test_hard_priors_reduce_rq_loss_to_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 6, 7))
    labels[0, :2] = 255  # ignored pixels: rows of zeros in the prior
    prior = F.one_hot(labels.clamp(max=4), 5).permute(0, 3, 1, 2).double() * (labels != 255)[:, None]
    want = F.cross_entropy(logits, labels, ignore_index=255)
    assert RQLoss(smoothing=0.0)(logits, prior).item() == pytest.approx(want.item(), rel=1e-6)  # float32 inside


def test_running_class_mass_and_warmup():
    logits, prior = as_map(Q.log()), as_map(P)
    loss = QRLoss(smoothing=0.0, mass_momentum=0.5, warmup_iters=1)
    loss.set_num_classes(2)
    loss.train()
    q = Q
    # first training call: cross-entropy on the prior (warm-up); the running mass moves halfway to the batch's
    assert loss(logits, prior).item() == pytest.approx(-(P * Q.log()).sum(1).mean().item(), rel=1e-6)
    qbar1 = 0.5 * torch.tensor([0.5, 0.5]) + 0.5 * torch.tensor([0.65, 0.35])
    torch.testing.assert_close(loss.running_mass.double(), qbar1.double())
    # second call: QR with qbar = 0.5 running + 0.5 batch
    qbar2 = 0.5 * qbar1.double() + 0.5 * q.mean(0)
    assert loss(logits, prior).item() == pytest.approx(qr_loss(Q, P, qbar2).item(), rel=1e-6)
    assert int(loss.iteration) == 2
    loss.eval()  # evaluation neither counts nor updates
    loss(logits, prior)
    assert int(loss.iteration) == 2 and torch.allclose(loss.running_mass.double(), qbar2)


def test_prior_head_passes_the_zero_padded_prior():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    torch.manual_seed(0)
    head = PriorFCNHead(in_channels=4, channels=4, num_convs=1, num_classes=3, loss_decode=dict(type="RQLoss"))
    assert head.loss_decode.running_mass.shape == (3,)
    logits = torch.randn(2, 3, 6, 6)
    samples = []
    for i in range(2):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.full((1, 6, 6), 255, dtype=torch.long))  # padded by the preprocessor
        s.gt_sem_seg.data[:, :4, :5] = i
        s.gt_prior = PixelData(data=torch.softmax(torch.randn(3, 4, 5), 0))  # the unpadded 4x5 image
        samples.append(s)
    out = head.loss_by_feat(logits, samples)
    assert set(out) == {"loss_rq", "acc_seg"}
    # the padding (prior rows of zeros) is ignored: the loss over the 4x5 crops only
    q = smooth(logits[:, :, :4, :5].permute(0, 2, 3, 1).reshape(-1, 3).softmax(1))
    p = smooth(torch.cat([s.gt_prior.data.permute(1, 2, 0).reshape(-1, 3) for s in samples]))
    assert out["loss_rq"].item() == pytest.approx(rq_loss(q, p).item(), rel=1e-5)
    bare = SegDataSample()
    bare.gt_sem_seg = samples[0].gt_sem_seg
    with pytest.raises(ValueError, match="LoadPrior"):
        head.loss_by_feat(logits, [bare, bare])


# ----------------------------------------------------------------------------- argmax r


def test_posterior_metric_with_the_true_labels_as_prior_scores_100():
    from finetune.metrics import PosteriorIoUMetric

    torch.manual_seed(0)
    label = torch.randint(0, 3, (5, 6))
    metric = PosteriorIoUMetric()
    metric.dataset_meta = {"classes": ("a", "b", "c")}
    logits = torch.randn(3, 5, 6)
    prior = F.one_hot(label, 3).permute(2, 0, 1).float()
    sample = {"pred_sem_seg": {"data": logits.argmax(0)[None]}, "gt_sem_seg": {"data": label[None]},
              "seg_logits": {"data": logits}, "gt_prior": {"data": prior}}
    metric.process({}, [sample])
    m = metric.compute_metrics(metric.results)
    assert m["mIoU_r"] == 100.0 and m["aAcc_r"] == 100.0 and m["mIoU"] < 100.0


# ----------------------------------------------------------------------------- the pipeline and the CLI


def test_prior_follows_the_augmented_labels(synthetic_root, tmp_path):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    from auxseg.config import load_config
    from finetune.config import FinetuneConfig, resolve_paths
    from finetune.mmseg_config import load_mmseg_config
    from finetune.priors import configure_targets
    from finetune.run import apply_overrides

    cfg = load_config(FinetuneConfig, TINY_YAML, [f"data_root={synthetic_root}", "targets.kind=coarse",
                                                   "targets.factor=8", "loss.name=qr", f"work_dir={tmp_path}"])
    mmcfg = load_mmseg_config(cfg.mmseg_config)
    apply_overrides(cfg, mmcfg, resolve_paths(cfg))
    info = configure_targets(cfg, mmcfg, [], resolve_paths(cfg))
    assert info["blur_sigma"] == 8.0 and info["val_prior"] == "coarse"
    assert mmcfg.model.decode_head.type == "PriorASPPHead" and mmcfg.model.auxiliary_head.type == "PriorFCNHead"
    assert mmcfg.model.auxiliary_head.loss_decode.loss_weight == 0.4  # the config's weight is kept
    init_default_scope("mmseg")  # as the Runner does: mmseg's Resize / RandomFlip, which move every seg field
    train = DATASETS.build(mmcfg.train_dataloader.dataset)
    for i in range(4):  # random resize, crop and flip: the prior moves with the labels
        sample = train[i]["data_samples"]
        prior, labels = sample.gt_prior.data, sample.gt_sem_seg.data[0]
        assert prior.shape[1:] == labels.shape and prior.shape[0] == 6
        valid = labels != 255
        assert torch.equal(prior.argmax(0)[valid], labels[valid]) and valid.float().mean() > 0.5
        top2 = prior.topk(2, dim=0).values
        assert ((prior.sum(0) == 0) | (top2[0] - top2[1] < 1e-6))[~valid].all()  # no argmax: zero or tied
    val = DATASETS.build(mmcfg.val_dataloader.dataset)[0]["data_samples"]
    full = val.gt_sem_seg.data[0]  # validation keeps the full labels; its prior is built from them
    assert val.gt_prior.data.shape[1:] == full.shape
    assert not torch.equal(val.gt_prior.data.argmax(0), full)


# one fine-tune costs about 10 s of CPU: rq (prior heads, prior losses, argmax r) runs by default, the others are slow
@pytest.mark.parametrize("loss", [pytest.param("ce", marks=pytest.mark.slow), pytest.param("qr", marks=pytest.mark.slow),
                                  "rq"])
def test_cli_finetune_on_coarse_priors(tmp_path, synthetic_root, loss, capsys):
    work = tmp_path / "work"
    rc = auxseg_main(["finetune", str(TINY_YAML), f"data_root={synthetic_root}", f"work_dir={work}",
                      "max_iters=2", "val_interval=2", "checkpoint_interval=2", "tensorboard=false",
                      "targets.kind=coarse", "targets.factor=8", f"loss.name={loss}", "loss.warmup_iters=1"])
    assert rc == 0
    assert "mIoU_r" in capsys.readouterr().out
    results = json.loads((work / "results.json").read_text())
    assert results["mIoU"] == miou_by_inference(work, work / "iter_2.pth", num_classes=6)["mIoU"]
    assert results["val_history"] == [{"iter": 2, "mIoU": results["mIoU"], "mIoU_r": results["mIoU_r"]}]
    assert results["targets"]["kind"] == "coarse" and results["targets"]["loss"] == loss
    log = next(work.glob("*/*.log")).read_text()
    assert "mIoU_r" in log and (f"decode.loss_{loss}" in log if loss != "ce" else "decode.loss_ce" in log)
    mmseg_cfg = (work / "mmseg_config.py").read_text()
    assert ("PriorASPPHead" in mmseg_cfg) == (loss != "ce") and "LoadPrior" in mmseg_cfg


@pytest.mark.slow
def test_cli_finetune_from_a_prior_folder(tmp_path, synthetic_root):
    from auxseg.contracts.label_folder import write_groundtruth_label_folder
    from auxseg.contracts.priors import write_label_priors

    train_priors = write_label_priors(write_groundtruth_label_folder(synthetic_root, tmp_path / "tr", "train", 6))
    val_priors = write_label_priors(write_groundtruth_label_folder(synthetic_root, tmp_path / "va", "val", 6))
    work = tmp_path / "work"
    rc = auxseg_main(["finetune", str(TINY_YAML), f"data_root={synthetic_root}", f"work_dir={work}",
                      "max_iters=2", "val_interval=2", "checkpoint_interval=2", "tensorboard=false",
                      "targets.kind=prior_folder", f"targets.folder={train_priors}",
                      f"targets.val_folder={val_priors}", "loss.name=rq"])
    assert rc == 0
    results = json.loads((work / "results.json").read_text())
    assert results["mIoU_r"] is not None and results["targets"]["folder"] == str(train_priors.resolve())


def test_prior_folder_of_another_k_is_refused_before_training(tmp_path, synthetic_root, capsys):
    from auxseg.contracts.label_folder import write_groundtruth_label_folder
    from auxseg.contracts.priors import write_label_priors

    folder = write_label_priors(write_groundtruth_label_folder(synthetic_root, tmp_path / "tr", "train", 5))
    work = tmp_path / "work"
    rc = auxseg_main(["finetune", str(TINY_YAML), f"data_root={synthetic_root}", f"work_dir={work}",
                      "targets.kind=prior_folder", f"targets.folder={folder}", "loss.name=qr"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "K=5" in err[-1] and "6 classes" in err[-1] and str(folder) in err[-1]
    assert not list(work.glob("iter_*.pth"))
    rc = auxseg_main(["finetune", str(TINY_YAML), f"data_root={synthetic_root}", f"work_dir={work}",
                      "targets.kind=prior_folder"])
    assert rc == 2 and "targets.folder" in capsys.readouterr().err


def test_label_targets_with_rq_use_one_hot_priors_and_no_test_prior(synthetic_root, tmp_path):
    from auxseg.config import load_config
    from finetune.config import FinetuneConfig, resolve_paths
    from finetune.mmseg_config import load_mmseg_config
    from finetune.priors import configure_targets
    from finetune.run import apply_overrides

    cfg = load_config(FinetuneConfig, TINY_YAML, [f"data_root={synthetic_root}", "loss.name=rq",
                                                   f"work_dir={tmp_path}"])
    mmcfg = load_mmseg_config(cfg.mmseg_config)
    apply_overrides(cfg, mmcfg, resolve_paths(cfg))
    info = configure_targets(cfg, mmcfg, [], resolve_paths(cfg))
    steps = {s["type"]: s for s in mmcfg.train_dataloader.dataset.pipeline}
    assert steps["LoadPrior"]["kind"] == "labels" and "PackSegInputsWithPrior" in steps
    assert mmcfg.val_evaluator.type == "PerClassIoUMetric" and info["val_prior"] is None  # the labels are no test prior
    assert [s["type"] for s in mmcfg.val_dataloader.dataset.pipeline][-1] == "PackSegInputs"
    # plain labels with cross-entropy change nothing
    cfg = load_config(FinetuneConfig, TINY_YAML, [f"data_root={synthetic_root}"])
    mmcfg = load_mmseg_config(cfg.mmseg_config)
    before = mmcfg.pretty_text
    assert configure_targets(cfg, mmcfg, [], resolve_paths(cfg)) is None and mmcfg.pretty_text == before


@pytest.mark.slow
def test_cli_qr_from_a_segmenter_checkpoint(tmp_path, synthetic_root):
    common = ["finetune", str(TINY_YAML), f"data_root={synthetic_root}", "max_iters=2", "val_interval=2",
              "checkpoint_interval=2", "tensorboard=false", "targets.kind=coarse", "targets.factor=8"]
    assert auxseg_main(common + [f"work_dir={tmp_path / 'segmenter'}"]) == 0  # ce on the argmax prior
    assert auxseg_main(common + [f"work_dir={tmp_path / 'qr'}", "loss.name=qr", "init.type=mmseg",
                                 f"init.checkpoint={tmp_path / 'segmenter' / 'iter_2.pth'}"]) == 0
    results = json.loads((tmp_path / "qr" / "results.json").read_text())
    assert results["init"]["type"] == "mmseg" and results["init"]["verified_tensors"] > 100


@pytest.mark.slow
def test_cli_rq_with_a_decoder_export_verifies_the_prior_head(tmp_path, synthetic_root):
    from pretrain.export import export_decoder
    from pretrain.model import ASPP

    torch.manual_seed(5)
    path = export_decoder(ASPP(512, 16), tmp_path, config={}, iteration=1, auxlabels_sha256=None,
                          auxlabels_manifest=None)  # the tiny preset's decode head has 16 channels
    assert auxseg_main(["finetune", str(TINY_YAML), f"data_root={synthetic_root}", f"work_dir={tmp_path / 'w'}",
                        "max_iters=2", "val_interval=2", "checkpoint_interval=2", "tensorboard=false",
                        "targets.kind=coarse", "targets.factor=8", "loss.name=rq", f"init.decoder={path}"]) == 0
    report = json.loads((tmp_path / "w" / "init_report.json").read_text())
    assert report["verified_decoder_tensors"] == report["decoder_tensors"] == 36  # PriorASPPHead, loss buffers aside
