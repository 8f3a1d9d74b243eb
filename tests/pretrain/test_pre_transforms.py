"""Two-view augmentation: a labelled square lands exactly where the geometry says."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.config import AugmentConfig
from pretrain.transforms import MEAN, ViewParams, make_view, sample_view_params, warp_view

IGNORE = 255


def square_image(h: int = 40, w: int = 40, box=(8, 20, 12, 30)):
    """A random image whose label map is 1 inside rows box[0]:box[1], cols box[2]:box[3] and 0 elsewhere."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), dtype=np.uint8)
    y0, y1, x0, x1 = box
    label[y0:y1, x0:x1] = 1
    return image, label


def test_rotation_by_90_degrees_is_an_exact_clockwise_rot90():
    image, label = square_image()
    # scale 1, the 40 x 40 window covers the rotated image exactly (plane origin = image centre)
    p = ViewParams(scale=1.0, angle=90.0, crop=40, window=(-20.0, -20.0), flip=False, out_size=40)
    img, lab, coords = warp_view(image, label, p, IGNORE)
    np.testing.assert_array_equal(lab, np.rot90(label, k=-1))
    np.testing.assert_array_equal(img, np.rot90(image, k=-1))
    np.testing.assert_array_equal(coords, np.rot90(np.arange(1600).reshape(40, 40), k=-1))


def test_scaled_flipped_crop_puts_the_square_where_the_geometry_says():
    h, w = 40, 40
    y0, y1, x0, x1 = 8, 20, 12, 30
    image, label = square_image(h, w, (y0, y1, x0, x1))
    s, k, tx, ty = 2.0, 64, -30.0, -40.0  # window top-left in the plane centred on the image centre
    p = ViewParams(scale=s, angle=0.0, crop=k, window=(tx, ty), flip=True, out_size=k)
    _, lab, coords = warp_view(image, label, p, IGNORE)
    cx, cy = w / 2, h / 2
    # rows: plane y = s * (y - cy) - ty; flipped columns: k - (s * (x - cx) - tx)
    r0, r1 = int(s * (y0 - cy) - ty), int(s * (y1 - cy) - ty)
    c0, c1 = int(k - (s * (x1 - cx) - tx)), int(k - (s * (x0 - cx) - tx))
    expected = np.zeros((k, k), dtype=np.int64)
    expected[r0:r1, c0:c1] = 1
    # the plane covers y in [-40, 40) -> rows 0..63 all inside; x in [-40, 40) -> window x [-30, 34) inside
    assert (coords >= 0).all()
    np.testing.assert_array_equal(lab, expected)


def test_padding_is_ignore_and_has_no_coordinate():
    image, label = square_image()
    # scale 0.5: the 20 x 20 image sits in the middle of a 40 x 40 window
    p = ViewParams(scale=0.5, angle=0.0, crop=40, window=(-20.0, -20.0), flip=False, out_size=40)
    img, lab, coords = warp_view(image, label, p, IGNORE)
    outside = np.ones((40, 40), dtype=bool)
    outside[10:30, 10:30] = False
    assert (lab[outside] == IGNORE).all() and (coords[outside] == -1).all()
    assert (lab[~outside] != IGNORE).all() and (coords[~outside] >= 0).all()
    np.testing.assert_allclose(img[0, 0], np.round(MEAN), atol=1)


@pytest.mark.parametrize("seed", range(5))
def test_random_views_keep_labels_tied_to_original_pixels(seed):
    image, label = square_image(60, 80, (10, 40, 20, 50))
    cfg = AugmentConfig(crop=(40, 48), out_size=44)
    rng = np.random.default_rng(seed)
    views = [make_view(image, label, sample_view_params(rng, 60, 80, cfg), IGNORE) for _ in range(2)]
    flat = label.reshape(-1)
    for img, lab, coords in views:
        assert img.shape == (3, 44, 44) and lab.shape == coords.shape == (44, 44)
        valid = coords >= 0
        # the label of every view pixel is the label of the original pixel it shows; padding is ignore
        np.testing.assert_array_equal(lab[valid].numpy(), flat[coords[valid].numpy()])
        assert (lab[~valid] == IGNORE).all()
    # so a physical pixel visible in both views carries the same label in both
    (_, lab_a, co_a), (_, lab_b, co_b) = views
    common = np.intersect1d(co_a[co_a >= 0].numpy(), co_b[co_b >= 0].numpy())
    for c in common[:50]:
        assert set(lab_a[co_a == int(c)].tolist()) == set(lab_b[co_b == int(c)].tolist())


def test_sampled_parameters_stay_in_table_8_ranges():
    cfg = AugmentConfig()
    rng = np.random.default_rng(0)
    params = [sample_view_params(rng, 360, 480, cfg) for _ in range(300)]
    assert all(0.4 <= p.scale <= 2.5 and -60 <= p.angle <= 60 and 321 <= p.crop <= 361 for p in params)
    assert all(0 <= p.cutout[0] <= 40 for p in params)
    assert 0.35 < np.mean([p.flip for p in params]) < 0.65
    assert 0.1 < np.mean([p.grayscale for p in params]) < 0.3
    b, c, s, hue = zip(*[p.jitter for p in params])
    assert min(b) >= 0.6 and max(b) <= 1.4 and min(hue) >= -0.1 and max(hue) <= 0.1
    # parameters differ per sample
    assert len({p.scale for p in params}) == 300


def test_identity_jitter_factors_are_skipped_without_changing_a_single_colour():
    """photometric() skips an adjustment whose factor is its identity; that is only safe if the
    adjustment maps every uint8 colour to itself, which this checks for all 2^24 colours."""
    import torch
    import torchvision.transforms.v2.functional as TF

    from pretrain.transforms import STD, photometric

    v = torch.arange(256, dtype=torch.uint8)
    every = torch.stack(torch.meshgrid(v, v, v, indexing="ij")).reshape(3, 4096, 4096)  # all RGB triples
    for op, identity in ((TF.adjust_hue, 0.0), (TF.adjust_saturation, 1.0), (TF.adjust_contrast, 1.0),
                         (TF.adjust_brightness, 1.0)):
        assert torch.equal(op(every, identity), every), op.__name__
    image = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    p = ViewParams(scale=1.0, angle=0.0, crop=16, window=(-8.0, -8.0), flip=False, out_size=16,
                   jitter=(1.2, 0.9, 1.1, 0.0), jitter_order=(3, 0, 2, 1))
    img = torch.from_numpy(image).permute(2, 0, 1)
    for i, op in zip((3, 0, 2, 1), (TF.adjust_hue, TF.adjust_brightness, TF.adjust_saturation, TF.adjust_contrast)):
        img = op(img, p.jitter[i])
    expected = (img.float() - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(photometric(image, p), expected, rtol=0, atol=0)
