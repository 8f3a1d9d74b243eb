"""The implicit-posterior math (auxseg/methods/implicit_posterior.py): hand-derived values of QR, RQ and r, the hard-prior
reduction of RQ to cross-entropy, gradients through r, smoothing, and argmax r of one image."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from auxseg.methods.implicit_posterior import (
    implied_posterior,
    posterior_labels,
    qr_loss,
    rq_loss,
    smooth,
    soft_cross_entropy,
)

Q = torch.tensor([[0.5, 0.5], [0.8, 0.2]], dtype=torch.float64)
P = torch.tensor([[0.9, 0.1], [0.5, 0.5]], dtype=torch.float64)


def test_implied_posterior_by_hand():
    # qbar = (0.65, 0.35); pixel 1: z = (0.9*0.5/0.65, 0.1*0.5/0.35) = (0.692308, 0.142857)
    z1 = (0.9 * 0.5 / 0.65, 0.1 * 0.5 / 0.35)
    z2 = (0.5 * 0.8 / 0.65, 0.5 * 0.2 / 0.35)
    want = torch.tensor([[z / sum(z1) for z in z1], [z / sum(z2) for z in z2]], dtype=torch.float64)
    torch.testing.assert_close(implied_posterior(Q, P), want)
    # only the ratios of the class mass matter: the sum S and the mean give the same r
    torch.testing.assert_close(implied_posterior(Q, P, Q.sum(0)), want)


def test_qr_loss_by_hand():
    qbar = (0.65, 0.35)
    neg_cross = 0.5 * ((0.5 * math.log(0.9) + 0.5 * math.log(0.1)) + (0.8 * math.log(0.5) + 0.2 * math.log(0.5)))
    want = sum(m * math.log(m) for m in qbar) - neg_cross
    assert qr_loss(Q, P).item() == pytest.approx(want, rel=1e-12)


def test_rq_loss_by_hand():
    r = implied_posterior(Q, P)
    want = sum(float(r[i, c]) * (math.log(float(r[i, c])) - math.log(float(Q[i, c]))) for i in range(2) for c in range(2)) / 2
    assert rq_loss(Q, P).item() == pytest.approx(want, rel=1e-12)


def test_hard_priors_reduce_rq_to_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(50, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (50,))
    q = logits.softmax(dim=1)
    loss = rq_loss(q, F.one_hot(labels, 5).double())
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-9)


def test_rq_gradient_flows_through_r():
    logits = torch.tensor([[0.3, -0.2], [1.0, 0.1], [-0.5, 0.4]], dtype=torch.float64, requires_grad=True)
    p = smooth(torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]], dtype=torch.float64))
    rq_loss(logits.softmax(1), p).backward()
    full = logits.grad.clone()
    logits.grad = None
    q = logits.softmax(1)
    r = implied_posterior(q, p).detach()
    (r * (r.log() - q.log())).sum(1).mean().backward()
    assert not torch.allclose(full, logits.grad)  # the official code does not detach r; neither do we
    assert torch.autograd.gradcheck(lambda x: rq_loss(x.softmax(1), p), (logits.detach().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda x: qr_loss(x.softmax(1), p), (logits.detach().requires_grad_(),))


def test_smoothing_keeps_every_probability_away_from_zero():
    s = smooth(torch.tensor([[1.0, 0.0, 0.0]]))
    assert float(s.min()) > 0 and torch.allclose(s.sum(1), torch.ones(1))


def test_soft_cross_entropy_by_hand():
    want = -0.5 * ((0.9 * math.log(0.5) + 0.1 * math.log(0.5)) + (0.5 * math.log(0.8) + 0.5 * math.log(0.2)))
    assert soft_cross_entropy(Q, P).item() == pytest.approx(want, rel=1e-12)


def test_posterior_labels_by_hand():
    logits = Q.log().T.reshape(2, 1, 2)  # [K, H=1, W=2]
    prior = P.T.reshape(2, 1, 2)
    want = implied_posterior(smooth(Q), smooth(P)).argmax(1)  # qbar over the image
    assert posterior_labels(logits, prior).reshape(-1).tolist() == want.tolist() == [0, 0]
    assert Q.argmax(1).tolist() == [0, 0]
    # pixel 2: q says 0 (0.8), the prior says 1 strongly -> r says 1; a zero prior row keeps argmax q
    prior2 = torch.tensor([[0.9, 0.1], [0.05, 0.95]], dtype=torch.float64).T.reshape(2, 1, 2)
    assert posterior_labels(logits, prior2).reshape(-1).tolist() == [0, 1]
    assert posterior_labels(logits, torch.zeros_like(prior2)).reshape(-1).tolist() == [0, 0]
