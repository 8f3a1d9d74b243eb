"""The math of the consistency fine-tune (finetune.consistency_losses) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from finetune.consistency_losses import (
    LossWeights,
    cutmix,
    pseudo_label_counts,
    pseudo_label_stats,
    pseudo_labels,
    unlabelled_ce,
    unlabelled_terms,
)


def _logits() -> torch.Tensor:
    """One image, 2 classes, 1 x 3 pixels with softmax (0.25, 0.75), (0.9, 0.1), (0.5, 0.5)."""
    return torch.tensor([[[[0.0, math.log(9.0), 0.0]], [[math.log(3.0), 0.0, 0.0]]]])  # [1, 2, 1, 3]


def test_pseudo_labels_are_the_softmax_maximum_and_its_class():
    conf, label = pseudo_labels(_logits())
    torch.testing.assert_close(conf, torch.tensor([[[0.75, 0.9, 0.5]]]))
    assert label.tolist() == [[[1, 0, 0]]]  # a tie goes to the first class, as torch.max


def test_the_threshold_keeps_confident_valid_pixels_and_divides_by_all_valid_ones():
    logits = _logits()
    target = torch.tensor([[[1, 0, 0]]])
    conf = torch.tensor([[[0.96, 0.5, 0.99]]])
    valid = torch.tensor([[[True, True, False]]])  # the third pixel is padding: never counted
    # threshold 0.95: only pixel 0 (CE = -log 0.75) in the sum, both valid pixels in the denominator
    assert unlabelled_ce(logits, target, conf, valid, 0.95).item() == pytest.approx(math.log(4 / 3) / 2)
    # threshold 0.5 (>=): pixels 0 and 1 (CE = -log 0.9)
    assert unlabelled_ce(logits, target, conf, valid, 0.5).item() == pytest.approx((math.log(4 / 3) - math.log(0.9)) / 2)
    # nothing confident: 0, and the gradient is all zero rather than NaN
    x = logits.clone().requires_grad_(True)
    loss = unlabelled_ce(x, target, conf, valid, 1.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(x.grad) == 0


def test_cutmix_takes_the_partner_inside_the_box_for_maps_and_images():
    own, partner = torch.zeros(1, 2, 3, dtype=torch.long), torch.ones(1, 2, 3, dtype=torch.long)
    box = torch.tensor([[[False, True, True], [False, False, True]]])
    assert cutmix(own, partner, box).tolist() == [[[0, 1, 1], [0, 0, 1]]]
    images = cutmix(torch.zeros(1, 3, 2, 3), torch.full((1, 3, 2, 3), 7.0), box)  # [B, C, H, W]: every channel
    assert images[0, :, 1, 2].tolist() == [7.0, 7.0, 7.0] and images[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_unimatch_weights_are_the_published_ones():
    """UniMatch's unimatch.py: (loss_x + 0.25 s1 + 0.25 s2 + 0.5 fp) / 2; fixmatch.py: (loss_x + s) / 2."""
    s1, s2, fp = torch.tensor(0.8), torch.tensor(0.4), torch.tensor(0.6)
    uni = unlabelled_terms([s1, s2], fp, LossWeights(0.5, 0.5, 0.5))
    assert uni["loss_u_strong"].item() == pytest.approx(0.125 * 0.8 + 0.125 * 0.4)
    assert uni["loss_u_fp"].item() == pytest.approx(0.25 * 0.6)
    fix = unlabelled_terms([s1], None, LossWeights(0.5, 0.5, 0.0))
    assert set(fix) == {"loss_u_strong"} and fix["loss_u_strong"].item() == pytest.approx(0.4)


def test_mask_ratio_and_pseudo_label_accuracy_from_pixel_counts():
    conf = torch.tensor([[[0.99, 0.97, 0.50, 0.99], [0.20, 0.96, 0.99, 0.10]]])
    label = torch.tensor([[[1, 2, 3, 0], [1, 1, 4, 0]]])
    gt = torch.tensor([[[1, 0, 3, 255], [1, 1, 4, 255]]])  # 255: no ground truth there
    valid = torch.tensor([[[True, True, True, True], [True, True, False, True]]])  # (1, 2) is padding
    counts = pseudo_label_counts(conf, label, valid, gt, 0.95)
    # valid 7; confident & valid: (0,0) (0,1) (0,3) (1,1) = 4; of those with gt: (0,0) (0,1) (1,1), right: 2;
    # with gt: (0,0) (0,1) (0,2) (1,0) (1,1) = 5, right: all but (0,1) = 4
    assert counts.tolist() == [7, 4, 3, 2, 5, 4]
    stats = pseudo_label_stats(counts)
    assert stats["mask_ratio"].item() == pytest.approx(4 / 7)
    assert stats["pseudo_acc"].item() == pytest.approx(2 / 3)
    assert stats["pseudo_acc_all"].item() == pytest.approx(4 / 5)
    # no ground truth anywhere (an unlabelled folder): no accuracy is logged, the mask ratio is
    none = pseudo_label_stats(pseudo_label_counts(conf, label, valid, torch.full_like(gt, 255), 0.95))
    assert set(none) == {"mask_ratio"}
