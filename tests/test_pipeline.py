"""The semi-supervised loop end to end on tiny generated data (loop.pipeline)."""

from __future__ import annotations

import copy
import json
import re

import pytest
from tiny_runs import TINY_PIPELINE

from auxseg.config import ConfigError, load_config, to_dict
from loop.pipeline import PipelineConfig, run
from loop.pipeline_cli import DEMO_CONFIG
from pretrain.config import PretrainConfig

TINY = TINY_PIPELINE


def tiny_config(tmp_path, *extra):
    return load_config(PipelineConfig, DEMO_CONFIG, [f"work_dir={tmp_path / 'run'}", *TINY, *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """The tiny loop through the command line (``auxseg demo key=value ...``), as a user runs it."""
    from loop.cli import main

    tmp_path = tmp_path_factory.mktemp("pipeline")
    assert main(["demo", f"work_dir={tmp_path / 'run'}", *TINY]) == 0
    return tmp_path, tiny_config(tmp_path), tmp_path / "run" / "report.md"


def _final_checkpoint(step_dir):
    results = json.loads((step_dir / "results.json").read_text())
    return results, step_dir / f"iter_{results['iteration']}.pth"


def test_loop_writes_report_figures_and_summary(finished_run):
    """Every headline number is recomputed from the files by another route, and report.md states it."""
    from independent import labels_sha256_by_formula, miou_by_inference, pmiou_by_enumeration

    tmp_path, cfg, report = finished_run
    work = tmp_path / "run"
    text = report.read_text()
    assert "fine-tune only (baseline)" in text and "PmIoU" in text
    for fig in ("auxlabels_overlay.png", "feature_view.png", "per_class_iou.png", "training_curves.png"):
        path = work / "figures" / fig
        assert path.stat().st_size > 1000 and f"figures/{fig}" in text
    summary = json.loads((work / "summary.json").read_text())
    for key, step in (("baseline_mIoU", "1_segmenter_seed0"), ("pretrained_mIoU", "4_finetune_seed0")):
        results, ckpt = _final_checkpoint(work / step)
        again = miou_by_inference(work / step, ckpt, num_classes=6)
        assert summary[key]["0"] == results["mIoU"] == again["mIoU"]
        assert list(results["per_class_iou"].values()) == again["per_class_iou"]
    base, pre = summary["baseline_mIoU"]["0"], summary["pretrained_mIoU"]["0"]
    assert f"| fine-tune only (baseline) | {base:.2f} |" in text
    assert f"| pre-train with auxiliary labels + fine-tune | {pre:.2f} |" in text
    assert f"| difference | {pre - base:+.2f} |" in text
    manifest = json.loads((work / "2_auxlabels" / "manifest.json").read_text())
    assert manifest["labels_sha256"] == labels_sha256_by_formula(work / "2_auxlabels" / "labels", manifest["images"])
    files = [(work / "2_auxlabels" / "labels" / rel, work / "data" / "valannot" / rel.split("/")[-1])
             for rel in manifest["eval_images"]]
    pmiou = pmiou_by_enumeration(files, manifest["num_labels"], 6)
    assert summary["pmiou"]["pmiou"] == pytest.approx(pmiou, abs=1e-9)
    assert f"PmIoU (Hungarian, one-to-one) = {pmiou:.2f}" in text
    # the fine-tune after pre-training really started from the exported backbone
    init = json.loads((work / "4_finetune_seed0" / "results.json").read_text())["init"]
    assert init["type"] == "export" and init["verified_tensors"] > 0
    assert init["checkpoint"].endswith("backbone_mmseg.pth")
    # the demo pre-trains the ASPP decoder too, and the fine-tune's decode head starts from it
    assert init["decoder"].endswith("decoder_mmseg.pth") and init["verified_decoder_tensors"] == 36
    # both fine-tunes used the same labelled images
    split = [(work / d / "split.txt").read_text() for d in ("1_segmenter_seed0", "4_finetune_seed0")]
    assert split[0] == split[1] and len(split[0].split()) == 4


def test_pretraining_never_sees_validation_images(finished_run):
    tmp_path, _, _ = finished_run
    work = tmp_path / "run"
    manifest = json.loads((work / "2_auxlabels" / "manifest.json").read_text())
    val = {p for p in manifest["images"] if p.startswith("val/")}
    assert len(val) == 4 and set(manifest["eval_images"]) == val  # labelled for PmIoU only
    from pretrain.data import read_label_folder

    folder = read_label_folder(work / "2_auxlabels")
    assert len(folder.images) == 12 and all(p.startswith("train/") for p in folder.images)


def test_rerun_reuses_finished_steps(finished_run, capsys):
    """``auxseg pipeline CONFIG`` on the demo's work_dir: every step is reused, the report is the same."""
    from loop.cli import main

    tmp_path, _, report = finished_run
    before = report.read_text()
    assert main(["pipeline", str(DEMO_CONFIG), f"work_dir={tmp_path / 'run'}", *TINY]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier, reusing") == 4 and report.read_text() == before


def test_changed_step_config_is_refused(finished_run):
    tmp_path, _, _ = finished_run
    cfg = tiny_config(tmp_path, "pretrain.loss.infonce.temperature=0.2")
    with pytest.raises(ConfigError, match=r"step 'pretrain'.*loss\.infonce\.temperature"):
        run(cfg)


def test_head_classes_must_match_the_dataset(tmp_path):
    cfg = tiny_config(tmp_path, "data.synthetic.num_classes=5")
    with pytest.raises(ConfigError, match=r"decode_head.num_classes=6, but the dataset has 5 classes"):
        run(cfg)
    assert not (tmp_path / "run" / "1_segmenter_seed0").exists()  # stopped before any training


@pytest.mark.parametrize(("override", "key", "instead"), [
    ("pretrain.model.arch=resnet50", "pretrain.model.arch", "finetune.mmseg_config"),
    ("pretrain.model.init=/x/r18.pth", "pretrain.model.init", "baseline_init"),
    ("auxlabels.extractor.name=vgg19", "auxlabels.extractor.name", "seed-0 segmenter"),
    ("auxlabels.num_classes=9", "auxlabels.num_classes", "data.num_classes"),
    ("finetune.seed=3", "finetune.seed", "seeds"),
])
def test_a_template_key_the_pipeline_owns_is_an_error(tmp_path, override, key, instead):
    cfg = tiny_config(tmp_path, override)
    with pytest.raises(ConfigError, match=rf"^{key}: the pipeline sets this key itself.*{instead}"):
        run(cfg)
    assert not (tmp_path / "run" / "1_segmenter_seed0").exists()  # stopped before any training


def test_an_objective_reading_priors_needs_soft_labels(tmp_path):
    cfg = tiny_config(tmp_path, "pretrain.loss.name=qr", "pretrain.loss.qr.use_priors=true")
    with pytest.raises(ConfigError, match=r"^pretrain.loss.qr.use_priors: .*auxlabels.soft_labels.enabled=true"):
        run(cfg)
    assert not (tmp_path / "run" / "1_segmenter_seed0").exists()  # stopped before any training


def test_pipeline_pretrains_rq_on_the_soft_priors_it_writes(tmp_path):
    """auxlabels.soft_labels.enabled + pretrain.loss.rq.use_priors: the loop with another objective on soft labels."""
    from auxseg.contracts.label_folder import read_label_folder

    cfg = tiny_config(tmp_path, "auxlabels.soft_labels.enabled=true", "pretrain.loss.name=rq",
                      "pretrain.loss.rq.use_priors=true", "pretrain.loss.rq.warmup_iters=1")
    run(cfg)
    work = tmp_path / "run"
    folder = read_label_folder(work / "2_auxlabels")
    assert folder.has_priors and len(list((work / "2_auxlabels" / "priors").rglob("*.npz"))) == 16
    pre = json.loads((work / "3_pretrain" / "step.json").read_text())["config"]["loss"]
    assert pre["name"] == "rq" and pre["rq"]["use_priors"]
    from auxseg.checkpoint_io import load_checkpoint

    state = load_checkpoint(work / "3_pretrain" / "checkpoints" / "iter_0000003.pth")
    assert state["priors_sha256"] == folder.priors_sha256  # trained on the soft priors, not the hard labels
    summary = json.loads((work / "summary.json").read_text())
    results = json.loads((work / "4_finetune_seed0" / "results.json").read_text())
    assert summary["pretrained_mIoU"]["0"] == results["mIoU"] and results["init"]["type"] == "export"


def test_the_value_the_pipeline_would_set_is_accepted(tmp_path):
    from loop.pipeline import check_owned_keys, planned_backbone

    cfg = tiny_config(tmp_path, "pretrain.model.arch=resnet18", "auxlabels.num_classes=6")
    assert planned_backbone(cfg) == (18, "ResNetV1c")
    pre = copy.deepcopy(cfg.pretrain)
    pre.model.stem = "deep"
    aux = copy.deepcopy(cfg.auxlabels)
    aux.extractor.name, aux.extractor.random_init = "mmseg", False
    ft = copy.deepcopy(cfg.finetune)
    ft.split = copy.deepcopy(cfg.labelled)
    check_owned_keys(cfg, {"finetune": ft, "auxlabels": aux, "pretrain": pre})  # no error


def test_pretraining_follows_the_output_stride_of_the_fine_tune_config(tmp_path):
    from loop.pipeline import planned_output_stride, pretrain_config

    demo = load_config(PipelineConfig, DEMO_CONFIG)  # the -d16 tiny config
    assert planned_output_stride(demo) == 16
    assert pretrain_config(demo, tmp_path / "3", tmp_path / "2", 18, "ResNetV1c").model.output_stride == 16
    d8 = tiny_config(tmp_path, "finetune.mmseg_config=configs/finetune/mmseg/tiny/deeplabv3_r18-d8_tiny.py")
    assert planned_output_stride(d8) == 8
    base = DEMO_CONFIG.parents[1] / "finetune/mmseg/tiny/deeplabv3_r18-d8_tiny.py"
    for name, backbone in [("r18_os32", "strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1)"),  # no dilation at all
                           ("r18_os16_undilated", "strides=(1, 2, 2, 1), dilations=(1, 1, 1, 1)")]:
        other = tmp_path / f"{name}.py"
        other.write_text(f"_base_ = ['{base}']\nmodel = dict(backbone=dict({backbone}))\n")
        strides = re.escape(backbone.split("=")[1].split("), ")[0] + ")")
        with pytest.raises(ConfigError, match=rf"{name}.py has backbone strides {strides}, dilations"):
            planned_output_stride(tiny_config(tmp_path, f"finetune.mmseg_config={other}"))


def test_a_pretrain_step_finished_before_output_stride_existed_is_reused(tmp_path):
    """step.json of a pretrain step recorded before model.output_stride: its config meant stride 8."""
    from auxseg.files import atomic_write_json
    from loop.pipeline import run_step
    from pretrain.checkpoint import with_added_defaults

    cfg = load_config(PretrainConfig, DEMO_CONFIG.parents[1] / "pretrain" / "tiny.yaml")
    old = to_dict(cfg)
    del old["model"]["output_stride"]
    atomic_write_json(tmp_path / "step.json", {"config": old, "result": "export.pth"})
    assert run_step("pretrain", tmp_path, cfg, lambda: pytest.fail("ran again"), upgrade=with_added_defaults) == \
        "export.pth"
    cfg.model.output_stride = 16  # a stride-16 run is another config
    with pytest.raises(ConfigError, match="first difference: model.output_stride"):
        run_step("pretrain", tmp_path, cfg, lambda: pytest.fail("ran again"), upgrade=with_added_defaults)


@pytest.mark.parametrize("preset", ["demo.yaml", "camvid_cpu.yaml", "camvid_gpu.yaml"])
def test_shipped_presets_and_their_saved_config_pass_the_ownership_check(tmp_path, preset):
    """The presets set no owned key to another value, and the config.yaml a run saves (owned keys left
    out) loads and passes again, so a run can be repeated from it."""
    from auxseg.synthetic import CLASS_NAMES
    from loop.pipeline import (
        Dataset,
        auxlabels_config,
        check_owned_keys,
        finetune_config,
        planned_backbone,
        pretrain_config,
        shown_config,
    )

    def check(cfg):
        spec = cfg.data.synthetic
        data = (Dataset(tmp_path, spec.num_classes, list(CLASS_NAMES[: spec.num_classes]), [255]) if spec else
                Dataset(tmp_path, cfg.data.num_classes, cfg.data.class_names, cfg.data.ignore_values))
        seg = tmp_path / "1_segmenter_seed0"
        check_owned_keys(cfg, {"finetune": finetune_config(cfg, data, seg, cfg.baseline_init, cfg.seeds[0]),
                               "auxlabels": auxlabels_config(cfg, data, tmp_path / "2", seg / "iter.pth"),
                               "pretrain": pretrain_config(cfg, tmp_path / "3", tmp_path / "2", *planned_backbone(cfg))})

    cfg = load_config(PipelineConfig, DEMO_CONFIG.parent / preset)
    check(cfg)
    saved = tmp_path / "config.yaml"
    saved.write_text(shown_config(cfg))
    assert "stem:" not in saved.read_text().split("pretrain:")[1].split("optim:")[0]
    check(load_config(PipelineConfig, saved))


def test_dataset_folder_errors_name_the_key(tmp_path):
    from loop.pipeline import prepare_data

    (tmp_path / "ds" / "train").mkdir(parents=True)
    cfg = load_config(PipelineConfig, overrides=[f"data.root={tmp_path / 'ds'}", "data.num_classes=2"])
    with pytest.raises(ConfigError, match="has no trainannot/ folder"):
        prepare_data(cfg, tmp_path)
    for sub in ("trainannot", "val", "valannot"):
        (tmp_path / "ds" / sub).mkdir()
    cfg = load_config(PipelineConfig, overrides=[f"data.root={tmp_path / 'ds'}", "data.num_classes=2",
                                                 "data.class_names=[a, b, c]"])
    with pytest.raises(ConfigError, match="data.class_names: 3 names for num_classes=2"):
        prepare_data(cfg, tmp_path)


def test_report_finds_overlay_pairs_through_the_manifest_and_warns_without(tmp_path):
    from loop.report import _eval_label_pairs, write_report

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "ds" / "valannot").mkdir(parents=True)
    (tmp_path / "ds" / "val").symlink_to(tmp_path / "elsewhere")  # the split is a link
    (tmp_path / "elsewhere" / "0001.png").write_bytes(b"x")
    (tmp_path / "ds" / "valannot" / "0001.png").write_bytes(b"x")
    labels = tmp_path / "2_auxlabels"
    (labels / "labels" / "val").mkdir(parents=True)
    (labels / "labels" / "val" / "0001.png").write_bytes(b"x")
    manifest = {"image_root": str(tmp_path / "ds"), "eval_images": ["val/0001.png"]}
    assert _eval_label_pairs(manifest, labels, tmp_path / "ds", 4) == [
        (tmp_path / "ds" / "val" / "0001.png", labels / "labels" / "val" / "0001.png",
         tmp_path / "ds" / "valannot" / "0001.png")]
    result = {"mIoU": 10.0, "per_class_iou": {"a": 10.0}, "split": {}}
    with pytest.warns(UserWarning, match="no validation image with its auxiliary label"):
        write_report(tmp_path, tmp_path / "ds", ["a"], {"image_root": str(tmp_path / "ds"), "num_labels": 2,
                     "ignore_index": 255}, {0: result}, {0: result}, str(tmp_path / "x.pth"))
