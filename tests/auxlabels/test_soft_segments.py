"""Semantic soft segments: the matting Laplacian, the superpixel affinities, the sparsification solver,
a two-region image split along its edge, and the label folder written by ``auxseg softsegments``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import distance_transform_edt
from scipy.special import erf

from auxlabels.matting import laplacian, matting_affinity, matting_laplacian
from auxlabels.soft_segments import (
    SoftSegmentsParams,
    _solve_sum_coupled,
    colour_affinity,
    constrained_sparsification,
    semantic_affinity,
    smallest_eigenvectors,
    soft_segments,
    soft_segments_of_image,
    superpixel_graph,
)
from auxseg.contracts.label_folder import read_label_folder
from auxseg.contracts.priors import read_prior
from auxseg.images import read_label

FAST = dict(eigenvectors=16, initial_layers=8, initial_iterations=12, final_outer_iterations=5,
            final_cg_iterations=50, final_polish_iterations=200)  # small enough for 32x40 images


def test_matting_laplacian_symmetric_psd_constant_null_space():
    img = np.random.default_rng(0).random((9, 11, 3))
    L = matting_laplacian(img)
    dense = L.toarray()
    assert np.abs(dense - dense.T).max() < 1e-12
    assert np.abs(L @ np.ones(99)).max() < 1e-10
    assert np.linalg.eigvalsh(dense)[0] >= -1e-8


def test_matting_affinity_of_a_flat_3x3_image_is_one_ninth():
    # one window, every colour equal to the mean: each pair gets (1 + 0) / 9
    W = matting_affinity(np.full((3, 3, 3), 0.4)).toarray()
    assert np.allclose(W, 1 / 9)
    L = laplacian(W).toarray()
    assert np.allclose(np.diag(L), 8 / 9) and np.allclose(L[0, 1:], -1 / 9)


def test_matting_affinity_hand_computed_two_colour_window():
    # 3x3 grey image, left column 1, rest 0 (all channels alike): mean 1/3, per-channel variance 2/9,
    # covariance (2/9) * ones(3, 3) + eps/9 I; for pixels i, j in the same column the Mahalanobis term
    # is x_i^T Sigma^-1 x_j with x = (v - 1/3) * (1, 1, 1): = 3 (v_i - 1/3)(v_j - 1/3) / (3 * 2/9) in the eps -> 0 limit
    img = np.zeros((3, 3, 3))
    img[:, 0] = 1.0
    W = matting_affinity(img, eps=1e-12).toarray()
    a = (2 / 3) * (2 / 3) * 3 / (3 * 2 / 9)  # both in the bright column: 2
    b = (2 / 3) * (-1 / 3) * 3 / (3 * 2 / 9)  # bright and dark: -1
    assert W[0, 3] == pytest.approx((1 + a) / 9, abs=1e-6)  # (0,0) and (1,0)
    assert W[0, 1] == pytest.approx((1 + b) / 9, abs=1e-6)  # (0,0) and (0,1): exactly 0
    assert W[1, 2] == pytest.approx((1 + 0.5) / 9, abs=1e-6)  # two dark pixels: 3 (1/9) / (2/3) = 0.5


def test_superpixel_affinities_sit_between_centroids():
    labels = np.zeros((4, 6), np.int64)
    labels[:, 3:] = 1  # two 4x3 superpixels, centroids (1.5, 1) and (1.5, 4) -> pixels (2, 1) and (2, 4)
    graph = superpixel_graph(labels)
    assert graph.pairs.tolist() == [[0, 1]]
    assert graph.centroid_index.tolist() == [2 * 6 + 1, 2 * 6 + 4]
    feats = np.zeros((4, 6, 3))
    feats[:, 3:] = [0.3, 0.4, 0.0]  # mean distance 0.5
    S = semantic_affinity(graph, feats).toarray()
    expected = erf(20 * ((1 - 0.5) - 0.85))  # repulsive: about -1
    assert S[13, 16] == pytest.approx(expected) and S[16, 13] == pytest.approx(expected)
    assert np.count_nonzero(S) == 2
    C = colour_affinity(graph, feats, radius=0.2).toarray()
    assert np.count_nonzero(C) == 0  # centroids 0.5 apart (of the width): no colour affinity
    C = colour_affinity(graph, np.zeros((4, 6, 3)), radius=0.6).toarray()
    assert C[13, 16] == pytest.approx((erf(50 * 0.05) + 1) / 2)


def test_superpixel_adjacency_is_8_connected():
    # 0 and 2 touch only at a corner; 3 lies below 1 and 2
    labels = np.array([[0, 1, 1], [1, 2, 2], [3, 3, 3]])
    assert superpixel_graph(labels).pairs.tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]]


def test_sum_coupled_solver_matches_the_dense_system():
    rng = np.random.default_rng(1)
    k, e = 4, 5
    blocks = np.stack([(lambda m: m @ m.T + e * np.eye(e))(rng.normal(size=(e, e))) for _ in range(k - 1)])
    T = (lambda m: m @ m.T + np.eye(e))(rng.normal(size=(e, e)))
    rhs = rng.normal(size=(e, k - 1))
    dense = np.kron(np.ones((k - 1, k - 1)), T)  # the official tA: blockdiag(A_k) + repmat(T)
    for i in range(k - 1):
        dense[i * e:(i + 1) * e, i * e:(i + 1) * e] += blocks[i]
    expected = np.linalg.solve(dense, rhs.T.ravel()).reshape(k - 1, e).T
    assert np.allclose(_solve_sum_coupled(blocks, T, rhs), expected)


def _two_regions(h=32, w=40, seed=0):
    """Two flat colours split by a curved edge, with a little noise; returns image and the right-hand mask."""
    yy, xx = np.mgrid[0:h, 0:w]
    mask = xx > 16 + 6 * np.sin(yy / h * np.pi)
    img = np.where(mask[..., None], [0.15, 0.35, 0.8], [0.85, 0.3, 0.2])
    img = img + np.random.default_rng(seed).normal(0, 0.01, img.shape)
    return np.clip(img, 0, 1), mask


def test_two_regions_split_along_their_edge():
    img, mask = _two_regions()
    res = soft_segments(img, img, SoftSegmentsParams(segments=2, **FAST))
    layers = res.layers
    assert layers.shape == (2, 32, 40)
    assert layers.min() >= 0 and np.allclose(layers.sum(axis=0), 1)
    lab = layers.argmax(axis=0)
    pred = lab == lab[0, -1]  # the segment holding the right-hand corner
    iou = (pred & mask).sum() / (pred | mask).sum()
    assert iou > 0.95
    # every predicted boundary pixel lies within 2 px of the true edge
    true_edge = np.zeros_like(mask)
    true_edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    pred_edge = np.zeros_like(pred)
    pred_edge[:, :-1] |= pred[:, :-1] != pred[:, 1:]
    pred_edge[:-1] |= pred[:-1] != pred[1:]
    assert pred_edge.any()
    assert distance_transform_edt(~true_edge)[pred_edge].max() <= 2


def test_full_size_layers_are_upsampled_and_normalised():
    img, _ = _two_regions(48, 60)
    image = (img * 255).astype(np.uint8)
    res = soft_segments_of_image(image, None, SoftSegmentsParams(working_side=30, segments=3, **FAST))
    assert res.layers.shape == (3, 48, 60) and res.layers.dtype == np.float32
    assert res.layers.min() >= 0 and np.allclose(res.layers.sum(axis=0), 1, atol=1e-5)
    assert res.info["working_shape"] == [24, 30]


def test_constrained_sparsification_keeps_sum_to_one():
    img, _ = _two_regions(16, 20)
    L = matting_laplacian(img)
    vals, vecs = smallest_eigenvectors(L, 8)
    assert vals[0] >= -1e-8  # the matting Laplacian alone is PSD
    init = (np.arange(320) % 4).astype(np.int64)
    layers = constrained_sparsification(vecs, vals, L, init, iterations=8)
    assert layers.shape[0] == 320 and 1 <= layers.shape[1] <= 4
    assert np.allclose(layers.sum(axis=1), 1)


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "img"
    for i, rel in enumerate(("a.png", "sub/b.jpg")):
        img, _ = _two_regions(32, 40, seed=i)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).astype(np.uint8)).save(root / rel)  # a PNG and a JPEG
    return root


def _args(images, out, *extra):
    fast = [f"soft.{k}={v}" for k, v in FAST.items()]
    return ["softsegments", f"image_dir={images}", f"out_dir={out}", "soft.segments=3", "progress=false", *fast, *extra]


def test_command_writes_a_label_folder_with_priors(images, tmp_path, capsys):
    from loop.cli import main

    out = tmp_path / "soft"
    assert main(_args(images, out, "features=colour")) == 0
    assert "2 soft segmentations" in capsys.readouterr().out
    folder = read_label_folder(out)  # checks labels, priors, both hashes and K
    assert folder.scope == "image" and folder.num_labels == 3 and folder.has_priors
    assert folder.images == ("a.png", "sub/b.jpg")
    for rel in folder.images:
        prior = read_prior(folder.prior_path(rel), 3)
        label = read_label(folder.label_path(rel))
        assert prior.shape == (3, 32, 40) and label.shape == (32, 40)
        assert np.allclose(prior.sum(axis=0), 1, atol=1e-5) and prior.min() >= 0
        # the PNG is the argmax of the layers (up to the priors' 1/255 quantisation)
        top = np.take_along_axis(prior, label[None].astype(np.int64), axis=0)[0]
        assert np.all(top >= prior.max(axis=0) - 2 / 255)
    m = json.loads((out / "manifest.json").read_text())
    assert m["prior"]["topk"] == 3 and m["prior"]["stride"] == 1 and m["clusterer"] == "soft_segments"
    assert m["seconds_per_image"] > 0 and m["soft_segments"]["eigenvectors"] == FAST["eigenvectors"]


def test_command_with_extractor_features_and_errors(images, tmp_path, capsys):
    from loop.cli import main

    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "soft"
    args = _args(images, out, "extractor.name=resnet18", "extractor.random_init=true", "extractor.layer=layer1",
                 "guide_radius=2")
    assert main(args) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["images"] == ["a.png", "sub/b.jpg"] and [s["path"] for s in m["skipped"]] == ["broken.png"]
    assert m["extractor"]["random_init"] is True and m["semantic_features"].startswith("feature view")
    assert read_label_folder(out).has_priors
    capsys.readouterr()
    # one-line errors: a bad value (exit 2), a broken image with on_bad_image=stop (exit 1, names the file)
    assert main([*args, "soft.eig_shift=0"]) == 2
    assert "config error: soft.eig_shift" in capsys.readouterr().err
    assert main([*args, "on_bad_image=stop"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "[softsegments] 3 images, 2 already done, 1 to segment"  # the earlier run is resumed
    assert len(lines) == 2 and lines[1].startswith("auxseg softsegments: error: ") and "broken.png" in lines[1]


def test_a_rerun_resumes_from_the_journal(images, tmp_path, capsys):
    """Finished images are skipped; a missing file or a torn journal line is redone; other settings are refused."""
    from loop.cli import main

    out = tmp_path / "soft"
    args = _args(images, out, "features=colour")
    assert main(args) == 0
    first = json.loads((out / "manifest.json").read_text())
    journal = (out / "progress.jsonl").read_text().splitlines()
    assert [json.loads(line)["rel"] for line in journal] == ["a.png", "sub/b.jpg"]
    stamp = (out / "labels" / "a.png").stat().st_mtime_ns
    capsys.readouterr()

    assert main(args) == 0  # everything done: nothing recomputed, the same folder
    assert "2 already done, 0 to segment" in capsys.readouterr().err
    again = json.loads((out / "manifest.json").read_text())
    assert (out / "labels" / "a.png").stat().st_mtime_ns == stamp
    assert again["labels_sha256"] == first["labels_sha256"] and again["prior"] == first["prior"]
    assert again["seconds_per_image"] == first["seconds_per_image"]

    (out / "labels" / "sub" / "b.png").unlink()  # a lost file ...
    (out / "progress.jsonl").write_text(journal[0] + "\n" + journal[1][:20])  # ... and a line cut by a kill
    assert main(args) == 0
    assert "1 already done, 1 to segment" in capsys.readouterr().err
    assert read_label_folder(out).images == ("a.png", "sub/b.jpg")  # both hashes checked again
    assert (out / "labels" / "a.png").stat().st_mtime_ns == stamp
    assert main(args) == 0  # the torn line was cut off, not glued to the new record
    assert "2 already done, 0 to segment" in capsys.readouterr().err

    assert main([*args, "soft.segments=4"]) == 2  # another run's work is never overwritten
    assert "other settings" in capsys.readouterr().err
    assert main([*args, "resume=false"]) == 2
    assert "resume=true" in capsys.readouterr().err
    assert read_label_folder(out).num_labels == 3
    (out / "progress.jsonl").unlink()  # a finished folder without a journal is still another run's work
    assert main([*args, "soft.segments=4"]) == 2
    assert "other settings" in capsys.readouterr().err and read_label_folder(out).num_labels == 3
