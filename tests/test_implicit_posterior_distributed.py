"""QR / RQ in a distributed run: two gloo processes, one image each, against one process with both.

The class mass is the whole batch's (all-reduced forward and backward), so with
DDP's averaging the gradient is the one-process gradient; a process without a
valid pixel still takes part in every collective, and every process keeps the
same running mass and warm-up count.
"""

from __future__ import annotations

import types

import pytest
import torch
from gloo_workers import run_gloo

from finetune.losses import QRLoss, RQLoss
from pretrain.objectives.base import StepBatch
from pretrain.objectives.implicit_posterior import RQ as PretrainRQ
from pretrain.objectives.implicit_posterior import ImplicitPosteriorConfig

K = 4
LOSSES = (("qr", QRLoss), ("rq", RQLoss))


def _loss_and_grad(cls, logits, prior, **kw):
    x = logits.clone().requires_grad_(True)
    loss = cls(**kw)(x, prior)
    loss.backward()
    return loss.detach(), x.grad


def _momentum_state(cls, logits, prior):
    """Running mass and warm-up count of a loss after two training calls with a running mass."""
    loss = cls(mass_momentum=0.5, warmup_iters=1)
    loss.set_num_classes(K)
    for _ in range(2):
        loss(logits.clone().requires_grad_(True), prior).backward()
    return loss.running_mass.clone(), int(loss.iteration)


def _pretrain_rq(features, label, head_state):
    """The pre-training ``rq`` objective on features ``[2 b, C, h, w]`` and hard labels ``[b, 2, h, w]``."""
    folder = types.SimpleNamespace(num_labels=K, ignore_index=255, has_priors=False, root="tiny")
    objective = PretrainRQ(ImplicitPosteriorConfig(max_pixels=10**6), features.shape[1])
    objective.check_folder(folder)
    objective.head.load_state_dict(head_state)
    x = features.clone().requires_grad_(True)
    b = label.shape[0]
    batch = StepBatch(label=label, coords=torch.zeros_like(label), index=torch.arange(b),
                      size=torch.ones(b, 2, dtype=torch.long), folder=folder, iteration=0,
                      generator=torch.Generator().manual_seed(0))
    loss, _ = objective(x, batch)
    loss.backward()
    return loss.detach(), x.grad


def _share(rank: int, world: int, data: dict) -> dict:
    """One process's share: its image through each loss (with and without warm-up), its momentum state, and
    an RQ pre-training step."""
    mine = slice(rank, rank + 1)
    logits, prior = data["logits"][mine], data["prior"][mine]
    results = {}
    for name, cls in LOSSES:
        for warm in (0, 1):
            results[name, warm] = _loss_and_grad(cls, logits, prior, warmup_iters=warm)
        results[name, "momentum"] = _momentum_state(cls, logits, prior)
    results["pretrain"] = _pretrain_rq(data["features"][2 * rank:2 * rank + 2], data["label"][mine], data["head"])
    return results


def _data(empty_rank):
    torch.manual_seed(0)
    logits = torch.randn(2, K, 3, 5) * 2
    prior = torch.distributions.Dirichlet(torch.full((K,), 0.5)).sample((2, 3, 5)).permute(0, 3, 1, 2)
    prior[0, :, 0, :2] = 0  # ignored pixels ...
    prior[1, :, 2, 3:] = 0  # ... as many in each image, so the mean over processes is the batch mean
    features = torch.randn(4, 6, 3, 5)  # image i's two views are rows 2i, 2i+1
    label = torch.randint(0, K, (2, 2, 3, 5))
    label[0, 0, 0, :3] = 255  # ignored, as many in each image
    label[1, 1, 2, 2:] = 255
    if empty_rank is not None:
        prior[empty_rank] = 0
        label[empty_rank] = 255
    head = torch.nn.Conv2d(6, K, 1).state_dict()
    return {"logits": logits, "prior": prior, "features": features, "label": label, "head": head}


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("empty_rank", [None, 0])
def test_class_mass_spans_the_processes_of_a_distributed_batch(tmp_path, empty_rank):
    data = _data(empty_rank)
    ranks = run_gloo(_share, 2, data, tmp_path)
    # the one-process reference: both images, or (empty_rank) the other image alone
    keep = slice(0, 2) if empty_rank is None else slice(1 - empty_rank, 2 - empty_rank)
    logits, prior = data["logits"][keep], data["prior"][keep]
    views = slice(2 * keep.start, 2 * keep.stop)
    results = {}
    for name, cls in LOSSES:
        for warm in (0, 1):
            results[name, warm] = _loss_and_grad(cls, logits, prior, warmup_iters=warm)
        results[name, "momentum"] = _momentum_state(cls, logits, prior)
    results["pretrain"] = _pretrain_rq(data["features"][views], data["label"][keep], data["head"])

    for key, (loss, grad) in results.items():
        if key[1] == "momentum":  # the same running mass and warm-up count on every process as in one
            mass, count = loss, grad
            for r in range(2):
                _close(ranks[r][key][0], mass)
                assert ranks[r][key][1] == count == 2
            continue
        rows = (lambda r: slice(2 * r, 2 * r + 2)) if key == "pretrain" else (lambda r: slice(r, r + 1))
        if empty_rank is None:  # DDP averages: the mean of the processes' losses and gradients
            _close((ranks[0][key][0] + ranks[1][key][0]) / 2, loss)
            for r in range(2):
                _close(ranks[r][key][1] / 2, grad[rows(r)])
        else:
            other = 1 - empty_rank
            _close(ranks[other][key][0], loss)
            _close(ranks[other][key][1], grad)
            assert ranks[empty_rank][key][0].item() == 0 and not ranks[empty_rank][key][1].any()
    if empty_rank is None:  # the mass is the batch's: a process's own mass gives another gradient
        own = _loss_and_grad(QRLoss, data["logits"][:1], data["prior"][:1])[1]
        assert not torch.allclose(ranks[0]["qr", 0][1], own)
        own = _pretrain_rq(data["features"][:2], data["label"][:1], data["head"])[1]
        assert not torch.allclose(ranks[0]["pretrain"][1], own)
