"""Benchmark of bf16 autocast on the CPU: fp32 vs bf16 step time of the three stages' hot loops.

1. Pre-training step (``pretrain``, ``train.amp=bf16``): both views forward through the dilated ResNet
   (-18 and -50), per-pixel targets, balanced sample, InfoNCE (fp32), backward, SGD step, at the
   CamVid CPU preset's batch and crop (``configs/pipeline/camvid_cpu.yaml``, section ``pretrain``:
   batch 8 images x 2 views at 160 px, deep stem, budget 2048).
2. Fine-tune step (``finetune``, ``amp=true`` -> ``finetune.amp.CPUBf16OptimWrapper``): mmengine's
   ``train_step`` of mmseg DeepLabV3 ResNet-18 built from the CamVid CPU config
   (``configs/finetune/mmseg/camvid/deeplabv3_r18-d8_camvid-cpu.py``: batch 4 at 240x180).
3. Extractor forward (``auxlabels``, ``extractor.amp_cpu``): ``auxlabels.extraction.Features.native`` on
   4 frames of 480x360 downscaled to ``max_side`` 240, with the CamVid CPU preset's extractor (the
   mmseg DeepLabV3 ResNet-18 decoder feature, ``configs/auxlabels/camvid_segmenter_cpu.yaml``) and
   the default one (ImageNet ResNet-50 layer4, ``configs/auxlabels/default.yaml``).

Random weights and random inputs (step time does not depend on them). Each case alternates fp32
and bf16 steps in one process, ``--warmup`` rounds, then ``--reps`` timed rounds; min and median.

Usage:
  python tools/bench_bf16.py --reps 5 --out bench/results/bf16.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from auxseg.env_report import machine_line  # noqa: E402
from auxseg.precision import autocast, precision_report  # noqa: E402

PIPELINE = REPO / "configs/pipeline/camvid_cpu.yaml"
FINETUNE_MMSEG = REPO / "configs/finetune/mmseg/camvid/deeplabv3_r18-d8_camvid-cpu.py"
AUX_SEGMENTER = REPO / "configs/auxlabels/camvid_segmenter_cpu.yaml"


def _alternate(steps: dict, warmup: int, reps: int) -> dict:
    """Seconds per step of each ``name -> fn`` (fn returns a float to check), alternated round by round."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    values: dict[str, float] = {}
    for rep in range(warmup + reps):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            values[name] = fn()
            if rep >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {"times": times, "values": values}


# ----------------------------------------------------------------------------- pre-training step


def pretrain_case(arch: str):
    from auxseg.config import load_config
    from pretrain.config import PretrainConfig
    from pretrain.objectives.base import StepBatch
    from pretrain.train import PretrainModel, build_optimizer

    pre = yaml.safe_load(PIPELINE.read_text())["pretrain"]
    batch, size = pre["data"]["batch_size"], pre["augment"]["out_size"]
    cfg = load_config(PretrainConfig, REPO / "configs/pretrain/default.yaml", [
        f"model.arch={arch}", f"model.stem={pre['model']['stem']}",
        f"loss.infonce.budget={pre['loss']['infonce']['budget']}"])
    torch.manual_seed(0)
    model = PretrainModel(cfg).train()
    opt = build_optimizer(model, cfg.optim)
    images = torch.randn(batch * 2, 3, size, size)
    # 17 auxiliary labels in 20 px squares: regions, as a label folder gives
    label = torch.randint(0, 17, (batch, 2, size // 20 + 1, size // 20 + 1)).repeat_interleave(20, 2)
    label = label.repeat_interleave(20, 3)[..., :size, :size].contiguous()
    folder = types.SimpleNamespace(num_labels=17, ignore_index=255, scope="global")
    step_batch = StepBatch(label=label, coords=torch.zeros_like(label), index=torch.arange(batch),
                           size=torch.full((batch, 2), size), folder=folder, iteration=0,
                           generator=torch.Generator())

    def step(precision: str) -> float:
        step_batch.generator.manual_seed(0)
        with autocast("cpu", precision):
            loss, _ = model.objective(model(images), step_batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    shape = f"{batch} x 2 views, {size} px, stem {cfg.model.stem}"
    return f"pretrain step, {arch} ({shape})", step


# ----------------------------------------------------------------------------- fine-tune step


def finetune_case():
    from mmengine.optim import OptimWrapper
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    from finetune.amp import CPUBf16OptimWrapper
    from finetune.mmseg_config import load_mmseg_config

    cfg = load_mmseg_config(FINETUNE_MMSEG)
    init_default_scope("mmseg")
    h, w = cfg.crop_size
    batch = cfg.train_dataloader.batch_size
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=True)
    wrappers = {"none": OptimWrapper(optimizer=opt), "bf16": CPUBf16OptimWrapper(optimizer=opt)}
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for _ in range(batch)]
    samples = []
    for _ in range(batch):
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 11, (1, h, w), generator=g)))
        s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        samples.append(s)

    def step(precision: str) -> float:
        losses = model.train_step(dict(inputs=inputs, data_samples=samples), wrappers[precision])
        return float(sum(v.item() for k, v in losses.items() if "loss" in k))

    return f"fine-tune step, mmseg DeepLabV3 ResNet-18 ({batch} x {w}x{h})", step


# ----------------------------------------------------------------------------- extractor forward


def extractor_case(which: str, cache: Path):
    from auxlabels.config import AuxLabelsConfig
    from auxlabels.extraction import Features
    from auxseg.config import load_config

    if which == "segmenter":
        path = AUX_SEGMENTER
        over = ["extractor.random_init=true", f"extractor.config={FINETUNE_MMSEG}"]
        what = "mmseg DeepLabV3 ResNet-18 decoder"
    else:
        path = REPO / "configs/auxlabels/default.yaml"
        over = ["extractor.random_init=true", "extractor.max_side=240"]
        what = "ResNet-50 layer4"
    feats = {}
    for amp in ("false", "true"):
        cfg = load_config(AuxLabelsConfig, path, [*over, f"extractor.amp_cpu={amp}", "image_dir=.",
                                                  "num_classes=11"])
        feats[amp == "true"] = Features(cfg, cache, {}, None)
    batch = cfg.extractor.batch_size
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (360, 480, 3), dtype=np.uint8) for _ in range(batch)]

    def step(precision: str) -> float:
        with torch.no_grad():
            out = feats[precision == "bf16"].native(images)
        return float(np.mean([np.abs(o).mean() for o in out]))

    return f"extractor forward, {what} ({batch} x 480x360 -> max_side {cfg.extractor.max_side})", step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=["pretrain:resnet18", "pretrain:resnet50", "finetune",
                                                   "extractor:segmenter", "extractor:resnet50"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--others", default="not stated",
                   help="what else ran on the machine during the measurement, for the results file")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            kind, _, arg = case.partition(":")
            if kind == "pretrain":
                name, fn = pretrain_case(arg)
            elif kind == "finetune":
                name, fn = finetune_case()
            else:
                name, fn = extractor_case(arg, Path(tmp) / "cache")
            res = _alternate({"fp32": lambda fn=fn: fn("none"), "bf16": lambda fn=fn: fn("bf16")},
                             args.warmup, args.reps)
            row = {"case": name, **{k: [round(1000 * t, 1) for t in v] for k, v in res["times"].items()},
                   "check": res["values"]}
            rows.append(row)
            f32, b16 = row["fp32"], row["bf16"]
            print(f"{name}: fp32 {statistics.median(f32):.0f} ms, bf16 {statistics.median(b16):.0f} ms, "
                  f"fp32/bf16 {statistics.median(f32) / statistics.median(b16):.2f} (min {min(f32) / min(b16):.2f}); "
                  f"check value fp32 {res['values']['fp32']:.4g}, bf16 {res['values']['bf16']:.4g}", flush=True)
    load_after = os.getloadavg()
    table = ["| case | fp32 ms (min / median) | bf16 ms (min / median) | speed-up fp32/bf16 (min / median) "
             "| check value fp32 / bf16 |", "|---|---|---|---|---|"]
    for r in rows:
        f32, b16 = r["fp32"], r["bf16"]
        table.append(f"| {r['case']} | {min(f32):.0f} / {statistics.median(f32):.0f} "
                     f"| {min(b16):.0f} / {statistics.median(b16):.0f} "
                     f"| **{min(f32) / min(b16):.2f}** / {statistics.median(f32) / statistics.median(b16):.2f} "
                     f"| {r['check']['fp32']:.4g} / {r['check']['bf16']:.4g} |")
    print("\n".join(table))
    if args.out is None:
        return
    cmd = "python tools/bench_bf16.py " + " ".join(sys.argv[1:])
    reps = "\n".join(f"- {r['case']}: fp32 {r['fp32']}, bf16 {r['bf16']}" for r in rows)
    cpu = precision_report()
    text = f"""# bf16 autocast on the CPU: step time, fp32 vs bf16

Machine: {machine_line()}; torch {torch.__version__}, {args.threads} intra-op threads, no GPU.
CPU bf16 (`auxseg env`): capability {cpu['torch_cpu_capability']}, flags {cpu['bf16_flags']}, native bf16
{cpu['native_bf16']}.
Load average (1, 5, 15 min) at the start: {", ".join(f"{x:.2f}" for x in load_before)}; at the end:
{", ".join(f"{x:.2f}" for x in load_after)}. Other jobs during the run: {args.others}; if any, the times carry their noise; fp32 and bf16 alternate step by
step in one process so both see the same load, and the minima are the least disturbed figures.
Command: `{cmd}`

What is timed (details in the script's docstring): the pre-training step (forward of both views,
targets, sample, InfoNCE in fp32, backward, SGD step) at the CamVid CPU preset's batch and crop; the
fine-tune step (mmengine `train_step` of mmseg DeepLabV3 ResNet-18 from the CamVid CPU config, with
`OptimWrapper` vs `finetune.amp.CPUBf16OptimWrapper`); the extractor forward
(`auxlabels.extraction.Features.native`). Random weights and inputs; {args.warmup} warm-up rounds, then
{args.reps} timed rounds. "check value" is the last loss (pre-training, fine-tune) or the mean
absolute feature (extractor) in each precision; the training cases step one model with both
precisions in turn, so their last losses come from slightly different weights: close, not equal.

{chr(10).join(table)}

Per-repetition times (ms):

{reps}

Switches: `pretrain` `train.amp=bf16`; `finetune` `amp=true` (on `device=cpu` it selects
`CPUBf16OptimWrapper`); `auxlabels` `extractor.amp_cpu=true`. All are off by default: whether bf16
changes mIoU / PmIoU is to be decided by a paired comparison, not by this table.
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
