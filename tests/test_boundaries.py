"""BSDS-style boundary evaluation (boundaries.evaluation), the classical baselines and `auxseg boundaries`."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from boundaries.baselines import (
    canny_boundaries,
    non_max_suppression,
    slic_boundaries,
    sobel_boundaries,
    to_uint8,
)
from boundaries.evaluation import (
    BoundaryError,
    average_precision,
    bsds_average_precision,
    evaluate_image,
    guo_hall_tables,
    label_boundaries,
    match_boundaries,
    read_boundary_map,
    read_bsds_mat,
    seg_to_boundaries,
    summarize,
    thin_boundaries,
    thresholds,
    tolerance_px,
)

N = 200  # 200x200 images: tolerance 0.0075 * 282.8 = 2.12 px


def vline(col: int, rows: slice = slice(None), shape=(N, N)) -> np.ndarray:
    b = np.zeros(shape, bool)
    b[rows, col] = True
    return b


def scores(pb, gts, valid=None, n=99, thin=True):
    ts = thresholds(n)
    return summarize(evaluate_image(pb, gts, valid, ts, thin=thin)[None], ts)


# ----------------------------------------------------------------------------- conventions


def test_thresholds_and_tolerance_follow_bsds():
    ts = thresholds(99)
    assert ts[0] == pytest.approx(0.01) and ts[-1] == pytest.approx(0.99) and len(ts) == 99
    assert tolerance_px((360, 480)) == pytest.approx(4.5)  # 0.0075 * 600
    assert tolerance_px((N, N)) == pytest.approx(0.0075 * N * np.sqrt(2))


def test_seg2bmap_convention_right_lower_and_lower_right_neighbour():
    seg = np.array([[0, 0, 0],
                    [0, 1, 1],
                    [0, 1, 1]])
    # (0,0) differs only from its lower-right neighbour; the last row compares to the right only,
    # the last column downwards only
    expected = np.array([[1, 1, 1],
                         [1, 0, 0],
                         [1, 0, 0]], bool)
    assert (seg_to_boundaries(seg) == expected).all()


def test_ignore_pixels_make_no_boundary_and_are_masked_with_a_margin():
    seg = np.zeros((10, 10), np.uint8)
    seg[:, 4:7] = 1
    seg[:, 7:] = 255
    bdry, valid = label_boundaries(seg, ignore_index=255, ignore_margin=1)
    assert (bdry == vline(3, shape=(10, 10))).all()  # 0|1 at column 3; 1|255 at column 6 is no boundary
    assert valid[:, :6].all() and not valid[:, 6:].any()  # column 6 is next to the ignore block
    _, valid0 = label_boundaries(seg, ignore_index=255, ignore_margin=0)
    assert valid0[:, :7].all() and not valid0[:, 7:].any()


def test_ignored_region_is_left_out_of_precision():
    seg = np.zeros((N, N), np.uint8)
    seg[:, 100:150] = 1
    seg[:, 150:] = 255
    gt, valid = label_boundaries(seg, 255, 1, thin=True)
    assert (gt == vline(99)).all()
    pb = (vline(99) | vline(170)).astype(float)  # a second line inside the ignore region
    s = scores(pb, [gt], valid)
    assert s.ods_p == 1.0 and s.ods_r == 1.0
    s_unmasked = scores(pb, [gt], None)
    assert s_unmasked.ods_p == pytest.approx(0.5)  # 200 of 400 predicted pixels


# ----------------------------------------------------------------------------- matching


def test_perfect_map_scores_one():
    gt = vline(100)
    s = scores(gt.astype(float), [gt])
    assert s.ods_f == 1.0 and s.ois_f == 1.0 and s.ap == 1.0
    assert s.bsds_ap == 0.0  # BSDS: a binary map reaches one recall only, and its AP is 0
    soft = scores(0.6 * gt, [gt])  # P = R = 1 up to t = 0.6, nothing above
    assert soft.ods_f == 1.0 and soft.ap == 1.0
    # BSDS interpolates P from (R=0, P=0) to (R=1, P=1): P(r) = r, sum over r = 0, .01, .., 1 times .01
    assert soft.bsds_ap == pytest.approx(0.505)


def test_shift_within_tolerance_still_scores_one():
    s = scores(vline(101).astype(float), [vline(100)])  # 1 px < 2.12 px
    assert s.ods_f == 1.0 and s.ois_f == 1.0


def test_shift_beyond_tolerance_scores_less_hand_computed():
    # top half 1 px off (matched), bottom half 4 px off (> 2.12 px: unmatched)
    pb = (vline(101, slice(0, 100)) | vline(104, slice(100, N))).astype(float)
    counts = evaluate_image(pb, [vline(100)], n_thresholds=1)
    assert counts.tolist() == [[100, 200, 100, 200]]
    s = scores(pb, [vline(100)])
    assert (s.ods_p, s.ods_r, s.ods_f) == (0.5, 0.5, 0.5)
    assert scores(vline(103).astype(float), [vline(100)]).ods_f == 0.0  # 3 px > 2.12 px


def test_matching_is_one_to_one():
    gt = np.zeros((N, N), bool)
    gt[100, 100] = True
    pred = np.zeros((N, N), bool)
    pred[100, 99] = pred[100, 101] = True  # both within 1 px of the one ground-truth pixel
    mp, mg = match_boundaries(pred, gt, tolerance_px(gt.shape))
    assert mp.sum() == 1 and mg.sum() == 1
    counts = evaluate_image(pred.astype(float), [gt], n_thresholds=1)
    assert counts.tolist() == [[1, 2, 1, 1]]  # P = 1/2, R = 1
    s = summarize(counts[None], thresholds(1))
    assert s.ods_f == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_matching_is_maximum_not_greedy():
    # p=(100,101) is near both ground-truth pixels, q=(100,98) only near a=(100,100):
    # matching p to a (its nearest) would leave q out; the maximum matching pairs p-b, q-a
    gt = np.zeros((N, N), bool)
    gt[100, 100] = gt[100, 102] = True
    pred = np.zeros((N, N), bool)
    pred[100, 101] = pred[100, 98] = True
    mp, mg = match_boundaries(pred, gt, 2.12)
    assert mp.sum() == 2 and mg.sum() == 2


def test_matching_count_is_the_exact_maximum():
    """Pinned to the maximum matching by another algorithm: Hungarian assignment on the dense graph
    (cost 0 for a pair within the radius, 1 otherwise); its zero-cost pairs are a maximum matching."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(3)
    for _ in range(40):
        h, w = int(rng.integers(5, 14)), int(rng.integers(5, 14))
        pred, gt = rng.random((h, w)) < 0.3, rng.random((h, w)) < 0.3
        radius = float(rng.choice([1.0, 1.5, 2.12]))
        mp, mg = match_boundaries(pred, gt, radius)
        py, px = np.nonzero(pred)
        gy, gx = np.nonzero(gt)
        if len(py) == 0 or len(gy) == 0:
            assert mp.sum() == mg.sum() == 0
            continue
        near = np.hypot(py[:, None] - gy[None, :], px[:, None] - gx[None, :]) <= radius
        rows, cols = linear_sum_assignment((~near).astype(float))
        assert mp.sum() == mg.sum() == int(near[rows, cols].sum())


def test_several_humans_precision_once_recall_summed():
    # human 1 sees the line at column 100, human 2 at column 150; the prediction draws only column 100
    counts = evaluate_image(vline(100).astype(float), [vline(100), vline(150)], n_thresholds=1)
    # matched_pred: 200 (matched to human 1); recall: 200 of human 1 + 0 of human 2 over 400
    assert counts.tolist() == [[200, 200, 200, 400]]


# ----------------------------------------------------------------------------- thinning


def test_thinning_a_thick_band_and_what_it_does_to_precision():
    band = np.zeros((N, N), bool)
    band[99:102, :] = True  # 3 px thick
    thin = thin_boundaries(band)
    expected = np.zeros((N, N), bool)
    expected[100, 1:-1] = True  # the middle row; the band's two end columns are eroded away
    assert (thin == expected).all()
    gt = np.zeros((N, N), bool)
    gt[100, :] = True
    assert evaluate_image(band.astype(float), [gt], n_thresholds=1).tolist() == [[198, 198, 198, 200]]
    # without thinning the two outer rows are unmatched predictions: P = 200 / 600
    assert evaluate_image(band.astype(float), [gt], n_thresholds=1, thin=False).tolist() == [[200, 600, 200, 200]]


def test_fast_thinning_equals_skimage():
    """Our Guo-Hall tables (computed from the paper's conditions) and our sweep give scikit-image's thinning."""
    from skimage.morphology import thin

    first, second = guo_hall_tables()
    assert first.shape == second.shape == (256,) and not first[0] and not second[0]  # an isolated pixel stays
    assert first.sum() == second.sum()  # the two sub-iterations are the same rule turned by a half turn
    rng = np.random.default_rng(0)
    for _ in range(200):
        b = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.random()
        assert (thin_boundaries(b) == thin(b)).all()
    blob = np.zeros((60, 60), bool)
    blob[10:50, 5:55] = True
    blob[20:30, 20:40] = False
    assert (thin_boundaries(blob) == thin(blob)).all()


# ----------------------------------------------------------------------------- ODS / OIS / AP


def test_ods_ois_ap_on_two_hand_made_images():
    # counts per image and threshold: (matched_pred, total_pred, matched_gt, total_gt)
    counts = np.array([
        [[8, 10, 8, 10], [5, 5, 5, 10]],   # image A: F = .8 at t1, F = 2/3 at t2
        [[2, 10, 2, 10], [4, 5, 4, 10]],   # image B: F = .2 at t1, F = 8/15 at t2
    ])
    s = summarize(counts, np.array([0.25, 0.75]))
    # ODS: t1 sums to P = R = .5 (F .5); t2 sums to P = 9/10, R = 9/20, F = .6
    assert s.ods_f == pytest.approx(0.6) and s.ods_threshold == 0.75
    assert (s.ods_p, s.ods_r) == (pytest.approx(0.9), pytest.approx(0.45))
    # OIS: A at t1, B at t2 -> (12, 15, 12, 20): P = .8, R = .6, F = .96 / 1.4
    assert s.ois_f == pytest.approx(0.96 / 1.4) and s.per_image_best == [0, 1]
    # AP: points (R .45, P .9), (R .5, P .5), plus (0, .9): .45 * .9 + .05 * (.9 + .5) / 2
    assert s.ap == pytest.approx(0.44)
    # BSDS's maxF interpolates between the two thresholds: never below the exact ODS
    assert s.bsds_ods_f >= s.ods_f


def test_average_precision_orders_points_by_recall_and_skips_empty_thresholds():
    p = np.array([0.5, 1.0, 0.0])
    r = np.array([1.0, 0.5, 0.0])
    total_pred = np.array([10, 4, 0])  # the last threshold keeps nothing: no point
    assert average_precision(p, r, total_pred) == pytest.approx(0.5 * 1.0 + 0.5 * 0.75)
    assert bsds_average_precision(np.array([1.0]), np.array([0.3])) == 0.0


# ----------------------------------------------------------------------------- files


def test_bsds_mat_reader(tmp_path):
    from scipy.io import savemat

    seg1 = np.ones((6, 8), np.uint16)
    seg1[:, 4:] = 2
    seg2 = np.ones((6, 8), np.uint16)
    seg2[3:, :] = 2
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0] = {"Segmentation": seg1, "Boundaries": seg_to_boundaries(seg1).astype(np.uint8)}
    cell[0, 1] = {"Segmentation": seg2, "Boundaries": seg_to_boundaries(seg2)}
    savemat(tmp_path / "100007.mat", {"groundTruth": cell})
    humans = read_bsds_mat(tmp_path / "100007.mat")
    assert len(humans) == 2 and all(h.dtype == bool for h in humans)
    assert (humans[0] == seg_to_boundaries(seg1)).all() and (humans[1] == seg_to_boundaries(seg2)).all()
    assert humans[0][:, 3].all() and humans[0].sum() == 6

    single = np.empty((1, 1), dtype=object)
    single[0, 0] = {"Segmentation": seg2}  # no Boundaries: made from the segmentation
    savemat(tmp_path / "one.mat", {"groundTruth": single})
    (one,) = read_bsds_mat(tmp_path / "one.mat")
    assert (one == seg_to_boundaries(seg2)).all()

    savemat(tmp_path / "wrong.mat", {"gt": seg1})
    with pytest.raises(BoundaryError, match="wrong.mat: no variable 'groundTruth'"):
        read_bsds_mat(tmp_path / "wrong.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(BoundaryError, match="junk.mat"):
        read_bsds_mat(tmp_path / "junk.mat")


def test_boundary_map_reader(tmp_path):
    Image.fromarray(np.array([[0, 255], [51, 102]], np.uint8)).save(tmp_path / "a.png")
    assert read_boundary_map(tmp_path / "a.png").tolist() == [[0.0, 1.0], [0.2, 0.4]]
    grey_as_rgb = np.repeat(np.array([[0, 255], [51, 102]], np.uint8)[..., None], 3, axis=2)
    Image.fromarray(grey_as_rgb).save(tmp_path / "grey.png")
    assert read_boundary_map(tmp_path / "grey.png").tolist() == [[0.0, 1.0], [0.2, 0.4]]
    colour = grey_as_rgb.copy()
    colour[0, 0, 1] = 9
    Image.fromarray(colour).save(tmp_path / "rgb.png")
    with pytest.raises(BoundaryError, match="rgb.png: a colour image"):
        read_boundary_map(tmp_path / "rgb.png")


# ----------------------------------------------------------------------------- baselines and NMS


def step_image(h=40, w=40, col=20) -> np.ndarray:
    rgb = np.full((h, w, 3), 30, np.uint8)
    rgb[:, col:] = 220
    return rgb


def test_nms_keeps_the_ridge_of_a_blurred_line():
    x = np.arange(40)
    edge = np.tile(np.exp(-((x - 20) ** 2) / (2 * 2.0**2)), (30, 1))  # a vertical line, blurred across x
    for normal in (None, np.zeros_like(edge)):  # estimated from the map / given (along x)
        kept = non_max_suppression(edge, normal)
        assert (kept[5:-5] > 0).sum(axis=1).tolist() == [1] * 20
        assert (kept[5:-5, 20] == edge[5:-5, 20]).all()


def test_baselines_fire_on_a_step_edge():
    rgb = step_image()
    for pb in (sobel_boundaries(rgb), sobel_boundaries(rgb, nms=True), canny_boundaries(rgb),
               slic_boundaries(rgb, (2, 4, 8))):
        assert pb.shape == (40, 40) and pb.min() >= 0 and 0.5 < pb.max() <= 1.0
        assert pb[:, 18:22].mean() > 5 * pb[:, :10].mean() + 0.1
    thin = sobel_boundaries(rgb, nms=True)
    assert ((thin[5:-5] > 0).sum(axis=1) == 1).all()  # one pixel per row after NMS
    assert sobel_boundaries(np.zeros((8, 8, 3), np.uint8)).max() == 0.0
    levels = canny_boundaries(rgb, levels=4)
    assert set(np.unique(levels)) <= {0.0, 0.25, 0.5, 0.75, 1.0}


# ----------------------------------------------------------------------------- command line


def write_dataset(root, n=2, size=(48, 64)):
    """Images (left dark, right bright) and CamVid-style labels (0 | 1, a 255 strip at the bottom)."""
    (root / "img").mkdir()
    (root / "gt").mkdir()
    h, w = size
    for i in range(n):
        col = 20 + 10 * i
        Image.fromarray(step_image(h, w, col)).save(root / "img" / f"im{i}.png")
        label = np.zeros((h, w), np.uint8)
        label[:, col:] = 1
        label[-5:] = 255
        Image.fromarray(label).save(root / "gt" / f"im{i}.png")


def run_cli(*argv):
    from loop.cli import main

    return main(["boundaries", *map(str, argv)])


def test_cli_baseline_then_eval_end_to_end(tmp_path, capsys):
    write_dataset(tmp_path)
    for method, extra in (("sobel", []), ("canny", []), ("slic", ["--segments", "4,8"])):
        assert run_cli("baseline", method, tmp_path / "img", tmp_path / method, "--no-progress", *extra) == 0
        written = np.asarray(Image.open(tmp_path / method / "im0.png"))
        assert written.dtype == np.uint8 and written.shape == (48, 64) and written.max() > 128
    out = tmp_path / "sobel.json"
    assert run_cli("eval", tmp_path / "sobel", "--gt", tmp_path / "gt", "--ignore-index", "255",
                   "--thresholds", "9", "--out", out, "--no-progress") == 0
    res = json.loads(out.read_text())
    assert res["num_images"] == 2 and len(res["curve"]["thresholds"]) == 9
    assert 0 < res["ods"]["f"] <= res["ois"]["f"] <= 1 and 0 < res["ap"] <= 1
    assert "ODS F=" in capsys.readouterr().out

    # the ground truth's own boundaries as predictions score 1
    (tmp_path / "perfect").mkdir()
    for i in range(2):
        label = np.asarray(Image.open(tmp_path / "gt" / f"im{i}.png"))
        bdry, _ = label_boundaries(label, 255, 1, thin=True)
        Image.fromarray(to_uint8(bdry.astype(float))).save(tmp_path / "perfect" / f"im{i}.png")
    out = tmp_path / "perfect.json"
    assert run_cli("eval", tmp_path / "perfect", "--gt", tmp_path / "gt", "--ignore-index", "255",
                   "--out", out, "--no-progress") == 0
    res = json.loads(out.read_text())
    assert res["ods"]["f"] == 1.0 and res["ois"]["f"] == 1.0 and res["ap"] == 1.0


def test_cli_eval_of_hard_segmentations(tmp_path):
    """``--segmentations``: label maps scored by their label boundaries; the ground truth as its own
    segmentation scores 1, and a shifted segmentation gives the counts of evaluate_segmentation."""
    from boundaries.evaluation import evaluate_segmentation, list_ground_truth, load_ground_truth

    write_dataset(tmp_path)
    (tmp_path / "seg").mkdir()
    for i in range(2):
        label = np.asarray(Image.open(tmp_path / "gt" / f"im{i}.png"))
        Image.fromarray(label).save(tmp_path / "seg" / f"im{i}.png")
    out = tmp_path / "seg.json"
    assert run_cli("eval", tmp_path / "seg", "--gt", tmp_path / "gt", "--ignore-index", "255", "--segmentations",
                   "--out", out, "--no-progress") == 0
    res = json.loads(out.read_text())
    assert res["ods"]["f"] == res["ois"]["f"] == 1.0 and res["settings"]["segmentations"] is True
    assert len(res["curve"]["thresholds"]) == 1
    shifted = np.roll(np.asarray(Image.open(tmp_path / "gt" / "im0.png")), 3, axis=1)
    Image.fromarray(shifted).save(tmp_path / "seg" / "im0.png")
    assert run_cli("eval", tmp_path / "seg", "--gt", tmp_path / "gt", "--ignore-index", "255", "--segmentations",
                   "--out", out, "--no-progress") == 0
    item = list_ground_truth(tmp_path / "gt", "labels")[0]
    humans, valid = load_ground_truth(item, "labels", 255, 1, True)
    counts = evaluate_segmentation(shifted, humans, valid, 255)
    assert json.loads(out.read_text())["images"][0]["counts_at_best"] == dict(
        zip(("matched_pred", "total_pred", "matched_gt", "total_gt"), counts[0].tolist()))


def test_cli_eval_against_bsds_mat_files(tmp_path):
    from scipy.io import savemat

    seg = np.ones((30, 40), np.uint16)
    seg[:, 20:] = 2
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = {"Segmentation": seg, "Boundaries": seg_to_boundaries(seg)}
    (tmp_path / "gt").mkdir()
    savemat(tmp_path / "gt" / "12003.mat", {"groundTruth": cell})
    (tmp_path / "pred").mkdir()
    Image.fromarray(to_uint8(seg_to_boundaries(seg).astype(float))).save(tmp_path / "pred" / "12003.png")
    out = tmp_path / "r.json"
    assert run_cli("eval", tmp_path / "pred", "--bsds", tmp_path / "gt", "--out", out, "--no-progress") == 0
    assert json.loads(out.read_text())["ods"]["f"] == 1.0


def test_cli_errors_name_the_file(tmp_path, capsys):
    write_dataset(tmp_path)
    (tmp_path / "pred").mkdir()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "pred" / "im0.png")
    assert run_cli("eval", tmp_path / "pred", "--gt", tmp_path / "gt", "--no-progress") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "im0.png is 10x10" in err and "64x48" in err

    Image.fromarray(np.zeros((48, 64), np.uint8)).save(tmp_path / "pred" / "im0.png")
    assert run_cli("eval", tmp_path / "pred", "--gt", tmp_path / "gt", "--no-progress") == 1
    assert "im1.png" in capsys.readouterr().err  # no prediction for the second image

    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert run_cli("baseline", "sobel", tmp_path / "img", tmp_path / "out", "--no-progress") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.png" in err

    assert run_cli("eval", tmp_path / "pred") == 2  # no ground truth given
    assert run_cli() == 2  # no verb: help


def test_another_module_can_add_a_verb_in_either_order():
    from boundaries.cli import add_parser, boundary_verbs

    def add_predict(subparsers):
        p = boundary_verbs(subparsers).add_parser("predict")
        p.set_defaults(func=lambda args: 7)

    for order in ((add_parser, add_predict), (add_predict, add_parser)):
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers(dest="command")
        for add in order:
            add(sub)
        assert parser.parse_args(["boundaries", "predict"]).func(None) == 7
        assert parser.parse_args(["boundaries", "eval", "x", "--gt", "y"]).pred_dir == "x"
