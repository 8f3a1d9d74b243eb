"""Benchmark of the pre-training stage: step-time overhead over plain supervised training, and
data-loader throughput against the step rate.

1. Step ratio: one pre-training step (both views forward, per-pixel targets, balanced pixel
   sampling, supervised pixel InfoNCE, backward, SGD step; the same functions ``pretrain.train``
   calls) against one plain supervised step of the same backbone on the same crops (1x1
   classifier, logits upsampled to the crop size as mmseg's decode head does, cross-entropy on
   the same labels, backward, SGD step). Same network, batch (the 2 x images crops) and
   resolution, timed alternately in one process; medians are reported.
2. Loader throughput: images per second (each giving two augmented views with the paper's
   Table 8 augmentations) from ``TwoViewDataset`` + DataLoader at 0..N workers, against the
   images per second the pre-training step consumes.

Usage:
  python tools/bench_pretrain.py --models resnet18:321 resnet50:161 --images 2 --out bench/results/pretrain.md
Images: the CamVid copy at ../shared/data/camvid when present (ground-truth labels as the
auxiliary-label folder), else synthetic 480x360 images.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from auxseg.files import atomic_write_text
from auxseg.images import list_images, read_label, write_label_png
from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset
from pretrain.config import AugmentConfig, ModelConfig
from pretrain.data import (
    StepSampler,
    TwoViewDataset,
    collate,
    read_label_folder,
    write_groundtruth_label_folder,
)
from pretrain.losses import LabelIds, PixelTargets, TargetMaps, supervised_infonce, targets_at_features
from pretrain.model import DilatedResNet, PretrainNet, ProjectionHead
from pretrain.sampling import sampled_embeddings

REPO = Path(__file__).resolve().parents[1]


def camvid_label_folder(camvid: Path, out: Path) -> Path:
    """CamVid's ground truth (11 classes, 11 = ignore -> 255) as an auxiliary-label folder."""
    tmp = out / "camvid_like"
    (tmp / "trainannot").mkdir(parents=True, exist_ok=True)
    for rel in list_images(camvid / "train"):
        lab = read_label(camvid / "trainannot" / rel.with_suffix(".png"))
        write_label_png(tmp / "trainannot" / rel.with_suffix(".png"), np.where(lab < 11, lab, 255).astype(np.uint8))
    (tmp / "train").symlink_to((camvid / "train").resolve())
    return write_groundtruth_label_folder(tmp, out / "auxlabels", num_classes=11)


class _NetAndHead(nn.Module):
    """The network plus the InfoNCE projection head (what the infonce objective trains)."""

    def __init__(self, arch):
        super().__init__()
        self.net = PretrainNet(ModelConfig(arch=arch))
        self.backbone = self.net.backbone
        self.head = ProjectionHead(self.net.out_channels)

    def forward(self, x):
        return self.net(x)


def pretrain_step(net, opt, batch, folder, it, budget=2048):
    images = batch["image"].flatten(0, 1)
    emb = net(images)
    h, w = emb.shape[-2:]
    maps = TargetMaps(batch["label"], batch["coords"], batch["index"], batch["size"][:, 1])
    ids = targets_at_features("aux", maps, LabelIds(folder.num_labels, folder.ignore_index, per_image=False), h=h, w=w)
    feats, sel_ids = sampled_embeddings(emb, ids, budget, 2, torch.Generator().manual_seed(it), net.head.rows)
    loss, _ = supervised_infonce(feats, PixelTargets(sel_ids), temperature=0.1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


class Supervised(nn.Module):
    def __init__(self, arch, num_classes):
        super().__init__()
        self.backbone = DilatedResNet(arch, "plain")
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_classes, 1)

    def forward(self, x):
        return F.interpolate(self.classifier(self.backbone(x)), size=x.shape[2:], mode="bilinear", align_corners=False)


def supervised_step(net, opt, batch, folder):
    images = batch["image"].flatten(0, 1)
    labels = batch["label"].flatten(0, 1)
    loss = F.cross_entropy(net(images), labels, ignore_index=folder.ignore_index)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_steps(arch, size, folder, images, reps, warmup):
    aug = AugmentConfig(crop=(size, size + size // 8), out_size=size)
    ds = TwoViewDataset(folder, aug, seed=0)
    batch = collate([ds[k] for k in StepSampler(len(ds), images, 0, 0, 1).batch_keys(0)])
    torch.manual_seed(0)
    pre = _NetAndHead(arch)
    sup = Supervised(arch, folder.num_labels)
    sup.backbone.load_state_dict(pre.backbone.state_dict())
    pre_opt = torch.optim.SGD(pre.parameters(), lr=1e-3, momentum=0.9)
    sup_opt = torch.optim.SGD(sup.parameters(), lr=1e-3, momentum=0.9)
    pre.train()
    sup.train()
    t_pre, t_sup = [], []
    for r in range(warmup + reps):
        a = timed(lambda r=r: pretrain_step(pre, pre_opt, batch, folder, r))
        b = timed(lambda: supervised_step(sup, sup_opt, batch, folder))
        if r >= warmup:
            t_pre.append(a)
            t_sup.append(b)
    return t_pre, t_sup


def bench_loader(folder, workers, batches, images):
    ds = TwoViewDataset(folder, AugmentConfig(), seed=0)  # Table 8 defaults, 321 px views
    loader = DataLoader(ds, batch_sampler=StepSampler(len(ds), images, 0, 0, batches + 1), collate_fn=collate,
                        num_workers=workers)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t = time.perf_counter()
    n = sum(1 for _ in it)
    return n * images / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18:321"], help="arch:crop_px pairs")
    ap.add_argument("--images", type=int, default=2, help="images per step (each gives 2 crops)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--loader-batches", type=int, default=8)
    ap.add_argument("--camvid", default=str(REPO.parent / "shared" / "data" / "camvid"))
    ap.add_argument("--out", help="write the results as markdown here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if (Path(args.camvid) / "train").is_dir():
            folder = read_label_folder(camvid_label_folder(Path(args.camvid), tmp))
            data_desc = f"CamVid train ({len(folder.images)} images, 480x360), ground truth as auxiliary labels"
        else:
            make_synthetic_dataset(tmp / "syn", SyntheticSpec(num_train=16, num_val=0, height=360, width=480))
            folder = read_label_folder(write_groundtruth_label_folder(tmp / "syn", tmp / "auxlabels"))
            data_desc = "synthetic 480x360 images (16), ground truth as auxiliary labels"
        rows = []
        for spec in args.models:
            arch, size = spec.split(":")
            t_pre, t_sup = bench_steps(arch, int(size), folder, args.images, args.reps, args.warmup)
            rows.append((arch, int(size), t_pre, t_sup))
            print(f"{arch} {size}px: pretrain {t_pre}, supervised {t_sup}", flush=True)
        loader = []
        for w in args.workers:
            # best of two: contention from other jobs on the machine only ever slows the loader down
            ips = max(bench_loader(folder, w, args.loader_batches, 4) for _ in range(2))
            loader.append((w, ips))
            print(f"loader, {w} workers: {ips:.2f} images/s", flush=True)
    load_after = os.getloadavg()
    cmd = "python tools/bench_pretrain.py " + " ".join(
        [f"--models {' '.join(args.models)}", f"--images {args.images}", f"--reps {args.reps}",
         f"--threads {args.threads}", f"--workers {' '.join(map(str, args.workers))}"])
    lines = [
        "# Pre-training benchmark (CPU)", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} intra-op threads; no GPU. The CPU is shared: load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after the run.",
        f"Data: {data_desc}.", f"Command: `{cmd}`", "",
        "## Step time: pre-training step / plain supervised step", "",
        f"Same backbone (dilated, output stride 8), same {2 * args.images} crops per step "
        f"({args.images} images x 2 views), same resolution; {args.reps} alternating repetitions "
        f"after {args.warmup} warm-up. Pre-training: projection head, 2,048 balanced sampled pixels, "
        "supervised InfoNCE. Supervised: 1x1 classifier, logits upsampled to the crop, cross-entropy.", "",
        "The machine is shared, so other jobs inflate single repetitions; the minimum over repetitions is "
        "the least disturbed estimate and its ratio is the headline figure, the median is shown beside it.", "",
        "| backbone | crop px | pre-train step s (min / median) | supervised step s (min / median) "
        "| ratio of minima (target <= 1.15) | ratio of medians |",
        "|---|---|---|---|---|---|",
    ]
    for arch, size, t_pre, t_sup in rows:
        (p0, p1), (s0, s1) = (min(t_pre), statistics.median(t_pre)), (min(t_sup), statistics.median(t_sup))
        lines.append(f"| {arch} | {size} | {p0:.3f} / {p1:.3f} | {s0:.3f} / {s1:.3f} | **{p0 / s0:.3f}** "
                     f"| {p1 / s1:.3f} |")
    lines += ["", "Per-repetition times (s):", ""]
    for arch, size, t_pre, t_sup in rows:
        lines.append(f"- {arch} {size}px: pre-train {[round(t, 3) for t in t_pre]}, "
                     f"supervised {[round(t, 3) for t in t_sup]}")
    step_ips = {f"{a} {s}px": args.images / min(t) for a, s, t, _ in rows}
    lines += ["", "## Data loader vs step rate", "",
              "Images per second delivered by the loader (two 321-px views each, all Table 8 augmentations, "
              "PNG decode included), batches of 4 images, best of two passes:", "",
              "| loader workers | images/s |", "|---|---|"]
    lines += [f"| {w} | {ips:.2f} |" for w, ips in loader]
    lines += ["", "Images per second the pre-training step consumes at the sizes above: "
              + ", ".join(f"{k}: {v:.2f}" for k, v in step_ips.items()) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
