"""Boundaries from switch posteriors (boundaries.learned) and `auxseg boundaries predict` end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from auxseg.contracts.small_model import SMALL_MODEL_FORMAT, read_small_model, save_small_model
from auxseg.images import read_label, write_rgb_png
from auxseg.methods.local_prediction import log_uniform_density, posterior_maps
from auxseg.nets.small import LinearModel, PixelModel, PredSeg1
from boundaries.learned import (
    BoundaryOptions,
    affinity_matrix,
    boundary_strength,
    local_boundary_map,
    spectral_boundary,
)
from loop.cli import main as auxseg_main

EDGE = 12  # the two-region image: columns < 12 red, >= 12 blue


def _two_regions(h: int = 20, w: int = 30) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :EDGE] = (200, 30, 30)
    img[:, EDGE:] = (20, 40, 220)
    return img


def _pixel_export(path, neighbourhood: int = 8):
    """A pixel model with hand-set predictor: p = 0.5, variance 0.01 (close colours connect, others do not)."""
    half = neighbourhood // 2
    return save_small_model(path, PixelModel(), config={}, iteration=0, predictor={
        "neighbourhood": neighbourhood, "log_u": log_uniform_density(3), "logit_p": torch.zeros(half),
        "log_var": torch.full((half, 3), math.log(0.01))})


def test_local_map_is_the_mean_or_max_of_one_minus_pi_over_valid_pairs():
    pi = torch.tensor([[[[0.2, 1.0]], [[0.6, 0.0]]]])  # [B=1, D=2, h=1, w=2]
    valid = torch.tensor([[[True, False]], [[True, True]]])
    # pixel 0: (0.8 + 0.4) / 2 = 0.6, max 0.8; pixel 1: only offset 1 is valid: 1.0
    torch.testing.assert_close(local_boundary_map(pi, valid, "mean"), torch.tensor([[[0.6, 1.0]]]))
    torch.testing.assert_close(local_boundary_map(pi, valid, "max"), torch.tensor([[[0.8, 1.0]]]))


def test_affinity_is_symmetric_and_two_blocks_give_a_spectral_edge_between_them():
    torch.manual_seed(0)
    f = torch.randn(1, 2, 5, 6)
    pi, valid = posterior_maps(f, 12, torch.randn(6), 0.3 * torch.randn(6, 2), log_uniform_density(2))
    w = affinity_matrix(pi[0].double().numpy(), valid.numpy(), 12)
    assert w.shape == (30, 30) and abs(w - w.T).max() < 1e-12
    # the rows of pixel (2, 3): its 12 neighbours all exist
    assert w[2 * 6 + 3].nnz == 12
    # two regions joined by weak links: the spectral boundary peaks where they meet
    f = torch.zeros(1, 1, 6, 8)
    f[..., 4:] = 3.0
    pi, valid = posterior_maps(f, 4, torch.zeros(2), torch.zeros(2, 1), log_uniform_density(1))
    s = spectral_boundary(affinity_matrix(pi[0].double().numpy(), valid.numpy(), 4), 6, 8, n_vectors=3)
    assert s.shape == (6, 8) and s.max() == pytest.approx(1.0)
    assert set(np.argmax(s, axis=1)) <= {3, 4}


@pytest.mark.parametrize("globalize", [False, True])
def test_two_regions_have_their_strongest_boundary_on_the_edge(tmp_path, globalize):
    export = read_small_model(_pixel_export(tmp_path / "px.pth"))
    b = boundary_strength(export, _two_regions(), BoundaryOptions(globalize=globalize))
    assert b.shape == (20, 30)
    edge = b[:, EDGE - 1:EDGE + 1]
    assert edge.min() > 0.3 and np.delete(b, [EDGE - 1, EDGE], axis=1).max() < 0.05


def test_predict_cli_end_to_end(tmp_path, capsys):
    images = tmp_path / "images"
    write_rgb_png(images / "a.png", _two_regions())
    write_rgb_png(images / "sub" / "b.png", _two_regions(16, 24))
    ckpt = _pixel_export(tmp_path / "small_model.pth")
    out = tmp_path / "pred"
    assert auxseg_main(["boundaries", "predict", str(ckpt), str(images), str(out), "--globalize",
                        "--no-progress"]) == 0
    assert "2 boundary maps" in capsys.readouterr().out
    a = read_label(out / "a.png")
    assert a.shape == (20, 30) and a.dtype == np.uint8
    # after NMS at most one pixel of the two-pixel ridge is left per row, on the edge (the NMS orientation,
    # estimated from the map, drops a few rows next to the image border: measured 2 of 20); elsewhere only
    # the faint ripples of the higher eigenvectors inside the regions (measured: at most 0.025, 7 of 255)
    ridge = a[:, EDGE - 1:EDGE + 1]
    assert (ridge.max(1) > 150).sum() >= 16 and (ridge > 0).sum(1).max() == 1
    assert np.delete(a, [EDGE - 1, EDGE], axis=1).max() <= 10
    assert read_label(out / "sub" / "b.png").shape == (16, 24)


def test_predict_errors_are_one_line(tmp_path, capsys):
    images = tmp_path / "images"
    write_rgb_png(images / "a.png", _two_regions())
    bare = save_small_model(tmp_path / "bare.pth", LinearModel(), config={}, iteration=0)  # no predictor
    assert auxseg_main(["boundaries", "predict", str(bare), str(images), str(tmp_path / "o"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no predictor parameters" in err and str(bare) in err
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    assert auxseg_main(["boundaries", "predict", str(tmp_path / "other.pth"), str(images), str(tmp_path / "o")]) == 1
    assert "not a small-model export" in capsys.readouterr().err


def test_strided_network_maps_are_upsampled_to_the_image(tmp_path):
    torch.manual_seed(0)
    net = PredSeg1()
    path = save_small_model(tmp_path / "p.pth", net, config={}, iteration=0, predictor={
        "neighbourhood": 4, "log_u": log_uniform_density(256), "logit_p": torch.zeros(2),
        "log_var": torch.zeros(2, 256)})
    export = read_small_model(path)
    assert export.meta["format"] == SMALL_MODEL_FORMAT and export.meta["stride"] == 12
    b = boundary_strength(export, np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8),
                          BoundaryOptions(globalize=True, graph_side=3))
    assert b.shape == (50, 70) and 0.0 <= b.min() and b.max() <= 1.0
