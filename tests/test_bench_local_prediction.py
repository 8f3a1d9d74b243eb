"""Smoke test of tools/bench_local_prediction.py on tiny synthetic data (both branches: small model, ResNet)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from independent import pmiou_by_enumeration

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("bench_local_prediction", REPO / "tools/bench_local_prediction.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pmiou_again(out: Path, labels: Path) -> float:
    """The PmIoU of a label folder the tool wrote, recomputed from its PNGs and the ground truth (tests/independent.py)."""
    manifest = json.loads((labels / "manifest.json").read_text())
    info = json.loads((out / "data" / "dataset.json").read_text())
    files = [(labels / "labels" / rel, out / "data" / "valannot" / rel) for rel in manifest["images"]]
    return pmiou_by_enumeration(files, manifest["num_labels"], info["num_classes"], [info["ignore_index"]])


def _ods_again(out: Path, model: Path) -> float:
    """The ODS F of the boundary maps the tool saved, scored again by ``auxseg boundaries eval`` (its command line,
    not the tool's call) against the ground truth the tool wrote."""
    from loop.cli import main as auxseg_main

    info = json.loads((out / "data" / "dataset.json").read_text())
    scores = out / "ods_again.json"
    assert auxseg_main(["boundaries", "eval", str(model / "boundaries"), "--gt", str(out / "data" / "valannot"),
                        "--ignore-index", str(info["ignore_index"]), "--out", str(scores), "--no-progress"]) == 0
    return json.loads(scores.read_text())["ods"]["f"]


def test_smoke_run_writes_every_number(tmp_path):
    assert _tool().main(["--smoke", "--out", str(tmp_path), "--models", "pixel", "resnet18"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    pixel, resnet = results["models"]["pixel"], results["models"]["resnet18"]
    for arch, r in (("pixel", pixel), ("resnet18", resnet)):
        assert r["pretrain"]["iters"] == 2 and r["pretrain"]["s_per_iter"] > 0
        assert r["auxlabels"]["k"] == 9
        assert r["auxlabels"]["pmiou"] == pytest.approx(_pmiou_again(tmp_path, tmp_path / arch / "auxlabels"), abs=1e-9)
    assert pixel["boundaries"]["images"] == 3
    assert pixel["boundaries"]["ods_f"] == pytest.approx(_ods_again(tmp_path, tmp_path / "pixel"), abs=1e-12)
    assert resnet["boundaries"]["images"] == 3 and resnet["auxlabels"]["extractor"] == "auxseg_export"
    assert Path(pixel["pretrain"]["export"]).name == "small_model.pth"
    table = (tmp_path / "results.md").read_text()
    assert "| pixel | 2 |" in table and "| resnet18 | 2 |" in table
    # a second invocation into the same folder adds its model to the table
    assert _tool().main(["--smoke", "--out", str(tmp_path), "--models", "linear"]) == 0
    table = (tmp_path / "results.md").read_text()
    assert "| pixel | 2 |" in table and "| linear | 2 |" in table and table.count("`python tools/") == 3
    # the reference row: random weights, the same PmIoU protocol
    assert _tool().main(["--smoke", "--reference", "--out", str(tmp_path)]) == 0
    reference = json.loads((tmp_path / "results.json").read_text())["reference"]
    assert reference["extractor"] == "resnet18"
    assert reference["pmiou"] == pytest.approx(_pmiou_again(tmp_path, tmp_path / "reference_random_resnet18"), abs=1e-9)
    table = (tmp_path / "results.md").read_text()
    assert f"| ResNet-18, random weights (reference; no training) | - | - | - | - | - | - | {reference['pmiou']:.2f}" \
        in table and "| linear | 2 |" in table and table.count("`python tools/") == 4
    from PIL import Image

    widths = []
    for models in (["pixel"], ["pixel", "resnet18"]):  # one column per model beside the image and ground truth
        assert _tool().main(["--smoke", "--figure", "--out", str(tmp_path), "--models", *models]) == 0
        widths.append(Image.open(tmp_path / "boundaries.png").size[0])
    assert widths[1] > widths[0] * 1.2


def test_cost_mode_times_a_step_and_a_boundary_map(tmp_path):
    assert _tool().main(["--cost", "--out", str(tmp_path), "--models", "pixel", "--set", "augment.out_size=24",
                         "data.batch_size=1", "loss.local_prediction.repetitions=1"]) == 0
    row = (tmp_path / "cost.md").read_text().splitlines()[2]
    assert row.startswith("| pixel | 1 x 2 | 24 px | 1 |") and row.count("|") == 8
