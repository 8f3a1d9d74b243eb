"""tools/bench_soft_segments.py on a tiny synthetic CamVid layout: the table's rows, and a clear skip without data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_soft_segments.py"
FAST = ["soft.eigenvectors=12", "soft.initial_layers=6", "soft.initial_iterations=8", "soft.final_outer_iterations=3",
        "soft.final_cg_iterations=30", "soft.final_polish_iterations=100", "soft.working_side=40", "progress=false"]


def _tool():
    spec = importlib.util.spec_from_file_location("bench_soft_segments", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_soft_segments_smoke(tmp_path, capsys):
    root = make_synthetic_dataset(tmp_path / "data", SyntheticSpec(num_train=1, num_val=2, height=36, width=48))
    table = tmp_path / "table.md"
    argv = ["--data", str(root), "--work", str(tmp_path / "work"), "--out", str(table), "--slic", "5",
            "--kmeans-folder", str(tmp_path / "work" / "soft"),  # any label folder: here the soft segments' own
            *[a for s in ["features=colour", *FAST] for a in ("--set", s)]]
    assert _tool().main(argv) == 0
    text = table.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "method" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| soft segments (K=5, argmax)", "| SLIC, 5 segments (fast-slic, "
                                                 "compactness 10)", f"| auxiliary labels `{tmp_path / 'work' / 'soft'}`"]
    soft, _, own = (r.split(" | ") for r in rows)
    assert soft[1] == "2" and 0.0 <= float(soft[2]) <= 1.0 and soft[2:7] == own[2:7]  # same labels, same scores
    assert "python tools/bench_soft_segments.py --data" in text


def test_bench_soft_segments_skips_without_data(tmp_path, capsys):
    assert _tool().main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "t.md")]) == 0
    assert capsys.readouterr().out.startswith("skipped: CamVid not found")
    assert not (tmp_path / "t.md").exists()
