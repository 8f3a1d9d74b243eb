"""tools/bench_vit_extractors.py: its section of the results file is replaced, the rest kept."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("bench_vit_extractors", REPO / "tools" / "bench_vit_extractors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_section_is_replaced_and_the_rest_kept(tmp_path):
    tool = _tool()
    row = {"label": "dinov2_vits14", "images": 2, "size": [360, 480], "source": "random pixels", "seconds": 4.0,
           "cpu_seconds": 7.0, "images_per_s": 0.5, "all_rounds": [0.5, 0.4], "feature_shape": [384, 26, 35], "peak_rss_mib": 900.0,
           "rss_built_mib": 850.0, "load": 2.0}
    report = tmp_path / "auxlabels.md"
    report.write_text("# auxlabels benchmark\n\nearlier rows\n\n## Memory\n\nkept\n")
    tool.write_section(report, [row], "python tools/bench_vit_extractors.py --images 2", 2)
    tool.write_section(report, [dict(row, images_per_s=0.25, seconds=8.0)], "python tools/bench_vit_extractors.py", 2)
    text = report.read_text()
    assert text.startswith("# auxlabels benchmark\n\nearlier rows\n\n## Memory\n\nkept\n")
    assert text.count(tool.SECTION) == 1 and "| 0.25 |" in text and "| 0.50 |" not in text
    assert "| dinov2_vits14 | 480 x 360 random pixels | 2 | 0.25 | 4.00 | 3.50 | 0.50, 0.40 |" in text
    assert "50 MiB" in text and "Command: `python tools/bench_vit_extractors.py`" in text


def test_one_image_run_measures_and_writes_its_row(tmp_path, capsys):
    """The whole tool, as a user runs it, on one random 480 x 360 image: a child process per extractor, its row."""
    report = tmp_path / "auxlabels.md"
    assert _tool().main(["--images", "1", "--rounds", "1", "--models", "dinov2_vits14", "--threads", "1",
                         "--others", "the test suite", "--report", str(report)]) == 0
    text = report.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| dinov2_vits14 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "480 x 360 random pixels" and cells[2] == "1"
    assert cells[7] == "[384, 26, 35]"  # 480 x 360 padded to 490 x 364: 35 x 26 patches of 14
    assert float(cells[3]) == pytest.approx(1 / float(cells[4]), rel=0.05)  # images/s and s/image agree
    assert "Also running: the test suite." in text
