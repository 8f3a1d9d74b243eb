"""Deterministic label splits: selection rule, split files, the make_splits tool, committed CamVid files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.splits import SplitError, SplitSpec, list_stems, read_split, select, write_split

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL = REPO_ROOT / "tools" / "make_splits.py"
CAMVID_SPLITS = REPO_ROOT / "splits" / "camvid"


def test_selection_is_the_hash_rule_and_order_independent():
    stems = [f"img_{i:03d}" for i in range(50)]
    spec = SplitSpec(fraction=0.1, seed=3)
    chosen = select(stems, spec)
    # the rule, written out: rank by sha256("seed:stem"), take round(0.1 * 50) = 5, sort
    by_hand = sorted(sorted(stems, key=lambda s: hashlib.sha256(f"3:{s}".encode()).hexdigest())[:5])
    assert chosen == by_hand
    assert select(list(reversed(stems)), spec) == chosen
    assert select(stems, SplitSpec(fraction=0.1, seed=4)) != chosen  # the seed matters


def test_smaller_splits_nest_in_larger_ones():
    stems = [f"{i:04d}" for i in range(367)]
    s10, s20, s100 = (select(stems, SplitSpec(fraction=f)) for f in (0.1, 0.2, 1.0))
    n100 = select(stems, SplitSpec(count=100))
    assert (len(s10), len(s20), len(s100), len(n100)) == (37, 73, 367, 100)
    assert set(s10) <= set(s20) <= set(n100) <= set(s100)


def test_spec_parse_and_errors():
    assert SplitSpec.parse("10%") == SplitSpec(fraction=0.1)
    assert SplitSpec.parse("100img", seed=2) == SplitSpec(count=100, seed=2)
    assert SplitSpec.parse("500").count == 500
    assert SplitSpec(fraction=0.125).name() == "train_12p5pct_seed0"
    for bad in ("ten", "10 %%", "-5img"):
        with pytest.raises(SplitError):
            SplitSpec.parse(bad)
    with pytest.raises(SplitError, match="only 3"):
        select(["a", "b", "c"], SplitSpec(count=4))
    with pytest.raises(SplitError):
        SplitSpec(fraction=1.5)
    assert select(["a", "b", "c"], SplitSpec(fraction=0.01)) != []  # at least one image


def test_split_files_roundtrip_and_clear_errors(tmp_path):
    (tmp_path / "img" / "city").mkdir(parents=True)
    for name in ("city/a_leftImg8bit.png", "city/b_leftImg8bit.png", "city/c_leftImg8bit.png"):
        (tmp_path / "img" / name).write_bytes(b"")
    stems = list_stems(tmp_path / "img", "_leftImg8bit.png")
    assert stems == ["city/a", "city/b", "city/c"]
    path = write_split(tmp_path / "s.txt", ["city/a", "city/c"])
    assert path.read_text() == "city/a\ncity/c\n"
    assert read_split(path, stems) == ["city/a", "city/c"]
    (tmp_path / "bad.txt").write_text("city/a\ncity/zzz\n")
    with pytest.raises(SplitError, match=r"bad\.txt.*city/zzz"):
        read_split(tmp_path / "bad.txt", stems)
    with pytest.raises(SplitError, match="not found"):
        read_split(tmp_path / "none.txt")
    with pytest.raises(SplitError, match="no images"):
        list_stems(tmp_path / "img", ".jpg")


def _tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True)


def test_tool_writes_checks_and_refuses_to_silently_differ(tmp_path):
    images = tmp_path / "train"
    images.mkdir()
    for i in range(20):
        (images / f"{i:03d}.png").write_bytes(b"")
    out = tmp_path / "splits"
    res = _tool("--images", images, "--out", out, "--splits", "10%", "50%", "5img")
    assert res.returncode == 0, res.stderr
    assert (out / "train_10pct_seed0.txt").read_text().count("\n") == 2
    manifest = json.loads((out / "splits.json").read_text())
    assert manifest["num_available"] == 20 and manifest["files"]["train_5img_seed0.txt"]["num_images"] == 5
    assert _tool("--images", images, "--out", out, "--splits", "10%", "50%", "5img", "--check").returncode == 0
    # the dataset changed: the same command must not silently write another subset
    (images / "000.png").unlink()
    res = _tool("--images", images, "--out", out, "--splits", "10%", "50%", "5img")
    assert res.returncode == 1 and "refusing" in res.stderr
    assert _tool("--images", images, "--out", out, "--splits", "10%", "50%", "5img", "--check").returncode == 1
    assert _tool("--images", images, "--out", out, "--splits", "10%", "50%", "5img", "--force").returncode == 0


def test_committed_camvid_splits_are_consistent():
    manifest = json.loads((CAMVID_SPLITS / "splits.json").read_text())
    assert manifest["num_available"] == 367 and manifest["seed"] == 0
    sets = {}
    for name, entry in manifest["files"].items():
        text = (CAMVID_SPLITS / name).read_text()
        assert hashlib.sha256(text.encode()).hexdigest() == entry["sha256"], name
        stems = text.splitlines()
        assert stems == sorted(stems) and len(stems) == entry["num_images"]
        sets[name] = set(stems)
    assert len(sets["train_10pct_seed0.txt"]) == 37 and len(sets["train_20pct_seed0.txt"]) == 73
    assert sets["train_10pct_seed0.txt"] <= sets["train_20pct_seed0.txt"] <= sets["train_100pct_seed0.txt"]
    # the committed files are exactly what the rule gives for the full stem list
    all_stems = sorted(sets["train_100pct_seed0.txt"])
    assert select(all_stems, SplitSpec(fraction=0.1)) == sorted(sets["train_10pct_seed0.txt"])
    assert select(all_stems, SplitSpec(count=100)) == sorted(sets["train_100img_seed0.txt"])


@pytest.mark.realdata
def test_committed_camvid_splits_match_the_real_images(camvid):
    res = _tool("--images", camvid / "train", "--suffix", ".png", "--out", CAMVID_SPLITS,
                "--splits", "10%", "20%", "100%", "100img", "--seed", "0", "--check")
    assert res.returncode == 0, res.stderr
