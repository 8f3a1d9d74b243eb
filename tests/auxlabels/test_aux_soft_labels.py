"""Soft auxiliary labels: the rule on hand-built arrays, and the stage writing priors on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from auxlabels.config import AuxLabelsConfig
from auxlabels.pipeline import run
from auxlabels.soft_labels import SoftSettings, distance_softmax, own_prior, soft_prior, superpixel_mix
from auxseg.config import ConfigError, load_config
from auxseg.contracts.label_folder import read_label_folder
from auxseg.contracts.priors import QUANT, read_prior, read_prior_topk
from auxseg.images import read_label
from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "auxlabels" / "tiny.yaml"


def settings(**kw) -> SoftSettings:
    base = dict(priors_dir="", topk=2, temperature=1.0, outlier_temperature=2.0, superpixel_weight=0.5,
                distance_scale=1.0)
    return SoftSettings(**{**base, **kw})


# ----------------------------------------------------------------------------- the rule, by hand


def test_distance_softmax_hand_computed():
    # d = 0 and ln 3 at temperature 1: exp(0) : exp(-ln 3) = 3 : 1
    p = distance_softmax(np.array([[0.0], [np.log(3.0)]]), 1.0)
    np.testing.assert_allclose(p[:, 0], [0.75, 0.25])


def test_outliers_use_the_higher_temperature():
    sq = np.array([0.0, np.log(3.0)])[:, None, None] * np.ones((2, 1, 2))
    outlier = np.array([[False, True]])
    p = own_prior(sq, outlier, settings(outlier_temperature=2.0, distance_scale=1.0))
    np.testing.assert_allclose(p[:, 0, 0], [0.75, 0.25])
    np.testing.assert_allclose(p[:, 0, 1], [np.sqrt(3) / (np.sqrt(3) + 1), 1 / (np.sqrt(3) + 1)])  # 3^(1/2) : 1


def test_superpixel_mix_hand_computed():
    # a 1 x 2 grid at stride 2 (a 2 x 4 image), K = 2; cell 0 says label 0 (p 1, 0), cell 1 says (0.5, 0.5)
    p_own = np.array([[1.0, 0.0], [0.5, 0.5]])
    segments = np.array([[0, 0, 0, 1], [0, 0, 0, 1]])  # superpixel 0: cell 0 (4 px) + 2 px of cell 1; 1: 2 px of cell 1
    outlier = np.array([[False, False]])
    mixed = superpixel_mix(p_own, outlier, segments, stride=2, weight=0.5)
    pbar0 = (4 * np.array([1.0, 0.0]) + 2 * np.array([0.5, 0.5])) / 6  # (5/6, 1/6)
    pbar1 = np.array([0.5, 0.5])
    np.testing.assert_allclose(mixed[0], 0.5 * p_own[0] + 0.5 * pbar0)
    np.testing.assert_allclose(mixed[1], 0.5 * p_own[1] + 0.5 * (0.5 * pbar0 + 0.5 * pbar1))
    # outlier cells do not vote: with cell 1 an outlier, superpixel 0's mean is cell 0's, superpixel 1 keeps cell 1's own
    mixed = superpixel_mix(p_own, np.array([[False, True]]), segments, stride=2, weight=0.5)
    np.testing.assert_allclose(mixed[1], 0.5 * p_own[1] + 0.5 * (0.5 * np.array([1.0, 0.0]) + 0.5 * p_own[1]))
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0)


def test_superpixel_mix_table_and_sort_paths_agree(monkeypatch):
    import auxlabels.soft_labels as soft

    rng = np.random.default_rng(0)
    p_own = rng.dirichlet(np.ones(4), size=12)  # a 3 x 4 grid, K = 4
    segments = rng.integers(0, 5, size=(9, 11)) * 7  # sparse-ish ids, an image of 9 x 11 px at stride 3
    outlier = rng.random((3, 4)) < 0.3
    table = superpixel_mix(p_own, outlier, segments, 3, 0.4)
    monkeypatch.setattr(soft, "_BINCOUNT_LIMIT", 0)
    np.testing.assert_allclose(superpixel_mix(p_own, outlier, segments, 3, 0.4), table)
    np.testing.assert_allclose(table.sum(axis=1), 1.0)


def test_soft_prior_is_dense_and_normalised():
    ids = np.array([[[2, 0]], [[1, 2]]])  # [k=2, h=1, w=2]
    sq = np.array([[[0.0, 0.0]], [[np.log(3.0), np.log(3.0)]]])
    prior = soft_prior(ids, sq, np.zeros((1, 2), bool), None, 4, 3, settings())
    assert prior.shape == (3, 1, 2) and prior.dtype == np.float32
    np.testing.assert_allclose(prior[:, 0, 0], [0, 0.25, 0.75])
    np.testing.assert_allclose(prior[:, 0, 1], [0.75, 0, 0.25])


# ----------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), SyntheticSpec(num_train=0, num_val=6, height=48, width=64, seed=3)
    )


def tiny(data: Path, out: Path, *overrides: str) -> AuxLabelsConfig:
    return load_config(AuxLabelsConfig, TINY,
                       [f"image_dir={data / 'val'}", f"gt_dir={data / 'valannot'}", f"out_dir={out}", *overrides])


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("soft_runs")
    off = run(tiny(data, root / "off"))
    on = run(tiny(data, root / "on", "soft_labels.enabled=true"))
    return root, off, on


def test_hard_labels_identical_with_soft_on_and_off(runs):
    root, off, on = runs
    assert on["labels_sha256"] == off["labels_sha256"]
    for rel in off["images"]:
        assert (root / "on/labels" / rel).read_bytes() == (root / "off/labels" / rel).read_bytes()
    assert "prior" not in off and not (root / "off/priors").exists()


def test_priors_follow_the_contract_and_the_hard_labels(runs):
    root, _, on = runs
    prior = on["prior"]
    assert (prior["format"], prior["topk"], prior["stride"]) == ("auxseg.prior/1", 3, 4)
    assert prior["distance_scale"] > 0 and prior["superpixel_weight"] == 0.5
    folder = read_label_folder(root / "on")  # validates every prior file and priors_sha256
    assert folder.has_priors and folder.prior_stride == 4
    agree = total = 0
    for rel in folder.images:
        label = read_label(folder.label_path(rel))
        ids, probs = read_prior_topk(folder.prior_path(rel), folder.num_labels)
        assert ids.shape == (3, 12, 16)  # 48 x 64 at stride 4
        dense = read_prior(folder.prior_path(rel), folder.num_labels, size=label.shape, stride=4)
        np.testing.assert_allclose(dense.sum(axis=0), 1.0, atol=1e-5)
        valid = label != folder.ignore_index
        agree += int((dense.argmax(axis=0)[valid] == label[valid]).sum())
        total += int(valid.sum())
    assert agree / total > 0.75  # the soft vote mixes in each cell's own nearest centroid, so not all


def test_outlier_cells_get_flatter_priors(data, tmp_path):
    # without superpixels the ignore pixels of the PNG are exactly the outlier cells (the prior is p_own)
    args = ("soft_labels.enabled=true", "superpixels.enabled=false", "outliers.fraction=0.2")
    sharp = run(tiny(data, tmp_path / "t1", *args, "soft_labels.outlier_temperature=1"))
    flat = run(tiny(data, tmp_path / "t4", *args, "soft_labels.outlier_temperature=4"))
    assert sharp["labels_sha256"] == flat["labels_sha256"]
    top = {"t1": [], "t4": []}
    inlier_top = []
    inliers_same = True
    for rel in flat["images"]:
        label = read_label(tmp_path / "t4/labels" / rel)[::4, ::4]  # one pixel per cell
        outlier = label == 255
        for name in top:
            _, probs = read_prior_topk(tmp_path / name / "priors" / rel.replace(".png", ".npz"))
            top[name].append(probs[0][outlier])
        p1 = read_prior_topk(tmp_path / "t1/priors" / rel.replace(".png", ".npz"))[1]
        p4 = read_prior_topk(tmp_path / "t4/priors" / rel.replace(".png", ".npz"))[1]
        inliers_same &= bool(np.array_equal(p1[:, ~outlier], p4[:, ~outlier]))
        inlier_top.append(p4[0][~outlier])
    t1, t4 = np.concatenate(top["t1"]), np.concatenate(top["t4"])
    assert t1.size > 0 and inliers_same
    assert np.all(t4 <= t1 + 1.0 / QUANT) and t4.mean() < t1.mean() - 0.02  # the same cells, flatter
    assert t4.mean() < np.concatenate(inlier_top).mean() - 0.05  # and flatter than the inlier cells


def test_resume_redoes_exactly_the_damaged_priors(data, tmp_path):
    # outliers off: a recomputed feature can differ from the fit pass's in the last float bit, which may move a
    # cell lying exactly on the outlier threshold (the hard labels share this; their vote usually hides it)
    args = ("soft_labels.enabled=true", "outliers.enabled=false")
    out = tmp_path / "run"
    ref = run(tiny(data, out, *args))  # the uninterrupted run
    priors = sorted((out / "priors").glob("*.npz"))
    priors[0].unlink()  # lost
    priors[1].write_bytes(priors[1].read_bytes()[:30])  # truncated
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    before = {p.name: p.stat().st_mtime_ns for p in priors[2:]}
    again = run(tiny(data, out, *args))
    assert again["prior"]["priors_sha256"] == ref["prior"]["priors_sha256"]
    assert again["labels_sha256"] == ref["labels_sha256"]
    assert {p.name: p.stat().st_mtime_ns for p in priors[2:]} == before  # untouched images were not redone
    assert read_label_folder(out).has_priors


def test_soft_labels_settings_are_part_of_the_fingerprint(runs, data):
    root, _, _ = runs
    with pytest.raises(ConfigError, match="other settings"):
        run(tiny(data, root / "on", "soft_labels.enabled=true", "soft_labels.temperature=0.5"))


@pytest.mark.parametrize("override, key", [
    ("clusterer=dbscan", "soft_labels.enabled"),
    ("soft_labels.topk=0", "soft_labels.topk"),
    ("soft_labels.temperature=0", "soft_labels.temperature"),
    ("soft_labels.superpixel_weight=1.5", "soft_labels.superpixel_weight"),
])
def test_bad_settings_are_refused(data, tmp_path, override, key):
    with pytest.raises(ConfigError, match=key):
        run(tiny(data, tmp_path / "x", "soft_labels.enabled=true", override))
