"""tools/bench_vit_extractors.py: its section of the results file is replaced, the rest kept."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("bench_vit_extractors", REPO / "tools" / "bench_vit_extractors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_section_is_replaced_and_the_rest_kept(tmp_path):
    tool = _tool()
    row = {"label": "dinov2_vits14", "images": 2, "size": [360, 480], "source": "random pixels", "seconds": 4.0,
           "images_per_s": 0.5, "all_rounds": [0.5, 0.4], "feature_shape": [384, 26, 35], "peak_rss_mib": 900.0,
           "rss_built_mib": 850.0, "load": 2.0}
    report = tmp_path / "auxlabels.md"
    report.write_text("# auxlabels benchmark\n\nearlier rows\n\n## Memory\n\nkept\n")
    tool.write_section(report, [row], "python tools/bench_vit_extractors.py --images 2", 2)
    tool.write_section(report, [dict(row, images_per_s=0.25, seconds=8.0)], "python tools/bench_vit_extractors.py", 2)
    text = report.read_text()
    assert text.startswith("# auxlabels benchmark\n\nearlier rows\n\n## Memory\n\nkept\n")
    assert text.count(tool.SECTION) == 1 and "| 0.25 |" in text and "| 0.50 |" not in text
    assert "| dinov2_vits14 | 480 x 360 random pixels | 2 | 0.25 | 4.00 | 0.50, 0.40 |" in text
    assert "50 MiB" in text and "Command: `python tools/bench_vit_extractors.py`" in text
