"""tools/bench_feature_views.py on tiny synthetic images: the grid figure, the page, and one-line errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_feature_views.py"
R18 = ["extractor.name=resnet18", "extractor.random_init=true", "extractor.layer=layer1"]


def _tool():
    spec = importlib.util.spec_from_file_location("bench_feature_views", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.zeros((36, 48, 3), np.uint8)
        img[:, 24:] = rng.integers(0, 255, 3)
        Image.fromarray(img).save(folder / f"f{i:02d}.png")
    return folder


def test_bench_feature_views_grid_and_page(tmp_path):
    images = _images(tmp_path / "val", 5)
    fig, page = tmp_path / "figs" / "views.png", tmp_path / "views.md"
    argv = ["--images", str(images), "--n", "3", "--max-side", "40", "--figure", str(fig), "--out", str(page),
            "--column", "random a", *R18, "--column", "random b", *R18, "extractor.seed=1"]
    assert _tool().main(argv) == 0
    text = page.read_text()
    assert "f00.png, f02.png, f04.png" in text  # first, middle, last
    rows = [line for line in text.splitlines() if line.startswith("| random")]
    assert [r.split(" | ")[0] for r in rows] == ["| random a", "| random b"]
    assert "](figs/views.png)" in text and "--column 'random a'" in text
    w, h = Image.open(fig).size
    assert w > h > 0  # three columns (image + two views) are wider than three rows are tall at this aspect


def test_bench_feature_views_errors(tmp_path, capsys):
    tool = _tool()
    assert tool.main(["--images", str(tmp_path / "nope")]) == 0
    assert capsys.readouterr().out.startswith("skipped: no image folder")
    images = _images(tmp_path / "val", 1)
    out = ["--images", str(images), "--out", str(tmp_path / "v.md"), "--figure", str(tmp_path / "v.png")]
    assert tool.main([*out, "--pipeline", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --pipeline:") and "2_auxlabels" in err and err.count("\n") == 1
    assert tool.main([*out, "--column", "bad", "extractor.name=nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert not (tmp_path / "v.md").exists()
