"""tools/bench_auxlabels.py --stage-vs-forward on 4 CamVid images: every run's numbers are its manifest's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.realdata
def test_stage_vs_forward_reports_each_runs_manifest(tmp_path, camvid):
    spec = importlib.util.spec_from_file_location("bench_auxlabels", REPO / "tools" / "bench_auxlabels.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    report = tmp_path / "stage.md"
    argv = ["--camvid", str(camvid), "--work", str(tmp_path / "work"), "--stage-vs-forward", "4", "--rounds", "1",
            "--compare", str(REPO), "--stage-report", str(report), "--others", "the test suite"]
    assert tool.main(argv) == 0
    text = report.read_text()
    assert "Also running: the test suite." in text and "4 CamVid images" in text
    for name, row in (("this", "| this checkout | 1 |"), ("compare", "| --compare checkout | 1 |")):
        t = json.loads((tmp_path / "work" / f"{name}_0" / "manifest.json").read_text())["timings"]
        assert f"{row} {t['total_wall']:.1f} s | {t['forward']:.1f} s | {t['total_wall'] / t['forward']:.3f}x |" in text
        assert len(json.loads((tmp_path / "work" / f"{name}_0" / "manifest.json").read_text())["images"]) == 4
    assert "| forward |" in text and "| resize_normalise |" in text
