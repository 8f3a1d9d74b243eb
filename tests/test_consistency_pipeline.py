"""The loop and the studies with a consistency fine-tune: one switch per arm (docs/consistency.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_runs import TINY_PIPELINE

from auxseg.config import load_config
from finetune.config import InitConfig
from loop.pipeline import Dataset, PipelineConfig, export_init, finetune_config
from loop.pipeline_cli import DEMO_CONFIG

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = Dataset(Path("/data"), 6, [f"c{i}" for i in range(6)], [255])


def _methods(*overrides: str) -> tuple[str, str]:
    """The consistency method of the baseline fine-tune and of the fine-tune after pre-training."""
    cfg = load_config(PipelineConfig, DEMO_CONFIG, list(overrides))
    base = finetune_config(cfg, DATA, Path("b"), cfg.baseline_init, 0)
    pre = finetune_config(cfg, DATA, Path("p"), export_init("runs/x/export.pth"), 0)
    return base.consistency.method, pre.consistency.method


def test_one_switch_per_arm_and_the_template_for_both():
    assert _methods() == ("none", "none")
    assert _methods("consistency.baseline=fixmatch") == ("fixmatch", "none")
    assert _methods("consistency.pretrained=unimatch") == ("none", "unimatch")
    assert _methods("consistency.baseline=fixmatch", "consistency.pretrained=unimatch") == ("fixmatch", "unimatch")
    # the template (finetune.*) is both fine-tunes' unless an arm's switch says otherwise
    assert _methods("finetune.consistency.method=unimatch") == ("unimatch", "unimatch")
    assert _methods("finetune.consistency.method=unimatch", "consistency.baseline=none") == ("none", "unimatch")


def test_the_consistency_study_preset_switches_the_arms_it_names():
    """configs/study/camvid_consistency.yaml: each arm's own fine-tune runs the method its name says; the
    segmenters (and so the labels and pre-trainings) stay the labels-only ones every arm shares."""
    from loop.study import load_study

    study = load_study(REPO_ROOT / "configs/study/camvid_consistency.yaml")
    expected = {"none": "none", "fixmatch": "fixmatch", "unimatch": "unimatch", "infonce": "none",
                "infonce_unimatch": "unimatch"}
    assert [a.name for a in study.arms] == list(expected) and study.reference == "none"
    base = load_config(PipelineConfig, REPO_ROOT / study.pipeline, list(study.overrides))
    assert finetune_config(base, DATA, Path("s"), base.baseline_init, 0).consistency.method == "none"
    for arm in study.arms:
        cfg = load_config(PipelineConfig, REPO_ROOT / study.pipeline, [*study.overrides, *arm.overrides])
        init = export_init("export.pth") if arm.pretrain else cfg.baseline_init
        assert finetune_config(cfg, DATA, Path("f"), init, 0).consistency.method == expected[arm.name], arm.name
        assert isinstance(init, InitConfig)


@pytest.fixture(scope="module")
def consistency_loop(tmp_path_factory):
    """The tiny loop with FixMatch for the baseline and UniMatch after pre-training, through ``auxseg demo``."""
    from loop.cli import main

    work = tmp_path_factory.mktemp("loop") / "run"
    assert main(["demo", f"work_dir={work}", *TINY_PIPELINE, "consistency.baseline=fixmatch",
                 "consistency.pretrained=unimatch"]) == 0
    return work


def test_the_loop_runs_each_arm_with_its_consistency_finetune_and_the_report_says_which(consistency_loop):
    work = consistency_loop
    baseline = json.loads((work / "1_segmenter_seed0" / "results.json").read_text())
    pretrained = json.loads((work / "4_finetune_seed0" / "results.json").read_text())
    assert baseline["consistency"]["method"] == "fixmatch" and pretrained["consistency"]["method"] == "unimatch"
    assert pretrained["init"]["type"] == "export"  # the pre-trained backbone, fine-tuned with UniMatch
    for results in (baseline, pretrained):
        assert results["consistency"]["unlabelled"]["num_images"] == 12 - 4  # the training images outside the split
    # the auxiliary labels came from the FixMatch segmenter (its mmseg_config.py names the consistency model)
    manifest = json.loads((work / "2_auxlabels" / "manifest.json").read_text())
    assert manifest["num_labels"] > 0 and "ConsistencyEncoderDecoder" in (work / "1_segmenter_seed0" / "mmseg_config.py").read_text()
    summary = json.loads((work / "summary.json").read_text())
    assert summary["consistency"] == {"baseline": "fixmatch", "pretrained": "unimatch"}
    text = (work / "report.md").read_text()
    assert f"| fine-tune only (baseline) + FixMatch consistency | {baseline['mIoU']:.2f} |" in text
    assert f"| pre-train with auxiliary labels + fine-tune + UniMatch consistency | {pretrained['mIoU']:.2f} |" in text
