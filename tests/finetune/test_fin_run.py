"""End to end on CPU: the tiny preset fine-tunes on synthetic CamVid-layout data and writes its results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from independent import miou_by_inference

from auxseg.config import ConfigError, load_config
from finetune.config import FinetuneConfig
from loop.cli import main as auxseg_main

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_YAML = REPO_ROOT / "configs/finetune/tiny.yaml"


def test_cli_tiny_preset_from_pretrain_export(tmp_path, synthetic_root, make_export, capsys):
    export = make_export(tmp_path / "backbone.pth", deep=False)
    work = tmp_path / "work"
    rc = auxseg_main([
        "finetune", str(TINY_YAML), f"data_root={synthetic_root}", f"work_dir={work}",
        "init.type=export", f"init.checkpoint={export}", "split.fraction=0.5", "split.seed=1",
    ])
    assert rc == 0
    assert "mIoU" in capsys.readouterr().out
    for name in ("config.yaml", "mmseg_config.py", "split.txt", "init_report.json", "results.json", "iter_4.pth"):
        assert (work / name).is_file(), name

    results = json.loads((work / "results.json").read_text())
    assert results["format"] == "auxseg.finetune/1"
    assert set(results["per_class_iou"]) == {"sky", "ground", "wall", "tree", "car", "person"}
    # the same numbers by another route: the saved checkpoint predicts every val image, numpy counts pixels
    again = miou_by_inference(work, work / "iter_4.pth", num_classes=6)
    assert results["mIoU"] == again["mIoU"] and list(results["per_class_iou"].values()) == again["per_class_iou"]
    present = [v for v in results["per_class_iou"].values() if v is not None]
    assert results["mIoU"] == pytest.approx(sum(present) / len(present), abs=0.02)  # mIoU = mean of class IoUs
    assert results["iteration"] == 4 and [h["iter"] for h in results["val_history"]] == [2, 4]
    # evaluated on the validation folder, trained on 3 of the 6 training images
    assert results["evaluated_on"]["img_path"] == "val" and results["evaluated_on"]["num_images"] == 2
    assert results["split"]["num_images"] == 3 and results["split"]["num_available"] == 6
    assert len((work / "split.txt").read_text().split()) == 3

    report = json.loads((work / "init_report.json").read_text())
    assert report["missing_keys"] == [] and report["unexpected_keys"] == []
    assert report["backbone_type"] == "ResNet" and report["verified_tensors"] > 100
    assert results["init"]["verified_tensors"] == report["verified_tensors"]
    mmseg_cfg = (work / "mmseg_config.py").read_text()
    assert "init_backbone.pth" in mmseg_cfg and "TensorboardVisBackend" in mmseg_cfg
    saved = yaml.safe_load((work / "config.yaml").read_text())
    assert saved["init"]["type"] == "export" and saved["split"]["fraction"] == 0.5

    log_dirs = [d for d in work.iterdir() if d.is_dir()]
    assert len(log_dirs) == 1 and list(log_dirs[0].glob("vis_data/events.out.tfevents.*"))  # TensorBoard

    # same command again: resumes at the end, trains nothing more, re-evaluates, same split
    rc = auxseg_main([
        "finetune", str(TINY_YAML), f"data_root={synthetic_root}", f"work_dir={work}",
        "init.type=export", f"init.checkpoint={export}", "split.fraction=0.5", "split.seed=1",
    ])
    assert rc == 0
    again = json.loads((work / "results.json").read_text())
    assert again["iteration"] == 4 and again["mIoU"] == pytest.approx(results["mIoU"], abs=1e-6)
    # the second run logged into its own folder, not into the first run's (one process, two Runners)
    assert len(list(log_dirs[0].glob("vis_data/*.json"))) == 2  # scalars.json + the first run's own log


def test_cli_refuses_wrong_checkpoint_before_training(tmp_path, synthetic_root, make_export, capsys):
    import torch

    from auxseg.checkpoint_io import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(make_export(tmp_path / "export.pth"))
    del ckpt["state_dict"]["layer2.0.downsample.0.weight"]
    save_checkpoint(ckpt, tmp_path / "broken.pth")
    work = tmp_path / "work"
    rc = auxseg_main(["finetune", str(TINY_YAML), f"data_root={synthetic_root}", f"work_dir={work}",
                      "init.type=export", f"init.checkpoint={tmp_path / 'broken.pth'}"])
    err = capsys.readouterr().err
    assert rc == 1 and "broken.pth" in err and "layer2.0.downsample.0.weight" in err
    assert not (work / "results.json").exists() and not list(work.glob("iter_*.pth"))
    assert torch.load(tmp_path / "broken.pth", weights_only=True)  # the input was not touched


def test_config_schema_rejects_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'max_iters'"):
        load_config(FinetuneConfig, TINY_YAML, ["max_iter=3"])
    with pytest.raises(ConfigError, match="only one of"):
        load_config(FinetuneConfig, TINY_YAML, ["split.fraction=0.1", "split.num_images=5"])
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        load_config(FinetuneConfig, TINY_YAML, ["split.fraction=10"])
    with pytest.raises(ConfigError, match="'export'"):
        load_config(FinetuneConfig, TINY_YAML, ["init.type=exprt"])
    assert auxseg_main(["finetune", str(TINY_YAML), "--print-config"]) == 0


def test_cuda_requested_without_gpu_is_a_clear_error(tmp_path, synthetic_root):
    import torch

    from finetune.run import run

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    cfg = load_config(FinetuneConfig, TINY_YAML, [f"data_root={synthetic_root}", f"work_dir={tmp_path}", "device=cuda"])
    with pytest.raises(ConfigError, match="device=cuda but no CUDA device"):
        run(cfg)
    assert not list(tmp_path.glob("iter_*.pth"))


def test_shipped_yaml_presets_load():
    for path in sorted((REPO_ROOT / "configs/finetune").glob("*.yaml")):
        cfg = load_config(FinetuneConfig, path)
        assert (REPO_ROOT / cfg.mmseg_config).is_file(), path
        if cfg.split.file:
            assert (REPO_ROOT / cfg.split.file).is_file(), path


@pytest.mark.realdata
@pytest.mark.slow
def test_camvid_short_cpu_run(tmp_path, camvid):
    """Two iterations of ResNet-18 DeepLabV3 on real CamVid (10% split), evaluated on a few val images."""
    work = tmp_path / "work"
    rc = auxseg_main(["finetune", str(REPO_ROOT / "configs/finetune/camvid_r18_cpu.yaml"), f"data_root={camvid}",
                      f"work_dir={work}", "max_iters=2", "val_interval=2", "num_workers=0",
                      "split.file=splits/camvid/train_10pct_seed0.txt",
                      "cfg_options={val_dataloader.dataset.indices: 4}"])
    assert rc == 0
    results = json.loads((work / "results.json").read_text())
    assert len(results["per_class_iou"]) == 11 and results["split"]["num_images"] == 37


@pytest.mark.gpu
def test_tiny_preset_on_cuda_with_bf16(tmp_path, synthetic_root, make_export):
    """The CUDA path: model on the GPU, bf16 autocast through AmpOptimWrapper, same outputs on disk."""
    export = make_export(tmp_path / "backbone.pth", deep=True)
    work = tmp_path / "work"
    rc = auxseg_main(["finetune", str(TINY_YAML), f"data_root={synthetic_root}", f"work_dir={work}",
                      "device=cuda", "amp=true", "init.type=export", f"init.checkpoint={export}"])
    assert rc == 0
    results = json.loads((work / "results.json").read_text())
    assert results["init"]["verified_tensors"] > 100 and results["iteration"] == 4
    assert "AmpOptimWrapper" in (work / "mmseg_config.py").read_text()
