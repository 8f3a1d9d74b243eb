"""mmseg on CPU through the compatibility layer: DeepLabV3 (ASPPHead) and PSPNet (PSPHead) with ResNet
backbones train two iterations, validate with IoUMetric, save a checkpoint and resume from it."""

from __future__ import annotations

import shutil

import pytest
import torch
from fin_helpers import TINY_DEEPLAB, TINY_PSP, train_tiny
from independent import miou_by_inference

from auxseg.checkpoint_io import load_checkpoint


@pytest.mark.parametrize(
    "config, backbone_type, head_type",
    [(TINY_DEEPLAB, "ResNetV1c", "ASPPHead"), (TINY_PSP, "ResNet", "PSPHead")],
    ids=["deeplabv3-ResNetV1c", "pspnet-ResNet"],
)
def test_train_validate_checkpoint_resume(tmp_path, synthetic_root, trained_deeplab, config, backbone_type,
                                          head_type):
    from mmengine.hooks import Hook

    class CheckModel(Hook):
        def before_train(self, runner):
            assert type(runner.model.decode_head).__name__ == head_type
            assert type(runner.model.backbone).__name__ == backbone_type

    if config == TINY_DEEPLAB:  # trained once per session (the safe-load tests read it too)
        first = trained_deeplab
    else:
        first = train_tiny(config, synthetic_root, tmp_path / "first" / "work", backbone_type, hooks=[CheckModel()])
    assert first.train_iters == 2
    ckpt_path = first.work_dir / "iter_2.pth"
    # mmseg's IoUMetric during training == the saved checkpoint's predictions counted with numpy
    assert len(first.val_metrics) == 1
    assert first.val_metrics[0]["mIoU"] == miou_by_inference(first.cfg, ckpt_path, num_classes=6)["mIoU"]
    assert ckpt_path.is_file() and (first.work_dir / "last_checkpoint").is_file()
    saved = load_checkpoint(ckpt_path)
    assert saved["meta"]["iter"] == 2 and "message_hub" in saved and "optimizer" in saved

    # resume: a new Runner in (a copy of) the work_dir continues at iteration 2 with the saved weights
    work_dir = tmp_path / "resume" / "work"
    shutil.copytree(first.work_dir, work_dir)
    (work_dir / "last_checkpoint").write_text(str(work_dir / "iter_2.pth"))

    class CheckResumedWeights(Hook):
        def before_train(self, runner):
            assert runner.iter == 2
            model_sd = runner.model.state_dict()
            for key, value in saved["state_dict"].items():
                assert torch.equal(model_sd[key].cpu(), value.cpu()), key

    second = train_tiny(config, synthetic_root, work_dir, backbone_type, max_iters=3, resume=True,
                        hooks=[CheckModel(), CheckResumedWeights()])
    assert second.train_iters == 1
    assert len(second.val_metrics) == 1  # validated at the last iteration
    assert (work_dir / "iter_3.pth").is_file()
