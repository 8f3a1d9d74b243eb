"""bf16 fine-tuning on the CPU: ``amp=true device=cpu`` selects CPUBf16OptimWrapper (mmengine's
AmpOptimWrapper refuses a CPU), whose context runs the forward under bf16 autocast."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from independent import miou_by_inference

from auxseg.config import load_config
from finetune.config import FinetuneConfig
from loop.cli import main as auxseg_main

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_YAML = REPO_ROOT / "configs/finetune/tiny.yaml"


def test_cpu_bf16_wrapper_autocasts_the_forward_and_steps_in_fp32():
    from finetune.amp import CPUBf16OptimWrapper

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    before = [p.detach().clone() for p in model.parameters()]
    wrapper = CPUBf16OptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with wrapper.optim_context(model):
        out = model(torch.randn(2, 3, 8, 8))
        assert torch.is_autocast_enabled("cpu") and out.dtype == torch.bfloat16
        loss = torch.nn.functional.cross_entropy(out, torch.zeros(2, 6, 6, dtype=torch.long))
    assert not torch.is_autocast_enabled("cpu")
    wrapper.update_params(loss)  # plain backward + step: bf16 needs no loss scaling
    for p, old in zip(model.parameters(), before, strict=True):
        assert p.dtype == torch.float32 and not torch.equal(p, old)  # fp32 weights, updated


def test_amp_on_cpu_is_accepted_by_the_config():
    cfg = load_config(FinetuneConfig, TINY_YAML, ["amp=true"])
    assert cfg.amp and cfg.device == "cpu"


def test_tiny_finetune_with_cpu_bf16(tmp_path, synthetic_root, monkeypatch):
    from finetune.amp import CPUBf16OptimWrapper

    entered = []
    original = CPUBf16OptimWrapper.optim_context

    @contextlib.contextmanager
    def recording(self, model):
        with original(self, model):
            entered.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
            yield

    monkeypatch.setattr(CPUBf16OptimWrapper, "optim_context", recording)
    work = tmp_path / "work"
    rc = auxseg_main(["finetune", str(TINY_YAML), f"data_root={synthetic_root}", f"work_dir={work}", "amp=true",
                      "max_iters=2", "val_interval=2", "checkpoint_interval=2"])
    assert rc == 0
    assert entered == [True, True]  # both training steps ran under bf16 autocast
    assert "CPUBf16OptimWrapper" in (work / "mmseg_config.py").read_text()
    results = json.loads((work / "results.json").read_text())
    assert results["iteration"] == 2
    # the validation of the bf16-trained model, recomputed from its checkpoint by another route
    assert results["mIoU"] == miou_by_inference(work, work / "iter_2.pth", num_classes=6)["mIoU"]
