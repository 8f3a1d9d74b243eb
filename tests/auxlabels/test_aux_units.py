"""Unit tests of the pure pieces: superpixel vote, outlier thresholds, PmIoU, K-means, upsampling."""

from __future__ import annotations

import numpy as np
import pytest

from auxlabels.config import AuxLabelsConfig, KMeansConfig, resolve_k
from auxlabels.kmeans import NearestCentroid, fit_kmeans
from auxlabels.labelling import upsample_nearest
from auxlabels.metrics import confusion, iou_matrix, pmiou, same_pixel_bound
from auxlabels.outliers import outlier_mask, outlier_thresholds
from auxlabels.superpixels import compute_superpixels
from auxlabels.vote import superpixel_vote

IGN = 255


def test_vote_hand_built_4x4():
    # four 2x2 superpixels; outliers (255) do not vote; a superpixel of only outliers stays ignore
    labels = np.array(
        [
            [1, 1, 2, IGN],
            [1, 3, 2, 2],
            [IGN, IGN, 0, 4],
            [IGN, IGN, 4, 0],
        ],
        dtype=np.uint8,
    )
    segments = np.array(
        [
            [0, 0, 1, 1],
            [0, 0, 1, 1],
            [2, 2, 3, 3],
            [2, 2, 3, 3],
        ]
    )
    voted = superpixel_vote(labels, segments, num_labels=5, ignore_index=IGN)
    expected = np.array(
        [
            [1, 1, 2, 2],  # top-left: 1 wins 3:1; top-right: the outlier pixel takes 2
            [1, 1, 2, 2],
            [IGN, IGN, 0, 0],  # bottom-left: no voter -> ignore; bottom-right: 2:2 tie -> smaller id 0
            [IGN, IGN, 0, 0],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(voted, expected)
    assert voted.dtype == np.uint8


def test_vote_outliers_cannot_win_and_ids_need_not_be_compact():
    labels = np.array([[IGN, IGN, IGN, 7]], dtype=np.uint8)
    segments = np.array([[40, 40, 40, 40]])
    np.testing.assert_array_equal(superpixel_vote(labels, segments, 8, IGN), [[7, 7, 7, 7]])
    with pytest.raises(ValueError, match="outside"):
        superpixel_vote(np.array([[9]], np.uint8), np.array([[0]]), 8, IGN)


@pytest.mark.parametrize("fraction", [0.05, 0.1])
def test_outlier_fraction_global(fraction):
    rng = np.random.default_rng(0)
    dist = rng.random(10_000)
    labels = rng.integers(0, 4, 10_000)
    thr = outlier_thresholds(dist, labels, 4, fraction, "global")
    share = outlier_mask(dist, labels, thr).mean()
    assert abs(share - fraction) < 1.5e-3
    assert np.all(thr == thr[0])


def test_outlier_fraction_per_cluster_and_off():
    rng = np.random.default_rng(1)
    # cluster 1 is much more spread out: a global threshold would drop mostly its pixels
    labels = np.repeat([0, 1], 5000)
    dist = np.concatenate([rng.random(5000) * 0.1, rng.random(5000)])
    thr = outlier_thresholds(dist, labels, 2, 0.05, "per_cluster")
    mask = outlier_mask(dist, labels, thr)
    for k in (0, 1):
        assert abs(mask[labels == k].mean() - 0.05) < 2e-3
    glob = outlier_mask(dist, labels, outlier_thresholds(dist, labels, 2, 0.05, "global"))
    assert glob[labels == 0].sum() == 0
    assert not outlier_mask(dist, labels, outlier_thresholds(dist, labels, 2, 0.0)).any()


def _gt(h=8, w=12, m=3, seed=0):
    return np.random.default_rng(seed).integers(0, m, (h, w)).astype(np.uint8)


def test_pmiou_perfect_is_100_and_permuted_is_100():
    gt = _gt()
    rep = pmiou(confusion(gt, gt, 3, 3, IGN, [IGN]))
    assert rep["pmiou"] == pytest.approx(100.0)
    perm = np.array([2, 0, 1], dtype=np.uint8)
    rep = pmiou(confusion(perm[gt], gt, 3, 3, IGN, [IGN]))
    assert rep["pmiou"] == pytest.approx(100.0)
    assert rep["majority_miou"] == pytest.approx(100.0)
    assert rep["matching"] == {"0": 2, "1": 0, "2": 1}


def test_pmiou_one_label_per_superpixel_is_about_zero():
    gt = np.zeros((64, 64), dtype=np.uint8)
    gt[:, 32:] = 1
    gt[40:, :] = 2
    aux = np.arange(64 * 64).reshape(64, 64) // 4  # 1024 tiny segments of 4 pixels
    rep = pmiou(confusion(aux, gt, 1024, 3, 65535, [255]))
    assert rep["pmiou"] < 1.0
    # the many-to-one diagnostic is not fooled into 0: over-segmentation maps back perfectly
    assert rep["majority_miou"] == pytest.approx(100.0)


def test_pmiou_ignore_handling_and_extra_clusters():
    gt = np.array([[0, 0, 1, 1, 11]], dtype=np.uint8)  # 11 = CamVid's ignore value
    aux = np.array([[0, IGN, 1, 2, 2]], dtype=np.uint8)
    conf = confusion(aux, gt, 3, 2, IGN, [11])
    assert conf.sum() == 4 and conf[3, 0] == 1  # the ignored aux pixel counts as a miss of class 0
    iou = iou_matrix(conf)
    assert iou[0, 0] == pytest.approx(0.5)  # 1 / (1 + 2 - 1)
    assert iou[1, 1] == pytest.approx(0.5) and iou[2, 1] == pytest.approx(0.5)
    rep = pmiou(conf, ["a", "b"])
    assert rep["pmiou"] == pytest.approx(50.0)
    assert rep["ignored_aux_share"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="outside"):
        confusion(aux, np.array([[0, 0, 5, 1, 1]]), 3, 2, IGN, [11])
    with pytest.raises(ValueError, match="shape"):
        confusion(aux, gt[:, :4], 3, 2, IGN, [11])


def test_pmiou_absent_class_not_averaged():
    gt = np.zeros((4, 4), np.uint8)
    rep = pmiou(confusion(gt, gt, 2, 3, IGN, [IGN]))
    assert rep["pmiou"] == pytest.approx(100.0)
    assert rep["per_class_iou"]["1"] is None and rep["classes_present"] == 1


def test_same_pixel_bound_matches_one_label_per_pixel(tmp_path):
    from auxseg.images import write_label_png

    gt = np.zeros((4, 5), np.uint8)
    gt[:, 3:] = 1  # class 0: 12 pixels, class 1: 8
    gt[0, 0] = 11  # ignored
    write_label_png(tmp_path / "a.png", gt)
    bound = same_pixel_bound(tmp_path, [11], 3)  # class 2 is absent and not averaged
    assert bound == pytest.approx(100.0 * (1 / 11 + 1 / 8) / 2)
    # the bound is what PmIoU gives one-label-per-pixel labels
    aux = np.arange(gt.size).reshape(gt.shape)
    assert pmiou(confusion(aux, gt, gt.size, 3, -1, [11]))["pmiou"] == pytest.approx(bound)


def test_kmeans_finds_separated_blobs_and_is_seeded():
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:4] * 5
    x = np.concatenate([c + 0.05 * rng.standard_normal((200, 8)).astype(np.float32) for c in centres])
    a = fit_kmeans(x, 4, nredo=5, seed=3)
    b = fit_kmeans(x, 4, nredo=5, seed=3)
    np.testing.assert_array_equal(a, b)
    labels, dist = NearestCentroid(a).assign(x)
    # each blob lands in exactly one cluster, all different
    blob_labels = [set(labels[i * 200 : (i + 1) * 200]) for i in range(4)]
    assert all(len(s) == 1 for s in blob_labels) and len(set.union(*blob_labels)) == 4
    assert dist.max() < 0.5
    with pytest.raises(ValueError, match="at least"):
        fit_kmeans(x[:3], 4)


def test_k_rounds_half_up():
    cfg = AuxLabelsConfig(image_dir="x", num_classes=11, kmeans=KMeansConfig())
    assert resolve_k(cfg) == 17  # 16.5 -> 17, not Python's banker's 16
    cfg.num_classes = 40
    assert resolve_k(cfg) == 60


def test_upsample_nearest_covers_cells():
    coarse = np.array([[0, 1], [2, 3]])
    up = upsample_nearest(coarse, (7, 5), 4)  # ceil(7/4)=2, ceil(5/4)=2
    assert up.shape == (7, 5)
    assert up[0, 0] == 0 and up[3, 3] == 0 and up[4, 4] == 3 and up[0, 4] == 1 and up[6, 0] == 2


@pytest.mark.parametrize("method", ["fast_slic", "skimage"])
def test_superpixels_compact_ids(method):
    rng = np.random.default_rng(0)
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, 32:] = 200
    img = (img + rng.integers(0, 10, img.shape)).astype(np.uint8)
    seg = compute_superpixels(img, 20, 10.0, method)
    assert seg.shape == (48, 64) and seg.dtype == np.int32
    assert seg.min() == 0 and len(np.unique(seg)) == seg.max() + 1
    assert 5 <= seg.max() + 1 <= 40
    # no superpixel straddles the strong vertical edge
    for s in np.unique(seg):
        cols = np.nonzero(seg == s)[1]
        assert cols.max() < 32 or cols.min() >= 32


def test_fit_state_file_keeps_its_layout(tmp_path):
    """fit_state.npz: the four arrays and one ``info`` JSON string, summary first and ``num_labels`` last (the
    order the manifest's clustering entry repeats); loading gives the typed state back."""
    import json

    from auxlabels.fit_state import FIT_STATE, FitState

    fit = FitState(centroids=np.eye(3, 4, dtype=np.float32), refs=np.eye(3, 4, dtype=np.float32),
                   ref_labels=np.arange(3), thresholds=np.array([0.5, np.inf, 0.25]), num_labels=3,
                   soft_distance_scale=0.125, summary={"n_fit_images": 2, "fit_pixels": 40})
    fit.save(tmp_path)
    with np.load(tmp_path / FIT_STATE) as z:
        assert z.files == ["centroids", "refs", "ref_labels", "thresholds", "info"]
        assert str(z["info"]) == json.dumps({"n_fit_images": 2, "fit_pixels": 40, "soft_distance_scale": 0.125,
                                             "num_labels": 3})
    np.testing.assert_array_equal(np.load(tmp_path / "centroids.npy"), fit.centroids)
    back = FitState.load(tmp_path)
    assert (back.num_labels, back.soft_distance_scale, back.summary) == (3, 0.125, fit.summary)
    for name in ("centroids", "refs", "ref_labels", "thresholds"):
        np.testing.assert_array_equal(getattr(back, name), getattr(fit, name))
    assert FitState.load(tmp_path).info == fit.info and list(fit.info)[-1] == "num_labels"
