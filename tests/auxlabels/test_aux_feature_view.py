"""The feature view: box mean and guided filter against brute-force window sums, PCA colours, and the command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from auxlabels.feature_view import (
    FeatureViewConfig,
    ViewParams,
    box_mean,
    guided_filter,
    pca_rgb,
    run,
    standardise_and_clip,
    views_of_image,
)
from auxseg.images import read_rgb, write_rgb_png


def _windows(h: int, w: int, r: int):
    """Each pixel's clipped window as (y0, y1, x0, x1)."""
    for y in range(h):
        for x in range(w):
            yield y, x, max(0, y - r), min(h, y + r + 1), max(0, x - r), min(w, x + r + 1)


def _brute_guided(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al. Eqs. 19-21 literally: per window a least-squares fit, then each pixel averages the fits of the
    windows that contain it (all windows clipped to the image)."""
    g = guide if guide.ndim == 3 else guide[:, :, None]
    h, w, k = g.shape
    coef = {}
    for y, x, y0, y1, x0, x1 in _windows(h, w, r):
        gi = g[y0:y1, x0:x1].reshape(-1, k).astype(np.float64)
        pi = src[y0:y1, x0:x1].reshape(-1, src.shape[2]).astype(np.float64)
        mu, pm = gi.mean(0), pi.mean(0)
        sigma = (gi - mu).T @ (gi - mu) / len(gi)
        cov = (gi - mu).T @ (pi - pm) / len(gi)  # [k, C]
        a = np.linalg.solve(sigma + eps * np.eye(k), cov)
        coef[y, x] = (a, pm - mu @ a)
    out = np.zeros(src.shape)
    for y, x, y0, y1, x0, x1 in _windows(h, w, r):
        fits = [coef[yy, xx] for yy in range(y0, y1) for xx in range(x0, x1)]  # windows containing (y, x)
        out[y, x] = np.mean([g[y, x] @ a + b for a, b in fits], axis=0)
    return out


def test_box_mean_is_the_clipped_window_mean():
    x = np.random.default_rng(0).random((5, 7, 3))
    want = np.zeros_like(x)
    for y, xx, y0, y1, x0, x1 in _windows(5, 7, 2):
        want[y, xx] = x[y0:y1, x0:x1].mean(axis=(0, 1))
    np.testing.assert_allclose(box_mean(x, 2), want, rtol=1e-12)
    np.testing.assert_allclose(box_mean(x[:, :, 0], 2), want[:, :, 0], rtol=1e-12)


@pytest.mark.parametrize("colour", [True, False])
def test_guided_filter_matches_the_per_window_computation(colour):
    rng = np.random.default_rng(1)
    guide = rng.random((6, 7, 3)) if colour else rng.random((6, 7))
    src = rng.normal(size=(6, 7, 5)).astype(np.float32)
    got = guided_filter(guide, src, radius=2, eps=0.01, chunk=2)  # chunks of 2 channels: 2 + 2 + 1
    np.testing.assert_allclose(got, _brute_guided(guide, src, 2, 0.01), rtol=1e-3, atol=1e-4)


def test_guided_filter_keeps_a_constant_and_follows_a_strong_edge():
    guide = np.zeros((8, 10, 3))
    guide[:, 5:] = 1.0  # a vertical edge in the guide
    const = np.full((8, 10, 2), 3.5, dtype=np.float32)
    np.testing.assert_allclose(guided_filter(guide, const, 3, 0.01), const, rtol=1e-5)
    # a feature that steps at the same edge keeps the step (small eps: the edge is preserved)
    step = np.where(np.arange(10) >= 5, 1.0, -1.0)[None, :, None].repeat(8, 0).astype(np.float32)
    out = guided_filter(guide, step, 3, 1e-4)
    assert out[:, :5].max() < -0.95 and out[:, 5:].min() > 0.95


def test_pca_rgb_colours_two_regions_at_the_extremes():
    feats = np.zeros((4, 6, 8))
    feats[:, 3:, :] = 1.0  # two regions that differ along one direction
    rgb = pca_rgb(feats)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 6, 3)
    assert set(np.unique(rgb[..., 0])) == {0, 255} and (rgb[:, :3, 0] != rgb[:, 3:, 0]).all()
    assert (rgb[..., 1:] == 0).all()  # no other variance: the 2nd and 3rd channels are constant
    np.testing.assert_array_equal(pca_rgb(feats + 5.0), rgb)  # centred: a shift changes nothing
    # the eigenvector's sign is fixed by its loadings, so negated features give the inverted colour
    np.testing.assert_array_equal(pca_rgb(-feats)[..., 0], 255 - rgb[..., 0])


def test_standardise_and_clip():
    x = np.zeros((2, 50, 2))
    x[0, 0, 0] = 100.0  # one outlier
    s = standardise_and_clip(x, 5.0)
    assert s.max() == pytest.approx(5.0) and s.dtype == np.float32
    assert np.allclose(s.reshape(-1, 2).mean(0)[1], 0.0)


@pytest.fixture(scope="module")
def random_resnet():
    from auxlabels.config import ExtractorConfig
    from auxlabels.features import build_extractor

    return build_extractor(ExtractorConfig(name="resnet18", random_init=True, layer="layer2"))


def test_views_of_image_at_the_working_size(random_resnet):
    image = (np.random.default_rng(2).random((40, 64, 3)) * 255).astype(np.uint8)
    views = views_of_image(random_resnet, image, ViewParams(max_side=32, radius=2))
    assert views["image"].shape == views["view"].shape == views["pca"].shape == (20, 32, 3)
    assert views["view"].dtype == np.uint8 and views["view"].max() == 255 and views["view"].min() == 0
    assert not np.array_equal(views["view"], views["pca"])  # the filter changed something
    assert np.array_equal(views_of_image(random_resnet, image, ViewParams(max_side=32, guide="none"))["view"],
                          views["pca"])


class _Fixed:
    """A stand-in extractor returning fixed native features ``[1, D, h, w]``."""

    def __init__(self, feats):
        import torch

        self.feats = torch.as_tensor(feats, dtype=torch.float32)

    def buffers(self):
        return iter(())

    def __call__(self, x):
        return self.feats


def test_filtering_the_top_principal_axes_is_exact_for_low_rank_features():
    rng = np.random.default_rng(4)
    # 20 channels of rank 4 (plus the mean): the top 4 axes carry everything
    feats = (rng.normal(size=(20, 4)) @ rng.normal(size=(4, 12 * 16))).reshape(1, 20, 12, 16) + 3.0
    image = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
    every = views_of_image(_Fixed(feats), image, ViewParams(max_side=None, radius=2, filter_channels=None))
    top4 = views_of_image(_Fixed(feats), image, ViewParams(max_side=None, radius=2, filter_channels=4))
    assert np.abs(every["view"].astype(int) - top4["view"].astype(int)).max() <= 1  # rounding of 0..255
    np.testing.assert_array_equal(every["pca"], top4["pca"])
    # the same as filtering the 20 standardised channels themselves, then the PCA (the supplement's order),
    # up to each channel's sign (fixed on the loadings of a different basis)
    import torch
    import torch.nn.functional as F

    up = F.interpolate(torch.as_tensor(feats, dtype=torch.float32), size=(24, 32), mode="bilinear",
                       align_corners=False)[0].permute(1, 2, 0).numpy()
    direct = pca_rgb(guided_filter(image / 255.0, standardise_and_clip(up, 5.0), 2, 0.01)).astype(int)
    for c in range(3):
        diff = min(np.abs(direct[..., c] - every["view"][..., c]).max(),
                   np.abs(255 - direct[..., c] - every["view"][..., c]).max())
        assert diff <= 1


def test_command_writes_one_png_per_image(tmp_path, capsys):
    from loop.cli import main

    rng = np.random.default_rng(3)
    for rel in ("a.png", "sub/b.png"):
        (tmp_path / "img" / rel).parent.mkdir(parents=True, exist_ok=True)
        write_rgb_png(tmp_path / "img" / rel, (rng.random((24, 32, 3)) * 255).astype(np.uint8))
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "view"
    args = ["featureview", f"image_dir={tmp_path / 'img'}", f"out_dir={out}", "extractor.name=resnet18",
            "extractor.random_init=true", "extractor.layer=layer1", "radius=2", "progress=false"]
    assert main(args) == 0
    assert "2 feature views" in capsys.readouterr().out
    assert read_rgb(out / "a.png").shape == (24, 32, 3) and read_rgb(out / "sub" / "b.png").shape == (24, 32, 3)
    record = json.loads((out / "feature_view.json").read_text())
    assert record["images"] == ["a.png", "sub/b.png"] and list(record["skipped"]) == ["broken.png"]
    assert record["extractor"]["random_init"] is True and record["seconds_per_image"] > 0
    # one-line errors: a bad key (exit 2), a missing folder (exit 1)
    assert main([*args, "radius=0"]) == 2
    assert "config error: radius: must be >= 1, got 0" in capsys.readouterr().err
    assert main([*args[:1], f"image_dir={tmp_path / 'nope'}", *args[2:]]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope" in err


def test_config_requires_an_image_folder():
    from auxseg.config import ConfigError

    with pytest.raises(ConfigError, match="image_dir: required"):
        run(FeatureViewConfig())
