"""tools/bench_camvid_coarse.py on tiny synthetic data: one coarse-prior fine-tune, the table, and a rerun that skips it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_camvid_coarse.py"


def _tool():
    spec = importlib.util.spec_from_file_location("bench_camvid_coarse", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_camvid_coarse_smoke(tmp_path, capsys):
    root = make_synthetic_dataset(tmp_path / "data", SyntheticSpec(num_train=4, num_val=2, height=48, width=64))
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train_100pct_seed0.txt").write_text("".join(f"{i:04d}\n" for i in range(4)))
    argv = ["--data", str(root), "--pipeline-config", "configs/pipeline/demo.yaml", "--splits", str(splits),
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "table.md"), "--labelled", "100",
            "--factors", "16", "--losses", "rq", "--no-reference", "--max-iters", "2", "--warmup-frac", "0.5",
            "--set", "tensorboard=false", "num_workers=0"]
    assert _tool().main(argv) == 0
    out = capsys.readouterr().out
    assert "100pct_coarse16_rq_seed0: mIoU" in out and "mIoU_r" in out
    results = (tmp_path / "runs" / "100pct_coarse16_rq_seed0" / "results.json")
    assert results.is_file()
    table = (tmp_path / "table.md").read_text()
    assert "| 100% | coarse x16 | RQ |" in table and "| 1/1 |" in table
    prior_alone = _tool().prior_alone_miou(root, 16)
    assert prior_alone == pytest.approx(_prior_alone_again(root, 16), abs=1e-9)
    assert f"| - | coarse x16 of each val image | none: argmax of its prior (no network) | - | {prior_alone:.2f} |" in table
    assert "Command: `python tools/bench_camvid_coarse.py --data" in table and "Seeds: 0" in table
    assert "warm up with cross-entropy on the prior for 1 iterations" in table
    before = results.stat().st_mtime_ns
    assert _tool().main(argv) == 0  # finished runs are skipped
    assert "finished before, skipped" in capsys.readouterr().out and results.stat().st_mtime_ns == before
    # --finished-only: a table of what is finished (seed 0), the unfinished seed 1 left out, nothing run
    assert _tool().main([*argv, "--seeds", "0", "1", "--finished-only"]) == 0
    assert "100pct_coarse16_rq_seed1: not finished, left out" in capsys.readouterr().out
    assert not (tmp_path / "runs" / "100pct_coarse16_rq_seed1").exists()
    table = (tmp_path / "table.md").read_text()
    assert "| 100% | coarse x16 | RQ |" in table and "| 1/2 |" in table and "none ran in this invocation" in table


def test_bench_camvid_coarse_skips_without_data(tmp_path, capsys):
    assert _tool().main(["--data", str(tmp_path / "nothing"), "--results", str(tmp_path / "t.md")]) == 0
    assert "skipped: CamVid not found" in capsys.readouterr().err and not (tmp_path / "t.md").exists()


def test_prior_alone_miou_by_hand(tmp_path):
    """Two 16-aligned halves survive a 16x coarse prior exactly; a 1-pixel line of a third class does not."""
    import numpy as np

    from auxseg.io import atomic_write_json, write_label_png

    (tmp_path / "valannot").mkdir()
    atomic_write_json(tmp_path / "dataset.json", {"num_classes": 3, "ignore_index": 255})
    label = np.zeros((32, 64), np.uint8)
    label[:, 32:] = 1
    write_label_png(tmp_path / "valannot" / "a.png", label)
    assert _tool().prior_alone_miou(tmp_path, 16) == 100.0
    label[5, 2:30] = 2  # 28 pixels of class 2, outvoted in their block: IoU 0 for class 2, and class 0 loses them
    write_label_png(tmp_path / "valannot" / "a.png", label)
    iou0 = (32 * 32 - 28) / (32 * 32)
    assert abs(_tool().prior_alone_miou(tmp_path, 16) - 100 * (iou0 + 1.0 + 0.0) / 3) < 1e-9


def _prior_alone_again(root: Path, factor: int) -> float:
    """The same mIoU by another route: block majority with loops, scipy's Gaussian blur (std = factor, cut at
    4 std, zero outside the image) on each class's block map, argmax (a tie or no labelled block: wrong),
    IoU over the classes predicted or present."""
    import numpy as np
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    k, inter, pred_n, gt_n = 6, np.zeros(6), np.zeros(6), np.zeros(6)
    for path in sorted((root / "valannot").glob("*.png")):
        gt = np.asarray(Image.open(path)).astype(np.int64)
        h, w = gt.shape
        onehot = np.zeros((k, h, w))
        for y in range(0, h, factor):
            for x in range(0, w, factor):
                cell = gt[y:y + factor, x:x + factor]
                votes = np.bincount(cell[cell < k], minlength=k)
                if votes.sum():
                    onehot[int(votes.argmax()), y:y + factor, x:x + factor] = 1.0
        blurred = np.stack([gaussian_filter(c, float(factor), mode="constant", truncate=4.0) for c in onehot])
        top2 = -np.sort(-blurred, axis=0)[:2]
        pred = np.where((top2[0] - top2[1] < 1e-6) | (blurred.sum(0) <= 0), -1, blurred.argmax(0))
        keep = gt < k
        for c in range(k):
            inter[c] += ((pred == c) & (gt == c) & keep).sum()
            pred_n[c] += ((pred == c) & keep).sum()
            gt_n[c] += ((gt == c) & keep).sum()
    union = pred_n + gt_n - inter
    present = union > 0
    return float(100 * (inter[present] / union[present]).mean())
