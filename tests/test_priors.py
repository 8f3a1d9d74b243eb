"""The soft-prior format (auxseg.contracts.priors) and its place in the label folder (manifest key ``prior``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from auxseg.contracts.label_folder import LabelFolderError, read_label_folder, write_groundtruth_label_folder
from auxseg.contracts.priors import (
    QUANT,
    prior_num_labels,
    prior_rel,
    quantise,
    read_prior,
    read_prior_topk,
    topk_of,
    write_label_priors,
    write_prior,
)
from auxseg.images import read_label
from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset


def sparse_prior(rng, k_all, k, h, w):
    """A random prior with at most k non-zero labels per pixel, [K, h, w], summing to 1."""
    prior = np.zeros((k_all, h, w))
    for y in range(h):
        for x in range(w):
            ids = rng.choice(k_all, size=k, replace=False)
            prior[ids, y, x] = rng.dirichlet(np.ones(k))
    return prior


def test_prior_rel_maps_suffix_to_npz():
    assert prior_rel("seq01/0001.jpg") == "seq01/0001.npz"


def test_quantise_hand_computed():
    # 0.5, 0.3, 0.2 -> 127.5, 76.5, 51 -> floors 127, 76, 51 (254); the one unit left goes to the first .5 remainder
    q = quantise(np.array([0.5, 0.3, 0.2])[:, None])
    assert q[:, 0].tolist() == [128, 76, 51] and q.dtype == np.uint8


def test_topk_orders_by_probability_then_id_and_renormalises():
    prior = np.array([0.1, 0.4, 0.1, 0.4])[:, None, None]
    ids, probs = topk_of(prior, 3)
    assert ids[:, 0, 0].tolist() == [1, 3, 0]
    np.testing.assert_allclose(probs[:, 0, 0], [4 / 9, 4 / 9, 1 / 9])


def test_round_trip_within_quantisation_error(tmp_path):
    rng = np.random.default_rng(0)
    prior = sparse_prior(rng, 7, 3, 5, 6)
    path = tmp_path / "p" / "a.npz"
    write_prior(path, prior, topk=3)
    dense = read_prior(path, 7)
    assert dense.shape == (7, 5, 6) and dense.dtype == np.float32
    assert np.abs(dense - prior).max() <= 1.0 / QUANT + 1e-6
    np.testing.assert_allclose(dense.sum(axis=0), 1.0, atol=1e-6)
    ids, probs = read_prior_topk(path)
    assert ids.shape == probs.shape == (3, 5, 6)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-6)
    assert np.array_equal(ids[0], prior.argmax(axis=0))  # most probable first


def test_truncation_renormalises_the_top_k(tmp_path):
    prior = np.array([0.5, 0.3, 0.15, 0.05])[:, None, None] * np.ones((4, 2, 2))
    write_prior(tmp_path / "a.npz", prior, topk=2)
    dense = read_prior(tmp_path / "a.npz", 4)
    np.testing.assert_allclose(dense[:, 0, 0], [0.625, 0.375, 0, 0], atol=1.0 / QUANT)
    np.testing.assert_allclose(dense.sum(axis=0), 1.0, atol=1e-6)


def test_resize_nearest_with_and_without_stride(tmp_path):
    prior = np.zeros((3, 2, 2))
    prior[0, 0, 0] = prior[1, 0, 1] = prior[2, 1, 0] = prior[2, 1, 1] = 1.0
    write_prior(tmp_path / "a.npz", prior, topk=1)
    big = read_prior(tmp_path / "a.npz", 3, size=(4, 4))
    assert big.argmax(axis=0).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]]
    # an image of 3 x 3 pixels at stride 2 has a 2 x 2 grid: pixel row 1 belongs to cell 0 (1 // 2)
    odd = read_prior(tmp_path / "a.npz", 3, size=(3, 3), stride=2)
    assert odd.argmax(axis=0).tolist() == [[0, 0, 1], [0, 0, 1], [2, 2, 2]]


def test_compact_on_a_camvid_sized_grid(tmp_path):
    # CamVid 720 x 960 at stride 8 is a 90 x 120 grid; K = 17 (1.5 x 11 classes); piecewise-smooth prior
    k_all, h, w = 17, 90, 120
    yy, xx = np.mgrid[0:h, 0:w]
    centre = (yy // 15 * 3 + xx // 20) % k_all
    logits = -0.5 * (np.arange(k_all)[:, None, None] - centre[None]) ** 2 + 0.01 * np.sin(xx + yy)[None]
    prior = np.exp(logits) / np.exp(logits).sum(axis=0)
    write_prior(tmp_path / "a.npz", prior, topk=3)
    size = (tmp_path / "a.npz").stat().st_size
    assert size < 3 * h * w * 2  # below even the raw top-3 bytes (ids + probs), far below dense float32
    assert prior_num_labels(tmp_path / "a.npz") == 17


def test_k_above_256_uses_uint16_ids(tmp_path):
    prior = np.zeros((300, 1, 2))
    prior[299, 0, 0] = prior[7, 0, 1] = 1.0
    write_prior(tmp_path / "a.npz", prior, topk=2)
    ids, _ = read_prior_topk(tmp_path / "a.npz", 300)
    assert ids[0, 0].tolist() == [299, 7]


@pytest.mark.parametrize("damage, message", [
    ("missing", "prior file missing"),
    ("garbage", "not a readable prior file"),
    ("truncated", "not a readable prior file"),
    ("wrong_k", "K=4 labels"),
    ("bad_sum", "do not sum"),
])
def test_bad_files_give_one_line_naming_the_file(tmp_path, damage, message):
    path = tmp_path / "a.npz"
    write_prior(path, np.full((4, 3, 3), 0.25), topk=2)
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"not a zip at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "bad_sum":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["probs"][0, 0, 0] += 1
        np.savez_compressed(path, **arrays)
    with pytest.raises(LabelFolderError, match=message) as err:
        read_prior(path, 5 if damage == "wrong_k" else 4)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_write_refuses_malformed_arrays(tmp_path):
    with pytest.raises(ValueError, match="K, H, W"):
        write_prior(tmp_path / "a.npz", np.ones((4, 4)), topk=2)
    with pytest.raises(ValueError, match="negative"):
        write_prior(tmp_path / "a.npz", -np.ones((2, 2, 2)), topk=2)


# ----------------------------------------------------------------------------- the label folder


@pytest.fixture(scope="module")
def prior_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    make_synthetic_dataset(root / "data", SyntheticSpec(num_train=3, num_val=0, height=24, width=32, seed=1))
    folder = write_groundtruth_label_folder(root / "data", root / "labels")
    return write_label_priors(folder, confidence=0.8, topk=2, stride=4)


def _copy(src, dst, **manifest_prior):
    shutil.copytree(src, dst)
    if manifest_prior:
        m = json.loads((dst / "manifest.json").read_text())
        m["prior"].update(manifest_prior)
        (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_folder_with_priors(prior_folder):
    f = read_label_folder(prior_folder)
    assert f.has_priors and (f.prior_topk, f.prior_stride) == (2, 4)
    rel = f.images[0]
    assert f.prior_path(rel) == prior_folder / "priors" / prior_rel(rel)
    label = read_label(f.label_path(rel))
    dense = read_prior(f.prior_path(rel), f.num_labels, size=label.shape, stride=f.prior_stride)
    cells = label[::4, ::4]
    assert np.array_equal(dense.argmax(axis=0)[::4, ::4][cells < f.num_labels], cells[cells < f.num_labels])
    # 0.8 on the label, 0.2 / 5 on each other; the top 2 renormalised: 0.8 / 0.84
    top = dense.max(axis=0)[::4, ::4][cells < f.num_labels]
    np.testing.assert_allclose(top, 0.8 / 0.84, atol=1.0 / QUANT)


def test_folder_without_priors(tmp_path, prior_folder):
    folder = shutil.copytree(prior_folder, tmp_path / "f")
    m = json.loads((folder / "manifest.json").read_text())
    del m["prior"]
    (folder / "manifest.json").write_text(json.dumps(m))
    assert not read_label_folder(folder).has_priors


def test_missing_prior_file_is_refused(tmp_path, prior_folder):
    folder = _copy(prior_folder, tmp_path / "f")
    victim = sorted((folder / "priors").rglob("*.npz"))[1]
    victim.unlink()
    with pytest.raises(LabelFolderError, match="1 prior files missing") as err:
        read_label_folder(folder)
    assert str(victim) in str(err.value)


def test_wrong_k_prior_file_is_refused(tmp_path, prior_folder):
    folder = _copy(prior_folder, tmp_path / "f")
    victim = sorted((folder / "priors").rglob("*.npz"))[0]
    write_prior(victim, np.full((9, 6, 8), 1 / 9), topk=2)
    with pytest.raises(LabelFolderError, match="K=9") as err:
        read_label_folder(folder)
    assert str(victim) in str(err.value)


def test_changed_priors_are_refused_unless_hash_is_off(tmp_path, prior_folder):
    folder = _copy(prior_folder, tmp_path / "f")
    victim = sorted((folder / "priors").rglob("*.npz"))[0]
    ids, probs = read_prior_topk(victim)
    write_prior(victim, np.full((6, *ids.shape[1:]), 1 / 6), topk=2)
    with pytest.raises(LabelFolderError, match="priors_sha256 does not match") as err:
        read_label_folder(folder)
    assert str(folder / "manifest.json") in str(err.value)
    assert read_label_folder(folder, verify_hash=False).has_priors


@pytest.mark.parametrize("change, message", [
    ({"format": "auxseg.prior/0"}, "prior format"),
    ({"topk": 0}, "prior.topk"),
    ({"stride": "8"}, "prior.stride"),
    ({"priors_sha256": None}, "priors_sha256 missing"),
])
def test_bad_prior_key_is_refused(tmp_path, prior_folder, change, message):
    folder = _copy(prior_folder, tmp_path / "f", **change)
    with pytest.raises(LabelFolderError, match=message) as err:
        read_label_folder(folder)
    assert str(folder / "manifest.json") in str(err.value)
