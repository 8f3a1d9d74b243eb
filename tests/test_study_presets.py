"""The shipped study presets: each plans on CamVid, and each arm changes only what it says it changes.

The arms of the CamVid presets are planned on the tiny demo pipeline (configs/study/tiny.yaml), so the
checks run without CamVid in seconds; the plan on CamVid itself needs the data (realdata marker).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from loop.study import load_study, plan

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "configs" / "study").glob("*.yaml"))
CAMVID_PRESETS = [p for p in PRESETS if p.name.startswith("camvid_")]


def _arms(preset: str) -> list[dict]:
    return yaml.safe_load((REPO / "configs" / "study" / preset).read_text())["arms"]


def _tiny_plan(tmp_path: Path, preset: str, *extra: str):
    """The arms of ``preset`` planned on the tiny demo pipeline (one pre-training and one fine-tune seed)."""
    arms = _arms(preset)
    reference = yaml.safe_load((REPO / "configs" / "study" / preset).read_text())["reference"]
    study = load_study(REPO / "configs" / "study" / "tiny.yaml",
                       [f"work_dir={tmp_path}", "arms=" + json.dumps(arms), f"reference={reference}",
                        "pretrain_seeds=[0]", "finetune_seeds=[0]", *extra])
    return plan(study)


def _cells(p, kind: str) -> dict[str, dict]:
    """The planned cells of one kind by arm name (the config that identifies each)."""
    out = {}
    for cell in p.cells.values():
        if cell.kind == kind:
            out[cell.label.split(" ")[1] if kind == "pretrain" else cell.label.split("(")[-1].rstrip(")")] = cell
    return out


def _differing(a: dict, b: dict, prefix: str = "") -> set[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = set(a) | set(b)
    out = set()
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out |= _differing(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.add(f"{prefix}{k}")
    return out


@pytest.mark.parametrize("preset", [p.name for p in PRESETS])
def test_every_preset_loads(preset):
    study = load_study(REPO / "configs" / "study" / preset)
    assert study.reference in [a.name for a in study.arms]


def test_objectives_change_only_the_loss(tmp_path):
    p = _tiny_plan(tmp_path, "camvid_objectives.yaml")
    pre = _cells(p, "pretrain")
    assert set(pre) == {"infonce", "metric_l2", "qr_soft", "rq_soft"}
    base = pre["infonce"].config
    assert _differing(pre["metric_l2"].config, base) == {"loss.name"}
    for arm, loss in (("qr_soft", "qr"), ("rq_soft", "rq")):
        assert _differing(pre[arm].config, base) == {"loss.name", f"loss.{loss}.use_priors",
                                                     f"loss.{loss}.warmup_iters"}
        # soft labels: their own label folder (the same hard labels plus priors), from the same segmenter
        assert pre[arm].deps[0] != pre["infonce"].deps[0] and pre[arm].deps[1] == pre["infonce"].deps[1]
    assert pre["metric_l2"].deps == pre["infonce"].deps  # the pipeline's labels, shared
    aux = {c.key: c for c in p.cells.values() if c.kind == "auxlabels"}
    soft = aux[pre["qr_soft"].deps[0]].config
    assert _differing(soft, aux[pre["infonce"].deps[0]].config) == {"soft_labels.enabled"}
    assert pre["qr_soft"].deps[0] == pre["rq_soft"].deps[0]  # QR and RQ share one soft label folder


def test_strategies_change_only_the_labelling(tmp_path):
    p = _tiny_plan(tmp_path, "camvid_strategies.yaml")
    aux = _cells(p, "auxlabels")
    ref = aux["segmenter_kmeans"].config
    assert _differing(aux["same_superpixel"].config, ref) == {"clusterer"}
    assert _differing(aux["random_features_kmeans"].config, ref) == {
        "extractor.name", "extractor.random_init", "extractor.layer"}
    assert aux["random_features_kmeans"].config["extractor"]["name"] == "resnet18"
    pre = _cells(p, "pretrain")
    # #1 same pixel reuses the pipeline's labels; only the InfoNCE grouping differs
    assert pre["same_pixel"].deps == pre["segmenter_kmeans"].deps
    assert _differing(pre["same_pixel"].config, pre["segmenter_kmeans"].config) == {"loss.infonce.mode"}
    assert _differing(pre["same_superpixel"].config, pre["segmenter_kmeans"].config) == {"loss.infonce.mode"}


def test_local_prediction_changes_only_the_objective_and_its_schedule(tmp_path):
    p = _tiny_plan(tmp_path, "camvid_local_prediction.yaml")
    pre = _cells(p, "pretrain")
    assert pre["local_prediction"].deps == pre["infonce"].deps  # same images (and ignored labels), same start
    changed = _differing(pre["local_prediction"].config, pre["infonce"].config)
    assert changed and all(k.split(".")[0] in ("loss", "optim", "augment") for k in changed), changed
    assert "model.arch" not in changed and "train.max_iters" not in changed


def test_every_pretrained_arm_starts_its_fine_tune_the_same_way(tmp_path):
    """Equal initialisation: every pre-trained arm's fine-tunes read their pre-training's export (backbone and,
    when there is one, decoder); the fine-tune config is otherwise the segmenter's."""
    p = _tiny_plan(tmp_path, "camvid_objectives.yaml")
    segmenter = next(c for c in p.cells.values() if c.kind == "segmenter").config
    for cell in p.cells.values():
        if cell.kind == "finetune":
            assert p.cells[cell.deps[0]].kind == "pretrain"
            assert _differing(cell.config, segmenter) == {"init.type"} and cell.config["init"]["type"] == "export"


@pytest.mark.realdata
@pytest.mark.parametrize("preset", [p.name for p in CAMVID_PRESETS])
def test_camvid_presets_plan_on_camvid(preset, camvid, tmp_path):
    """Each CamVid preset passes the pipeline's checks for every arm on the real data and plans its grid."""
    study = load_study(REPO / "configs" / "study" / preset, [f"work_dir={tmp_path}"])
    study.overrides.append(f"data.root={camvid}")
    p = plan(study)
    pre_arms = [a for a in study.arms if a.pretrain]
    fractions = len(study.fractions or [None])
    assert len(p.runs) == fractions * len(study.finetune_seeds) * (
        len(study.arms) - len(pre_arms) + len(pre_arms) * len(study.pretrain_seeds))


def test_plan_prices_consistency_fine_tunes_by_their_measured_cost(tmp_path):
    """Until a cell of its kind has finished, a FixMatch / UniMatch fine-tune is estimated at the labels-only rate
    times its measured step cost (docs/consistency.md, "Cost"): the estimate a user plans hours with."""
    from loop.study import CONSISTENCY_FACTOR, DEFAULT_SECONDS, estimate

    p = _tiny_plan(tmp_path, "camvid_consistency.yaml")
    rows = {r["label"]: r for r in estimate(p)}
    iters = {c.label: c.iterations for c in p.cells.values()}
    for label, row in rows.items():
        if label.startswith("fine-tune"):
            arm = label.split(" ")[1]
            method = {"fixmatch": "fixmatch", "unimatch": "unimatch", "infonce_unimatch": "unimatch"}.get(arm)
            expected = DEFAULT_SECONDS["finetune"] * CONSISTENCY_FACTOR.get(method, 1.0) * iters[label]
            assert row["estimate_s"] == pytest.approx(expected) and not row["done"], label
    assert {r["label"].split(" ")[1] for r in rows.values() if r["label"].startswith("fine-tune")} == {
        "fixmatch", "unimatch", "infonce", "infonce_unimatch"}
