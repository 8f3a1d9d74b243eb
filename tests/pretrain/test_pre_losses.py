"""Pure loss functions: a hand-computed InfoNCE value, the lean InfoNCE against the former dense one,
balanced sampling, targets per label mode."""

from __future__ import annotations

import math

import pytest
import torch
from pre_helpers import loss_grad_stats, unit_features

from pretrain.losses import (
    LabelIds,
    PixelTargets,
    TargetMaps,
    _infonce_dense_reference,
    nearest_to_grid,
    sample_balanced,
    supervised_infonce,
    targets_at_features,
)


def test_infonce_matches_hand_computed_value():
    # three unit vectors in 2-D, ids [0, 0, 1], temperature 0.5
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    ids = torch.tensor([0, 0, 1])
    t = 0.5
    # anchor 0: sims to 1, 2 = 0, -1 -> -log(e^0 / (e^0 + e^-2)); anchor 1: sims to 0, 2 = 0, 0 -> -log(1/2);
    # anchor 2 has no positive and does not count
    l0 = -math.log(1.0 / (1.0 + math.exp(-1.0 / t)))
    l1 = -math.log(0.5)
    loss, stats = supervised_infonce(feats, PixelTargets(ids), temperature=t)
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    assert stats == {"anchors": 2, "positives_per_anchor": 1.0, "loss_chance": pytest.approx(math.log(2)),
                     "loss_floor": 0.0}


def test_infonce_averages_over_all_positives():
    feats = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    ids = torch.tensor([0, 0, 0, 1, 1, 2])
    loss, stats = supervised_infonce(feats, PixelTargets(ids), temperature=0.1)
    sim = feats @ feats.t() / 0.1
    expected = []
    for i in range(5):
        others = [j for j in range(6) if j != i]
        denom = torch.logsumexp(sim[i, others], 0)
        pos = [j for j in others if ids[j] == ids[i]]
        expected.append(-torch.stack([sim[i, p] - denom for p in pos]).mean())
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    assert stats["positives_per_anchor"] == pytest.approx((2 * 3 + 1 * 2) / 5)
    assert stats["loss_chance"] == pytest.approx(math.log(5))
    assert stats["loss_floor"] == pytest.approx((3 * math.log(2) + 2 * math.log(1)) / 5)
    # the reference levels bracket the loss: equal similarities give chance, separated groups approach the floor
    same = torch.nn.functional.normalize(torch.ones(6, 4), dim=1)
    assert supervised_infonce(same, PixelTargets(ids), temperature=0.1)[0].item() == pytest.approx(math.log(5), rel=1e-5)
    apart = torch.eye(4)[[0, 0, 0, 1, 1, 2]]
    tight = supervised_infonce(apart, PixelTargets(ids), temperature=0.01)[0].item()
    assert tight == pytest.approx(stats["loss_floor"], abs=1e-4)


def test_infonce_gradient_pulls_positives_together():
    feats = torch.nn.functional.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    feats.requires_grad_(True)
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    loss, _ = supervised_infonce(feats, PixelTargets(ids), temperature=0.1)
    loss.backward()
    moved = torch.nn.functional.normalize(feats - 0.5 * feats.grad, dim=1)
    after, _ = supervised_infonce(moved, PixelTargets(ids), temperature=0.1)
    assert after.item() < loss.item()


def test_infonce_without_any_positive_is_a_connected_zero():
    feats = torch.eye(3, requires_grad=True)
    loss, stats = supervised_infonce(feats, PixelTargets(torch.tensor([0, 1, 2])))
    assert loss.item() == 0.0 and stats["anchors"] == 0
    loss.backward()  # the graph exists, so DDP still reduces gradients on such a step
    assert torch.equal(feats.grad, torch.zeros(3, 3))
    empty, _ = supervised_infonce(torch.zeros(0, 4), PixelTargets(torch.zeros(0, dtype=torch.long)))
    assert empty.item() == 0.0


def test_sample_balanced_respects_budget_ignore_and_balance():
    # label 0 is 10x more frequent than label 1; label 2 has a single pixel (no positive possible)
    ids = torch.cat([torch.zeros(1000), torch.ones(100), torch.tensor([2]), torch.full((500,), -1)]).long()
    g = torch.Generator().manual_seed(0)
    sel = sample_balanced(ids, budget=64, min_per_label=2, generator=g)
    assert sel.numel() <= 64
    picked = ids[sel]
    assert (picked >= 0).all() and (picked != 2).all()
    assert (picked == 0).sum() == 32 and (picked == 1).sum() == 32  # balanced, not proportional
    assert sel.unique().numel() == sel.numel()  # without replacement
    again = sample_balanced(ids, budget=64, min_per_label=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sel, again)


def test_sample_balanced_with_more_ids_than_budget_keeps_pairs():
    ids = torch.arange(1000).repeat_interleave(2)  # 1000 ids with two pixels each (baseline #1)
    sel = sample_balanced(ids, budget=100, min_per_label=2, generator=torch.Generator().manual_seed(0))
    _, counts = ids[sel].unique(return_counts=True)
    assert sel.numel() == 100 and (counts == 2).all()


def test_nearest_to_grid_takes_cell_centres():
    maps = torch.arange(16).view(1, 1, 4, 4)
    assert nearest_to_grid(maps, 2, 2).flatten().tolist() == [5, 7, 13, 15]


def test_targets_per_mode():
    label = torch.tensor([[[[0, 1], [255, 1]], [[1, 1], [0, 255]]]])  # [B=1, V=2, 2, 2]
    coords = torch.tensor([[[[0, 1], [-1, 3]], [[3, 1], [0, -1]]]])  # original 2x2 image, W=2
    maps = TargetMaps(label, coords, torch.tensor([5]), torch.tensor([2]))
    aux = targets_at_features("aux", maps, LabelIds(3, 255, per_image=False), h=2, w=2)
    assert aux.tolist() == [[[[0, 1], [-1, 1]], [[1, 1], [0, -1]]]]
    per_image = targets_at_features("superpixel", maps, LabelIds(3, 255, per_image=True), h=2, w=2)
    assert per_image.tolist() == [[[[15, 16], [-1, 16]], [[16, 16], [15, -1]]]]
    pix = targets_at_features("pixel", maps, LabelIds(3, 255, per_image=False), h=2, w=2, pixel_cell=1)
    # the same original pixel gets the same id in both views, padding is ignored
    assert pix[0, 0, 0, 0] == pix[0, 1, 1, 0] and pix[0, 0, 1, 1] == pix[0, 1, 0, 0]
    assert pix[0, 0, 1, 0] == -1 and pix[0, 1, 1, 1] == -1
    assert pix[0, 0, 0, 0] != pix[0, 0, 0, 1]


# ----------------------------------------------------------------------------- lean InfoNCE vs the dense reference


_unit, _loss_grad_stats = unit_features, loss_grad_stats


@pytest.mark.parametrize("n, labels, seed", [(40, 5, 0), (97, 17, 1), (64, 50, 2), (200, 3, 3)])
def test_infonce_matches_dense_reference_float64(n, labels, seed):
    # random ids with repeats; with 50 labels over 64 pixels many ids are singletons (no positive)
    ids = torch.randint(0, labels, (n,), generator=torch.Generator().manual_seed(100 + seed))
    feats = _unit(n, 16, seed)
    loss, grad, stats = _loss_grad_stats(supervised_infonce, feats, ids)
    ref_loss, ref_grad, ref_stats = _loss_grad_stats(_infonce_dense_reference, feats, ids)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - ref_loss.item()) < 1e-9
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-9)
    assert stats == ref_stats


def test_infonce_matches_dense_reference_float32():
    ids = (torch.arange(1024) % 17)[torch.randperm(1024, generator=torch.Generator().manual_seed(0))]
    feats = _unit(1024, 128, 0, dtype=torch.float32)
    loss, grad, stats = _loss_grad_stats(supervised_infonce, feats, ids)
    ref_loss, ref_grad, ref_stats = _loss_grad_stats(_infonce_dense_reference, feats, ids)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)
    assert stats == ref_stats


def test_infonce_edge_cases_match_dense_reference():
    cases = {
        "singletons excluded": torch.tensor([0, 0, 1, 2, 2, 2, 3, 4]),  # ids 1, 3, 4 have no positive
        "all singletons": torch.tensor([0, 1, 2, 3]),  # the zero loss with a graph
        "N=2 positive pair": torch.tensor([7, 7]),
        "N=2 no positive": torch.tensor([7, 8]),
        "one id": torch.zeros(5, dtype=torch.long),
    }
    for name, ids in cases.items():
        feats = _unit(ids.numel(), 3, 0)
        loss, grad, stats = _loss_grad_stats(supervised_infonce, feats, ids)
        ref_loss, ref_grad, ref_stats = _loss_grad_stats(_infonce_dense_reference, feats, ids)
        assert abs(loss.item() - ref_loss.item()) < 1e-9, name
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-9, msg=name)
        assert stats == ref_stats, name
    feats = _unit(8, 3, 0)
    _, stats = supervised_infonce(feats, PixelTargets(cases["singletons excluded"]))
    assert stats["anchors"] == 5 and stats["positives_per_anchor"] == pytest.approx((2 * 1 + 3 * 2) / 5)


def test_infonce_gradcheck_float64():
    ids = torch.tensor([0, 0, 1, 1, 1, 2, 3])  # two singletons, whose rows are skipped but stay negatives
    feats = _unit(7, 4, 5)
    assert torch.autograd.gradcheck(lambda f: supervised_infonce(f, PixelTargets(ids), temperature=0.5)[0], (feats,))
    pair = _unit(2, 4, 6)
    assert torch.autograd.gradcheck(lambda f: supervised_infonce(f, PixelTargets(torch.tensor([1, 1])))[0], (pair,))


def test_infonce_keeps_saved_logits_for_a_second_backward():
    # the hand-written backward must not consume what it saved: retain_graph gives the same gradient twice
    feats = _unit(12, 4, 7)
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4])
    loss, _ = supervised_infonce(feats, PixelTargets(ids))
    (first,) = torch.autograd.grad(loss, feats, retain_graph=True)
    (second,) = torch.autograd.grad(loss, feats)
    assert torch.equal(first, second)


def test_infonce_is_fp32_under_autocast():
    # the training step calls the loss inside autocast; the pairwise work stays fp32 as the docstring says
    feats = _unit(64, 8, 8, dtype=torch.float32)
    ids = torch.arange(64) % 5
    loss, grad, _ = _loss_grad_stats(supervised_infonce, feats, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp_loss, amp_grad, _ = _loss_grad_stats(supervised_infonce, feats, ids)
    assert amp_loss.dtype == torch.float32 and amp_grad.dtype == torch.float32
    torch.testing.assert_close(amp_loss, loss)
    torch.testing.assert_close(amp_grad, grad)
