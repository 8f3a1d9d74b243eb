"""metric_l2 (semantic soft segmentation's L2 metric loss): hand-computed values of both forms, the sampler,
the objective on a tiny feature map, gradients, determinism, and a tiny pre-training through the CLI."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from pretrain.metric_l2 import metric_l2_loss, metric_terms, pairwise_sq_dists, sample_instances
from pretrain.objectives import OBJECTIVES, StepBatch
from pretrain.objectives.metric_l2 import MetricL2Config

# three points: 0 and 1 share a label, 2 differs; |f0-f1| = 5, |f0-f2| = 1, |f1-f2| = sqrt(18)
F3 = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]], dtype=torch.float64)
IDS3 = torch.tensor([0, 0, 1])


def test_matrix_form_gives_the_squared_distances():
    want = torch.tensor([[0.0, 25.0, 1.0], [25.0, 0.0, 18.0], [1.0, 18.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(pairwise_sq_dists(F3), want)


def test_printed_form_by_hand():
    # d = L2 / scale; ordered pairs p != q: (0,1),(1,0) positive; (0,2),(2,0),(1,2),(2,1) negative
    pos = math.log((1 + math.exp(5.0)) / 2)
    neg = math.log(1 + math.exp(-1.0) / 2) + math.log(1 + math.exp(-math.sqrt(18.0)) / 2)
    loss, stats = metric_l2_loss(F3, IDS3, form="printed", scale=1.0)
    assert loss.item() == pytest.approx((2 * pos + 2 * neg) / 6, rel=1e-12)
    assert stats["pos_dist"] == pytest.approx(5.0) and stats["neg_dist"] == pytest.approx((1 + math.sqrt(18)) / 2)
    # default scale: the feature dimension D = 2
    pos2 = math.log((1 + math.exp(2.5)) / 2)
    neg2 = math.log(1 + math.exp(-0.5) / 2) + math.log(1 + math.exp(-math.sqrt(18.0) / 2) / 2)
    assert metric_l2_loss(F3, IDS3)[0].item() == pytest.approx((2 * pos2 + 2 * neg2) / 6, rel=1e-12)


def test_code_form_by_hand():
    # d = squared L2 / scale, s = 2 / (1 + e^d); positive -log s weighted 3, negative -log(1 - s)
    def s(d):
        return 2 / (1 + math.exp(d))

    pos = -math.log(s(25.0))
    neg = -math.log(1 - s(1.0)) - math.log(1 - s(18.0))
    loss, stats = metric_l2_loss(F3, IDS3, form="code", scale=1.0)
    assert loss.item() == pytest.approx((2 * 3 * pos + 2 * neg) / 6, rel=1e-12)
    assert stats["pos_dist"] == pytest.approx(25.0) and stats["neg_dist"] == pytest.approx(9.5)
    # default scale 64 and the identity -log(1 - s) = -log tanh(d / 2)
    d = 18.0 / 64
    assert -math.log(1 - s(d)) == pytest.approx(-math.log(math.tanh(d / 2)), rel=1e-12)
    pos64 = -math.log(s(25 / 64))
    neg64 = -math.log(math.tanh(1 / 128)) - math.log(math.tanh(18 / 128))
    assert metric_l2_loss(F3, IDS3, form="code")[0].item() == pytest.approx((6 * pos64 + 2 * neg64) / 6, rel=1e-12)


def test_terms_are_stable_at_the_extremes():
    d = torch.tensor([0.0, 1e-9, 50.0, 800.0], dtype=torch.float64)
    pos, neg_printed = metric_terms(d, "printed")
    _, neg_code = metric_terms(d, "code")
    assert torch.isfinite(pos).all() and pos[0] == 0 and pos[3] == pytest.approx(800 - math.log(2))
    assert neg_printed[0] == pytest.approx(math.log(1.5)) and neg_printed[3] == 0
    assert torch.isfinite(neg_code).all() and neg_code[0] == pytest.approx(-math.log(1e-12) + math.log(2))
    assert neg_code[1] == pytest.approx(-math.log(math.tanh(5e-10)), rel=1e-6) and neg_code[3] == 0


def test_groups_restrict_pairs_to_one_image():
    # points 0, 1 in image 0 and 2 alone in image 1: only the pair (0, 1) is left, positive
    loss, stats = metric_l2_loss(F3, IDS3, form="printed", scale=1.0, groups=torch.tensor([0, 0, 1]))
    assert loss.item() == pytest.approx(math.log((1 + math.exp(5.0)) / 2), rel=1e-12)
    assert stats["pairs"] == 2 and math.isnan(stats["neg_dist"])


def test_identical_features_give_finite_gradients():
    f = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    for form in ("printed", "code"):
        f.grad = None
        metric_l2_loss(f, torch.tensor([0, 1, 1]), form=form)[0].backward()
        assert torch.isfinite(f.grad).all()


def test_sampler_balances_labels_and_skips_images_with_one_label():
    ids = torch.tensor([
        [0, 0, 0, 0, 1, 1, 1, 2, 2, -1, 3, 3],  # labels 0..3 (3 has 2 pixels), one ignored pixel
        [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 6, -1],  # label 6 has 1 pixel: not eligible, so one label: skipped
    ])
    sel, skipped = sample_instances(ids, 3, 2, torch.Generator().manual_seed(0))
    assert skipped == 1 and len(sel) == 6 and (sel < 12).all()
    labels = ids.reshape(-1)[sel]
    assert len(set(labels.tolist())) == 3 and all(int((labels == v).sum()) == 2 for v in set(labels.tolist()))
    # the draw is a function of the generator's seed alone
    again, _ = sample_instances(ids, 3, 2, torch.Generator().manual_seed(0))
    assert torch.equal(sel, again)
    others = {tuple(sample_instances(ids, 3, 2, torch.Generator().manual_seed(s))[0].tolist()) for s in range(8)}
    assert len(others) > 1


def _objective(**kw):
    cfg = MetricL2Config(**kw)
    return OBJECTIVES["metric_l2"](cfg, in_channels=3)


def _batch(labels: torch.Tensor, seed: int = 0) -> StepBatch:
    """A batch whose label maps are already at feature resolution ([b, 2, h, w], S = h)."""
    b = labels.shape[0]
    folder = SimpleNamespace(num_labels=3, ignore_index=255, scope="global")
    return StepBatch(label=labels, coords=torch.zeros_like(labels), index=torch.arange(b),
                     size=torch.tensor([[2, 2]] * b), folder=folder, iteration=0,
                     generator=torch.Generator().manual_seed(seed))


def test_objective_by_hand_on_a_tiny_feature_map():
    # one image, two views of 1 x 2 pixels: labels (0, 1) and (0, 2); every pixel is drawn (min_pixels=1)
    labels = torch.tensor([[[[0, 1]], [[0, 2]]]])  # [1, 2, 1, 2]
    feats = torch.tensor([[[[0.0, 3.0]], [[0.0, 4.0]], [[0.0, 0.0]]],  # view 0: f = (0,0,0), (3,4,0)
                          [[[1.0, 0.0]], [[0.0, 0.0]], [[0.0, 2.0]]]], dtype=torch.float64)  # view 1: (1,0,0), (0,0,2)
    rows = {(0, 0, 0): 0, (3, 4, 0): 1, (1, 0, 0): 0, (0, 0, 2): 2}  # feature -> label
    pts = [torch.tensor(p, dtype=torch.float64) for p in rows]
    lab = list(rows.values())
    terms = []
    for i in range(4):
        for j in range(4):
            if i != j:
                d = float((pts[i] - pts[j]).norm()) / 3  # printed form, scale = D = 3
                terms.append(math.log((1 + math.exp(d)) / 2) if lab[i] == lab[j] else math.log(1 + math.exp(-d) / 2))
    want = sum(terms) / 12
    obj = _objective(head_dim=None, repeats=2, pixels_per_label=10, min_pixels=1).double()
    loss, stats = obj(feats, _batch(labels))
    assert loss.item() == pytest.approx(want, rel=1e-6)  # the objective computes the loss in fp32
    assert stats["pos_dist"] == pytest.approx(1 / 3) and stats["pixels"] == 4 and stats["images_skipped"] == 0
    # by default a label needs 2 pixels: labels 1 and 2 are not eligible, so the image is skipped
    loss, stats = _objective(head_dim=None).double()(feats, _batch(labels))
    assert loss.item() == 0 and stats["images_skipped"] == 1 and stats["pixels"] == 0
    # per image: with one image in the batch the pairs are the same
    per = _objective(head_dim=None, positives="per_image", repeats=1, pixels_per_label=10, min_pixels=1).double()
    assert per(feats, _batch(labels))[0].item() == pytest.approx(want, rel=1e-6)


def test_positives_across_images_pair_two_images_and_per_image_does_not():
    labels = torch.tensor([[[[0, 1]], [[0, 1]]], [[[0, 2]], [[0, 2]]]])  # [2, 2, 1, 2]
    feats = torch.randn(4, 3, 1, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    across = _objective(head_dim=None, repeats=1, pixels_per_label=10).double()(feats, _batch(labels))
    per = _objective(head_dim=None, repeats=1, pixels_per_label=10, positives="per_image").double()(feats, _batch(labels))
    assert across[1]["pairs"] == 8 * 7 and per[1]["pairs"] == 2 * 4 * 3
    assert across[0].item() != pytest.approx(per[0].item())


def test_every_parameter_gets_a_gradient_and_the_step_is_deterministic():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 6, 3, padding=1)
    labels = torch.randint(0, 3, (2, 2, 4, 4))
    x = torch.randn(4, 3, 4, 4)
    for form, positives in (("printed", "across_images"), ("code", "per_image")):
        obj = OBJECTIVES["metric_l2"](MetricL2Config(form=form, positives=positives, head_dim=8, head_hidden=16,
                                                     pixels_per_label=5, repeats=3), in_channels=6)
        net.zero_grad()
        loss, stats = obj(net(x), _batch(labels, seed=7))
        loss.backward()
        params = list(net.parameters()) + list(obj.parameters())
        assert len(list(obj.parameters())) == 4 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        assert math.isfinite(loss.item()) and stats["neg_dist"] > 0
        again, _ = obj(net(x), _batch(labels, seed=7))
        assert again.item() == loss.item()
        other, _ = obj(net(x), _batch(labels, seed=8))
        assert other.item() != loss.item()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="labels_per_image"):
        MetricL2Config(labels_per_image=1)
    with pytest.raises(ValueError, match="scale"):
        MetricL2Config(scale=0.0)


def test_tiny_pretraining_trains_then_resumes_through_the_cli_and_exports(gt_label_folder, tmp_path, tiny_config,
                                                                          repo_dir):
    from auxseg.checkpoint_io import load_checkpoint
    from loop.cli import main as auxseg_main
    from pretrain.train import run

    out = tmp_path / "run"
    overrides = ["loss.name=metric_l2", "loss.metric_l2.pixels_per_label=20", "loss.metric_l2.repeats=2",
                 "loss.metric_l2.head_dim=16", "loss.metric_l2.head_hidden=32", "train.log_every=1",
                 "train.max_iters=4", "train.checkpoint_every=2"]
    run(tiny_config(out, gt_label_folder, *overrides, "train.stop_at=2"))  # in-process: iterations 1-2
    assert not (out / "backbone_mmseg.pth").exists()
    # `auxseg pretrain CONFIG key=value ...` (in-process: the same parser and error handling as the command)
    code = auxseg_main(["pretrain", str(repo_dir / "configs/pretrain/tiny.yaml"), f"out_dir={out}", "data.source=folder",
                        f"data.labels={gt_label_folder}", "augment.crop=[40,48]", "augment.out_size=48",
                        "train.progress=false", "train.tensorboard=false", *overrides])
    assert code == 0  # resumed at iteration 2, trained to 4 and exported
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["neg_dist"] > 0 and r["pixels"] > 0 for r in log)
    ckpt = load_checkpoint(out / "checkpoints" / "iter_0000004.pth")
    assert ckpt["model"]["objective.head.proj.2.weight"].shape[0] == 16
    assert ckpt["config"]["loss"]["name"] == "metric_l2"
    first = load_checkpoint(out / "checkpoints" / "iter_0000002.pth")
    assert not torch.equal(first["model"]["objective.head.proj.2.weight"], ckpt["model"]["objective.head.proj.2.weight"])
    export = load_checkpoint(out / "backbone_mmseg.pth")
    assert export["meta"]["iteration"] == 4 and not any(k.startswith("objective.") for k in export["state_dict"])


def _ddp_worker(rank: int, world: int, port: int, cfg) -> None:
    import os

    from pretrain.train import run

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    run(cfg)


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(gt_label_folder, tmp_path, tiny_config):
    """Every process draws the same global sample and computes the same loss: 2 processes == 1 process."""
    import socket

    import torch.multiprocessing as mp

    from pretrain.train import run

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["loss.name=metric_l2", "loss.metric_l2.pixels_per_label=20", "loss.metric_l2.repeats=2",
              "loss.metric_l2.head_dim=16", "loss.metric_l2.head_hidden=32", "data.batch_size=4",
              "train.max_iters=3", "train.log_every=1", "model.norm=frozen", "optim.warmup_iters=0",
              "train.checkpoint_every=0"]
    run(tiny_config(tmp_path / "one", gt_label_folder, *common))
    mp.spawn(_ddp_worker, args=(2, port, tiny_config(tmp_path / "two", gt_label_folder, *common)), nprocs=2,
             join=True)
    loss_one = [json.loads(x)["loss"] for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    loss_two = [json.loads(x)["loss"] for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert len(loss_one) == 3 and loss_two == pytest.approx(loss_one, rel=1e-4)
