"""bf16 pre-training on the CPU (``train.amp=bf16``): the network runs under CPU autocast, the loss stays fp32,
and one step gives every trainable parameter a finite gradient and about the fp32 loss."""

from __future__ import annotations

import json

import pytest
import torch

from auxseg.precision import autocast, cpu_bf16_flags, native_bf16, precision_report
from pretrain.objectives.infonce import InfoNCE
from pretrain.train import run


def test_precision_helper(tmp_path):
    assert isinstance(autocast("cpu", "none"), type(autocast("cuda", "none")))  # a no-op context for "none"
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision: 'bf8'"):
        autocast("cpu", "bf8")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert cpu_bf16_flags(cpuinfo) == ["avx512_bf16"]
    assert cpu_bf16_flags(tmp_path / "missing") == []
    assert isinstance(native_bf16("cpu"), bool) and native_bf16("meta") is False
    assert set(precision_report()) == {"torch_cpu_capability", "bf16_flags", "native_bf16"}


def test_one_bf16_step_on_cpu(gt_label_folder, tmp_path, tiny_config, monkeypatch):
    seen = []
    forward = InfoNCE.forward

    def recording(self, features, batch):
        seen.append((features.dtype, torch.is_autocast_enabled("cpu")))
        loss, stats = forward(self, features, batch)
        assert loss.dtype == torch.float32  # the loss in fp32 whatever the AMP setting
        return loss, stats

    monkeypatch.setattr(InfoNCE, "forward", recording)
    common = ["train.max_iters=1", "train.log_every=1", "train.checkpoint_every=1", "optim.warmup_iters=0"]
    run(tiny_config(tmp_path / "fp32", gt_label_folder, *common))
    run(tiny_config(tmp_path / "bf16", gt_label_folder, *common, "train.amp=bf16"))
    assert seen == [(torch.float32, False), (torch.bfloat16, True)]
    loss32, loss16 = (json.loads((tmp_path / d / "log.jsonl").read_text())["loss"] for d in ("fp32", "bf16"))
    assert loss16 == pytest.approx(loss32, rel=0.02)  # same initial weights, batch and pixel sample

    # every trainable parameter gets a finite fp32 gradient from a bf16 step
    from pretrain.data import StepSampler, TwoViewDataset, collate, read_label_folder
    from pretrain.objectives.base import StepBatch
    from pretrain.train import PretrainModel

    cfg = tiny_config(tmp_path / "direct", gt_label_folder)
    folder = read_label_folder(gt_label_folder)
    model = PretrainModel(cfg)
    model.objective.check_folder(folder)
    ds = TwoViewDataset(folder, cfg.augment, seed=0)
    batch = collate([ds[k] for k in StepSampler(len(ds), 2, seed=0, start_iter=0, max_iters=1).batch_keys(0)])
    step = StepBatch(label=batch["label"], coords=batch["coords"], index=batch["index"], size=batch["size"],
                     folder=folder, iteration=0, generator=torch.Generator().manual_seed(0))
    with autocast("cpu", "bf16"):
        loss, _ = model.objective(model(batch["image"].flatten(0, 1)), step)
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
