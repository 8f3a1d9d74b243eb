"""The local-prediction math (auxseg.methods.local_prediction) against values computed by hand on tiny maps."""

from __future__ import annotations

import math

import pytest
import torch

from auxseg.methods.local_prediction import (
    add_noise,
    factor_loss,
    factor_scores,
    log_factor,
    log_uniform_density,
    offsets,
    param_index,
    position_loss,
    posterior_maps,
    prediction_score,
    standardise,
    switch_posterior,
)

LOG_U = math.log(0.25)  # a "uniform" density of 0.25 for 1-D features, easy to hand-compute with


def n01(z: float) -> float:
    """The standard normal density at z."""
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


@pytest.mark.parametrize(("size", "r2"), [(4, 1), (8, 2), (12, 4), (20, 5)])
def test_neighbourhoods_are_the_offsets_within_the_distance_of_table_c3(size, r2):
    got = offsets(size)
    want = {(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4) if 0 < dy * dy + dx * dx <= r2}
    assert len(got) == size and set(got) == want
    # d and -d share a parameter row: offset k and offset k + size/2 are negatives of each other
    half = size // 2
    assert all(got[k + half] == (-got[k][0], -got[k][1]) for k in range(half))
    assert param_index(size).tolist() == list(range(half)) * 2


def test_log_factor_and_posterior_by_hand():
    # p = 0.5, C = 1, v = 1, g = 0, u = 0.25:
    # phi = 0.5 * N(1; 0, 1) + 0.5 * 0.25 = 0.5 * 0.2419707 + 0.125 = 0.2459854
    v, g = torch.tensor([1.0]), torch.tensor([0.0])
    lp, lv = torch.tensor(0.0), torch.tensor([0.0])
    assert float(log_factor(v, g, lp, lv, LOG_U)) == pytest.approx(math.log(0.2459854), abs=1e-6)
    # pi = 0.1209854 / 0.2459854 = 0.4918
    assert float(switch_posterior(v, g, lp, lv, LOG_U)) == pytest.approx(0.1209854 / 0.2459854, abs=1e-6)
    # variance 4 (log_var = log 4), p = 0.8 (logit = log 4), v - g = 2: N = n01(1) / 2
    lp, lv = torch.tensor(math.log(4.0)), torch.tensor([math.log(4.0)])
    on, off = 0.8 * n01(1.0) / 2, 0.2 * 0.25
    assert float(log_factor(torch.tensor([2.0]), g, lp, lv, LOG_U)) == pytest.approx(math.log(on + off), abs=1e-6)
    assert float(switch_posterior(torch.tensor([2.0]), g, lp, lv, LOG_U)) == pytest.approx(on / (on + off), abs=1e-6)


def test_log_factor_is_finite_where_the_gaussian_underflows():
    # (1000 / 0.01)^2 / 2 = 5e9 nats below the uniform: phi = (1 - p) u exactly, pi = 0
    v, g = torch.tensor([1000.0]), torch.tensor([0.0])
    lp, lv = torch.tensor(0.0), torch.tensor([math.log(1e-4)])
    assert float(log_factor(v, g, lp, lv, LOG_U)) == pytest.approx(math.log(0.5 * 0.25), abs=1e-6)
    assert float(switch_posterior(v, g, lp, lv, LOG_U)) == 0.0


# A 3x3 map of 1-D features; the centre (1, 1) has neighbours right 3, down 4, left 2, up 1 in the
# 4-neighbourhood whose offsets are (0,1), (1,0), (0,-1), (-1,0).
MAP = torch.tensor([[0.0, 1.0, 0.0], [2.0, 5.0, 3.0], [0.0, 4.0, 0.0]])
NEIGH = torch.tensor([[[3.0], [4.0], [2.0], [1.0]]])  # [N=1, D=4, c=1], in offset order


def _phi(v: float, g: float, p: float) -> float:
    return p * n01(v - g) + (1 - p) * 0.25


def test_score_is_the_sum_of_log_factors_over_the_neighbours_with_shared_rows():
    assert offsets(4) == [(0, 1), (1, 0), (0, -1), (-1, 0)]
    # rows: right/left use row 0 (p = 0.5), down/up use row 1 (p = 0.8)
    logit_p = torch.tensor([0.0, math.log(4.0)])[param_index(4)]
    log_var = torch.zeros(4, 1)
    cand = torch.tensor([[[5.0], [0.0]]])  # v = f_x = 5, and v = 0
    got = prediction_score(cand, NEIGH, logit_p, log_var, LOG_U)  # [1, 2]
    for m, v in enumerate((5.0, 0.0)):
        want = (math.log(_phi(v, 3, 0.5)) + math.log(_phi(v, 4, 0.8)) + math.log(_phi(v, 2, 0.5))
                + math.log(_phi(v, 1, 0.8)))
        assert float(got[0, m]) == pytest.approx(want, abs=1e-5)


def test_position_loss_by_hand():
    logit_p, log_var = torch.zeros(4), torch.zeros(4, 1)
    cand = torch.tensor([[[5.0], [0.0], [2.0]]])  # true f_x = 5, negatives from (0, 0) and (1, 0)
    s = [sum(math.log(_phi(v, g, 0.5)) for g in (3, 4, 2, 1)) for v in (5.0, 0.0, 2.0)]
    want = -math.log(math.exp(s[0]) / sum(math.exp(x) for x in s))
    assert float(position_loss(cand, NEIGH, logit_p, log_var, LOG_U)) == pytest.approx(want, abs=1e-5)


def test_factor_loss_by_hand():
    logit_p, log_var = torch.zeros(4), torch.zeros(4, 1)
    cand = torch.tensor([[[5.0], [0.0], [2.0]]])
    per_factor = [-math.log(_phi(5.0, g, 0.5) / sum(_phi(v, g, 0.5) for v in (5.0, 0.0, 2.0))) for g in (3, 4, 2, 1)]
    want = sum(per_factor) / 4
    assert float(factor_loss(cand, NEIGH, logit_p, log_var, LOG_U)) == pytest.approx(want, abs=1e-5)


def test_matrix_form_equals_the_direct_formula():
    torch.manual_seed(0)
    cand, neigh = torch.randn(5, 4, 3), torch.randn(5, 8, 3)
    logit_p, log_var = torch.randn(8), 0.3 * torch.randn(8, 3)
    direct = log_factor(cand[:, :, None], neigh[:, None], logit_p, log_var, -2.0)  # [5, 4, 8]
    torch.testing.assert_close(factor_scores(cand, neigh, logit_p, log_var, -2.0), direct)


def test_posterior_maps_match_the_pairwise_formula_and_are_symmetric():
    torch.manual_seed(1)
    f = torch.randn(1, 2, 4, 5)
    logit_p, log_var = torch.randn(4), 0.2 * torch.randn(4, 2)  # neighbourhood 8: 4 shared rows
    pi, valid = posterior_maps(f, 8, logit_p, log_var, log_uniform_density(2))
    assert pi.shape == (1, 8, 4, 5) and valid.shape == (8, 4, 5)
    offs = offsets(8)
    for k, (dy, dx) in enumerate(offs):
        for y in range(4):
            for x in range(5):
                inside = 0 <= y + dy < 4 and 0 <= x + dx < 5
                assert bool(valid[k, y, x]) == inside
                if not inside:
                    assert float(pi[0, k, y, x]) == 0.0
                    continue
                r = k % 4
                want = switch_posterior(f[0, :, y, x], f[0, :, y + dy, x + dx], logit_p[r], log_var[r],
                                        log_uniform_density(2))
                assert float(pi[0, k, y, x]) == pytest.approx(float(want), abs=1e-6)
                back = offs.index((-dy, -dx))  # pi_{x,d} = pi_{x+d,-d}: one factor, one posterior
                assert float(pi[0, back, y + dy, x + dx]) == pytest.approx(float(pi[0, k, y, x]), abs=1e-6)


def test_uniform_density_has_unit_variance_per_channel():
    # uniform on [-sqrt 3, sqrt 3]: density 1 / (2 sqrt 3) = 0.288675 per channel
    assert log_uniform_density(1) == pytest.approx(math.log(0.288675), abs=1e-6)
    assert log_uniform_density(50) == pytest.approx(50 * math.log(0.288675), abs=1e-4)


def test_standardise_then_noise_keeps_zero_mean_unit_variance():
    f = torch.tensor([[[[1.0, 3.0]], [[10.0, 10.0]]], [[[5.0, 7.0]], [[0.0, 20.0]]]])  # [2, 2, 1, 2]
    s = standardise(f, eps=0.0)
    # channel 0 holds 1, 3, 5, 7: mean 4, variance 5
    torch.testing.assert_close(s[:, 0].flatten(), (torch.tensor([1.0, 3.0, 5.0, 7.0]) - 4) / math.sqrt(5))
    torch.testing.assert_close(s.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-6, rtol=0)
    eps = torch.ones_like(s)
    torch.testing.assert_close(add_noise(s, 0.2, eps), math.sqrt(0.96) * s + 0.2)
    assert add_noise(s, 0.0) is s
