"""Blockwise supervised InfoNCE: the same loss, stats and gradients as the lean form and the float64 dense
reference for any block size (blocks that do not divide N, singleton ids), the objective's ``all_pixels`` and
``block_size`` settings (ignored pixels left out), and two gloo processes against one."""

from __future__ import annotations

import math
import types

import pytest
import torch
from gloo_workers import run_gloo
from pre_helpers import loss_grad_stats, unit_features

from pretrain.losses import (
    BLOCK_BYTES,
    PixelTargets,
    _infonce_dense_reference,
    blockwise_supervised_infonce,
    infonce_block_rows,
    supervised_infonce,
)
from pretrain.objectives.base import StepBatch
from pretrain.objectives.infonce import InfoNCE, InfoNCEConfig

_unit, _loss_grad_stats = unit_features, loss_grad_stats


def _blockwise(block: int):
    return lambda f, targets, temperature: blockwise_supervised_infonce(f, targets, temperature, block_size=block)


def test_blockwise_matches_hand_computed_value():
    # the three unit vectors of test_pre_losses: ids [0, 0, 1], t = 0.5; anchor 2 has no positive
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    t = 0.5
    l0 = -math.log(1.0 / (1.0 + math.exp(-1.0 / t)))  # sims to 1, 2: 0, -1
    l1 = -math.log(0.5)  # sims to 0, 2: 0, 0
    for block in (1, 2, 5):
        loss, stats = blockwise_supervised_infonce(feats, PixelTargets(torch.tensor([0, 0, 1])), t, block_size=block)
        assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6), block
        assert stats == {"anchors": 2, "positives_per_anchor": 1.0, "loss_chance": pytest.approx(math.log(2)),
                         "loss_floor": 0.0}


@pytest.mark.parametrize("n, labels, seed", [(40, 5, 0), (97, 17, 1), (64, 50, 2), (200, 3, 3)])
@pytest.mark.parametrize("block", [1, 7, 32, 1000])
def test_blockwise_matches_lean_and_dense_reference_float64(n, labels, seed, block):
    # random ids with repeats; with 50 labels over 64 pixels many ids are singletons (negatives, not anchors);
    # blocks of 7 and 32 do not divide N (or the number of anchors), 1000 is one block
    ids = torch.randint(0, labels, (n,), generator=torch.Generator().manual_seed(100 + seed))
    feats = _unit(n, 16, seed)
    loss, grad, stats = _loss_grad_stats(_blockwise(block), feats, ids)
    ref_loss, ref_grad, ref_stats = _loss_grad_stats(_infonce_dense_reference, feats, ids)
    lean_loss, lean_grad, lean_stats = _loss_grad_stats(supervised_infonce, feats, ids)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - ref_loss.item()) < 1e-9 and abs(loss.item() - lean_loss.item()) < 1e-9
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-9)
    torch.testing.assert_close(grad, lean_grad, rtol=0, atol=1e-9)
    assert stats == ref_stats == lean_stats


def test_blockwise_matches_lean_and_dense_reference_float32():
    ids = (torch.arange(1024) % 17)[torch.randperm(1024, generator=torch.Generator().manual_seed(0))]
    ids[:40] = torch.arange(1000, 1040)  # 40 singletons
    feats = _unit(1024, 128, 0, dtype=torch.float32)
    loss, grad, stats = _loss_grad_stats(_blockwise(100), feats, ids)  # 100 does not divide 984 anchors
    lean_loss, lean_grad, lean_stats = _loss_grad_stats(supervised_infonce, feats, ids)
    ref_loss, ref_grad, ref_stats = _loss_grad_stats(_infonce_dense_reference, feats.double(), ids)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(lean_loss.item(), rel=1e-5)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    torch.testing.assert_close(grad, lean_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, ref_grad.float(), rtol=1e-5, atol=1e-7)
    assert stats == lean_stats == ref_stats


def test_blockwise_edge_cases_match_dense_reference():
    cases = {
        "singletons excluded": torch.tensor([0, 0, 1, 2, 2, 2, 3, 4]),
        "all singletons": torch.tensor([0, 1, 2, 3]),  # the zero loss with a graph
        "N=2 positive pair": torch.tensor([7, 7]),
        "one id": torch.zeros(5, dtype=torch.long),
    }
    for name, ids in cases.items():
        for block in (1, 3):
            feats = _unit(ids.numel(), 3, 0)
            loss, grad, stats = _loss_grad_stats(_blockwise(block), feats, ids)
            ref_loss, ref_grad, ref_stats = _loss_grad_stats(_infonce_dense_reference, feats, ids)
            assert abs(loss.item() - ref_loss.item()) < 1e-9, name
            torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-9, msg=name)
            assert stats == ref_stats, name
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        blockwise_supervised_infonce(_unit(4, 3, 0), PixelTargets(torch.zeros(4, dtype=torch.long)), block_size=0)


def test_blockwise_gradcheck_second_backward_and_autocast():
    ids = torch.tensor([0, 0, 1, 1, 1, 2, 3])  # two singletons
    feats = _unit(7, 4, 5)
    assert torch.autograd.gradcheck(
        lambda f: blockwise_supervised_infonce(f, PixelTargets(ids), 0.5, block_size=2)[0], (feats,))
    # the backward recomputes from what it saved and consumes nothing: retain_graph gives the same gradient twice
    loss, _ = blockwise_supervised_infonce(feats, PixelTargets(ids), block_size=3)
    (first,) = torch.autograd.grad(loss, feats, retain_graph=True)
    (second,) = torch.autograd.grad(loss, feats)
    assert torch.equal(first, second)
    # fp32 inside bf16 autocast, as the lean form
    f32 = _unit(64, 8, 8, dtype=torch.float32)
    ids = torch.arange(64) % 5
    plain_loss, plain_grad, _ = _loss_grad_stats(_blockwise(10), f32, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp_loss, amp_grad, _ = _loss_grad_stats(_blockwise(10), f32, ids)
    assert amp_loss.dtype == torch.float32 and amp_grad.dtype == torch.float32
    torch.testing.assert_close(amp_loss, plain_loss)
    torch.testing.assert_close(amp_grad, plain_grad)


def test_block_rows_auto_depends_on_n_only():
    assert infonce_block_rows(100, block_size=7) == 7
    # auto: one [rows, N] fp32 block within BLOCK_BYTES (64 MiB), the lean single pass up to N = 4096
    assert BLOCK_BYTES == 64 << 20
    assert infonce_block_rows(2048) >= 2048 and infonce_block_rows(4096) == 4096
    assert infonce_block_rows(8192) == 2048 and infonce_block_rows(65536) == 256
    assert infonce_block_rows(10**7) == 64  # never below 64 rows
    assert infonce_block_rows(0) == 1


# ----------------------------------------------------------------------------- the objective


K = 4


def _folder():
    return types.SimpleNamespace(num_labels=K, ignore_index=255, scope="global", has_priors=False, root="tiny",
                                 manifest_path="tiny/manifest.json")


def _batch(label: torch.Tensor) -> StepBatch:
    b = label.shape[0]
    return StepBatch(label=label, coords=torch.zeros_like(label), index=torch.arange(b),
                     size=torch.full((b, 2), label.shape[-1], dtype=torch.long), folder=_folder(), iteration=0,
                     generator=torch.Generator().manual_seed(0))


def _data():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(4, 6, 5, 5, generator=g)  # [b*2, C, h, w]; image i's views are rows 2i, 2i+1
    label = torch.randint(0, K, (2, 2, 5, 5), generator=g)  # [b, 2, S, S] with S = h: stride 1
    label[0, 0, 0, :4] = 255  # ignored pixels, never in the loss
    label[1, 1, 2:, 3] = 255
    label[1, 0, 4, 4] = 7  # outside [0, K): ignored too
    torch.manual_seed(0)
    head = InfoNCE(InfoNCEConfig(head_hidden=8, embed_dim=3), 6).state_dict()
    return {"features": features, "label": label, "head": head}


def _objective_step(data: dict, features: torch.Tensor, label: torch.Tensor, **cfg):
    objective = InfoNCE(InfoNCEConfig(head_hidden=8, embed_dim=3, **cfg), features.shape[1])
    objective.load_state_dict(data["head"])
    x = features.clone().requires_grad_(True)
    loss, stats = objective(x, _batch(label))
    loss.backward()
    head_grads = {k: p.grad.clone() for k, p in objective.named_parameters()}
    return loss.detach(), stats, x.grad, head_grads


def test_all_pixels_takes_every_labelled_pixel_and_blocks_give_the_same_loss(monkeypatch):
    import pretrain.objectives.infonce as infonce

    data = _data()
    calls = []
    monkeypatch.setattr(infonce, "blockwise_supervised_infonce",
                        lambda *a, **kw: calls.append(kw["block_size"]) or blockwise_supervised_infonce(*a, **kw))
    lean = _objective_step(data, data["features"], data["label"], all_pixels=True)
    assert calls == []  # 96 pixels: the auto block holds them all, the lean pass
    blocks = _objective_step(data, data["features"], data["label"], all_pixels=True, block_size=7)
    assert calls == [7]
    labelled = int(((data["label"] >= 0) & (data["label"] < K)).sum())
    assert labelled == 2 * 2 * 25 - 4 - 3 - 1
    assert lean[1]["loss_chance"] == pytest.approx(math.log(labelled - 1))  # every labelled pixel, no other
    assert lean[1] == blocks[1]
    torch.testing.assert_close(lean[0], blocks[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(lean[2], blocks[2], rtol=1e-5, atol=1e-7)
    for key in lean[3]:
        torch.testing.assert_close(lean[3][key], blocks[3][key], rtol=1e-5, atol=1e-7)
    assert not lean[2][0, :, 0, :4].any()  # ignored pixels get no gradient
    # the same rows through the float64 dense reference
    objective = InfoNCE(InfoNCEConfig(head_hidden=8, embed_dim=3), 6)
    objective.load_state_dict(data["head"])
    f = data["features"].permute(0, 2, 3, 1).reshape(-1, 6)  # [b*2*h*w, C], global pixel order
    ids = data["label"].reshape(-1)
    keep = (ids >= 0) & (ids < K)
    ref, _ = _infonce_dense_reference(objective.head.rows(f[keep]).double(), PixelTargets(ids[keep]))
    assert lean[0].item() == pytest.approx(ref.item(), rel=1e-6)


def test_sampled_pixels_through_blocks_give_the_lean_loss():
    data = _data()
    lean = _objective_step(data, data["features"], data["label"], budget=40)
    blocks = _objective_step(data, data["features"], data["label"], budget=40, block_size=6)
    assert lean[1] == blocks[1] and lean[1]["loss_chance"] == pytest.approx(math.log(40 - 1))
    torch.testing.assert_close(lean[0], blocks[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(lean[2], blocks[2], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- two gloo processes


SETTINGS = {"all_blocks": {"all_pixels": True, "block_size": 7}, "sampled_blocks": {"budget": 40, "block_size": 6}}


def _both_settings(rank: int, world: int, data: dict) -> dict:
    """One process's share: its image (both views) through each setting."""
    mine = slice(rank, rank + 1)
    return {name: _objective_step(data, data["features"][2 * rank:2 * rank + 2], data["label"][mine], **cfg)
            for name, cfg in SETTINGS.items()}


def test_two_gloo_processes_give_the_one_process_loss_and_gradients(tmp_path):
    data = _data()
    ranks = run_gloo(_both_settings, 2, data, tmp_path)
    for name, cfg in SETTINGS.items():
        loss, stats, grad, head = _objective_step(data, data["features"], data["label"], **cfg)
        for r in range(2):
            # every process computes the whole batch's loss on the gathered pixels
            torch.testing.assert_close(ranks[r][name][0], loss, rtol=1e-5, atol=0)
            assert ranks[r][name][1] == stats
            # the gather's backward hands each process world_size x its share; DDP's averaging divides it out
            torch.testing.assert_close(ranks[r][name][2] / 2, grad[2 * r:2 * r + 2], rtol=1e-4, atol=1e-6)
        for key in head:  # DDP averages the head's gradients: their mean is the one-process gradient
            torch.testing.assert_close((ranks[0][name][3][key] + ranks[1][name][3][key]) / 2, head[key],
                                       rtol=1e-4, atol=1e-6)
