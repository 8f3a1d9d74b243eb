"""mmseg on CPU through the compatibility layer: DeepLabV3 (ASPPHead) and PSPNet (PSPHead) with ResNet
backbones train two iterations, validate with IoUMetric, save a checkpoint and resume from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from auxseg.checkpoint_io import allow_mmengine_checkpoints, load_checkpoint

TINY = Path(__file__).resolve().parents[2] / "configs/finetune/mmseg/tiny"
TINY_DEEPLAB = TINY / "deeplabv3_r18-d8_tiny.py"
TINY_PSP = TINY / "pspnet_r18-d8_tiny.py"


@pytest.mark.parametrize(
    "config, backbone_type, head_type",
    [(TINY_DEEPLAB, "ResNetV1c", "ASPPHead"), (TINY_PSP, "ResNet", "PSPHead")],
    ids=["deeplabv3-ResNetV1c", "pspnet-ResNet"],
)
def test_train_validate_checkpoint_resume(tmp_path, synthetic_root, make_tiny_cfg, config, backbone_type, head_type):
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    allow_mmengine_checkpoints()  # mmengine's resume uses torch.load(weights_only=True) itself
    work_dir = tmp_path / "work"

    class Count(Hook):
        def __init__(self):
            self.train_iters = 0
            self.val_metrics = []

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            self.train_iters += 1
            assert torch.isfinite(outputs["loss"]) if "loss" in outputs else True

        def after_val_epoch(self, runner, metrics=None):
            self.val_metrics.append(dict(metrics))

    cfg = make_tiny_cfg(config, synthetic_root, work_dir, max_iters=2)
    cfg.model.backbone.type = backbone_type
    cfg.val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])  # mmseg's own metric
    counter = Count()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(counter)
    assert type(runner.model.decode_head).__name__ == head_type
    assert type(runner.model.backbone).__name__ == backbone_type
    runner.train()
    assert counter.train_iters == 2
    assert len(counter.val_metrics) == 1 and 0.0 <= counter.val_metrics[0]["mIoU"] <= 100.0
    ckpt_path = work_dir / "iter_2.pth"
    assert ckpt_path.is_file() and (work_dir / "last_checkpoint").is_file()
    saved = load_checkpoint(ckpt_path)
    assert saved["meta"]["iter"] == 2 and "message_hub" in saved and "optimizer" in saved

    # resume: a new Runner in the same work_dir continues at iteration 2 with the saved weights
    cfg2 = make_tiny_cfg(config, synthetic_root, work_dir, max_iters=3)
    cfg2.model.backbone.type = backbone_type
    cfg2.val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
    cfg2.param_scheduler[0].end = 2  # the restored scheduler state is what counts (environment.md)
    cfg2.resume = True
    cfg2.experiment_name = "resumed"
    counter2 = Count()
    runner2 = Runner.from_cfg(cfg2)
    runner2.register_hook(counter2)

    class CheckResumedWeights(Hook):
        def before_train(self, runner):
            assert runner.iter == 2
            model_sd = runner.model.state_dict()
            for key, value in saved["state_dict"].items():
                assert torch.equal(model_sd[key].cpu(), value.cpu()), key

    runner2.register_hook(CheckResumedWeights())
    runner2.train()
    assert counter2.train_iters == 1 and runner2.iter == 3
    assert len(counter2.val_metrics) == 1  # validated at the last iteration
    assert (work_dir / "iter_3.pth").is_file()
