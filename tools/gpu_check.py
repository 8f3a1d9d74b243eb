"""GPU readiness check: run every GPU code path of the project for a few iterations and record
throughput, peak GPU memory and pass/fail.

Each step drives the real ``auxseg`` CLI (the same ``loop.cli.main`` that ``python -m loop`` runs)
on the tiny presets or on the paper-size preset with synthetic data, as its own subprocess with
a timeout:

  data              synthetic CamVid-layout images (CPU; input of the auxlabels and fine-tune steps)
  faiss_kmeans      faiss K-means fit + nearest-centroid assignment on the GPU (and the CPU, for scale)
  auxlabels_amp     auxlabels, extractor on CUDA with bf16 autocast and channels-last
  auxlabels_ddp     the same under torchrun (one process per GPU, up to 2)
  pretrain_bf16     the tiny pretrain preset, train.amp=bf16
  pretrain_fp16     the tiny pretrain preset, train.amp=fp16 (GradScaler)
  pretrain_r50      configs/pretrain/default.yaml as shipped (ResNet-50, 16 images x 2 views at 321 px,
                    fp32) on synthetic images: the memory figure of docs/cluster.md
  pretrain_r50_bf16 the same with bf16 (as configs/pipeline/camvid_gpu.yaml runs it)
  ddp_syncbn        pretrain under torchrun with nccl and model.norm=sync, 2 processes when 2 GPUs exist
  finetune_cuda     the tiny mmseg fine-tune preset, device=cuda
  finetune_amp      the same with amp=true (bf16 AmpOptimWrapper)

Each stage runs inside ``python tools/gpu_check.py --child -- SUBCOMMAND ...``: that is
``auxseg SUBCOMMAND ...`` in the same process plus one result line with
``torch.cuda.max_memory_allocated`` and the loop timings (pretrain: per-iteration times from the
data loader's hand-over, median after the first 3 iterations; auxlabels: the manifest's timings;
fine-tune: mmengine's per-iteration ``time`` in ``scalars.json``). The parent also polls
``nvidia-smi`` for the device-wide peak (CUDA context, cuDNN workspaces and faiss included).

Writes ``OUT/gpu_check.json``, ``OUT/gpu_check.md`` (a table) and ``OUT/logs/STEP.log``.
On a machine without CUDA it prints the commands it would run and exits 0.

Usage:
  python tools/gpu_check.py --out runs/gpu_check
  python tools/gpu_check.py --dry-run
  python tools/gpu_check.py --only pretrain_bf16 --only ddp_syncbn
  python tools/gpu_check.py --estimate-memory   # CPU: the per-GPU memory estimates of docs/cluster.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT_REL = "tools/gpu_check.py"  # the commands run with the repository root as working directory
RESULT_MARK = "GPU_CHECK_RESULT "
BUDGET_S = 480  # the whole check must finish in 8 minutes on one H100/H200

# quiet, short runs: no progress bars, no TensorBoard, no intermediate checkpoints
PRETRAIN_QUIET = ("train.progress=false", "train.tensorboard=false", "train.checkpoint_every=0")


@dataclass
class Step:
    """One check: the command, its timeout, and why it may not run here."""

    name: str
    what: str
    argv: list[str]
    timeout_s: int
    needs: tuple[str, ...] = ()
    skip: str | None = None  # reason the step cannot run on this machine (recorded, not an error)
    note: str = ""  # caveat printed with the result (e.g. SyncBN inactive with one process)
    images_per_iter: int | None = None  # global batch, for images/s from it/s


@dataclass
class Result:
    name: str
    status: str  # passed | failed | skipped | timeout | not run
    wall_s: float | None = None
    it_per_s: float | None = None
    images_per_s: float | None = None
    peak_allocated_mib: float | None = None  # torch.cuda.max_memory_allocated, max over ranks
    peak_reserved_mib: float | None = None  # torch.cuda.max_memory_reserved, max over ranks
    peak_smi_mib: float | None = None  # nvidia-smi memory.used, max over the step and GPUs
    detail: dict = field(default_factory=dict)
    error: str | None = None  # last line of the failing output
    note: str = ""
    command: str = ""


# ----------------------------------------------------------------------------- the steps


def child(python: str, *auxseg_argv: str) -> list[str]:
    """``auxseg ARGV`` run in-process by this script's child mode (memory and timing recorded)."""
    return [python, SCRIPT_REL, "--child", "--", *auxseg_argv]


def torchrun_child(python: str, nproc: int, *auxseg_argv: str) -> list[str]:
    """The same under torchrun on this machine (``--standalone``: a local rendezvous on a free port)."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc),
            SCRIPT_REL, "--child", "--", *auxseg_argv]


def _python() -> str:
    """This interpreter, relative to the repository root when it lives there (``.venv/bin/python``)."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(REPO))
    except ValueError:
        return str(exe)


def build_steps(out: Path, *, n_gpus: int, faiss_gpu: bool, python: str | None = None) -> list[Step]:
    """Every check in run order, with its exact command.

    Args:
        out: results folder; each step writes under ``out/<step>`` and reads data from ``out/data``.
        n_gpus: visible CUDA devices (the DDP steps use min(2, n_gpus) processes, at least 1).
        faiss_gpu: whether faiss has GPU support here (else the faiss step is skipped with that reason
            and auxlabels keeps ``kmeans.gpu=false``).
        python: the interpreter that runs the children (default: this one).
    """
    python = python or _python()
    out = Path(out)
    data = out / "data"
    nproc = max(1, min(2, n_gpus))
    one_gpu = ("one GPU: torchrun runs 1 process, so nccl, the gathered loss and SyncBN are not exercised "
               "(model.norm=sync is only converted with more than one process)") if nproc == 1 else ""
    auxlabels = (
        "auxlabels", "configs/auxlabels/tiny.yaml",
        f"image_dir={data}/train", f"gt_dir={data}/trainannot",
        "extractor.name=resnet50", "extractor.layer=layer4", "extractor.stride=8", "extractor.batch_size=8",
        "extractor.device=cuda", "extractor.amp=true", "extractor.channels_last=true",
        f"kmeans.gpu={'true' if faiss_gpu else 'false'}", "num_workers=4",
    )
    pretrain_tiny = ("pretrain", "configs/pretrain/tiny.yaml", "train.device=cuda",
                     "train.max_iters=40", "train.log_every=10", "data.num_workers=2", *PRETRAIN_QUIET)
    pretrain_r50 = ("pretrain", "configs/pretrain/default.yaml", "data.source=synthetic",
                    "data.synthetic_images=32", "data.synthetic_size=[360,480]", "data.num_workers=8",
                    "train.device=cuda", "train.max_iters=25", "train.log_every=5", "optim.warmup_iters=5",
                    *PRETRAIN_QUIET)
    finetune = ("finetune", "configs/finetune/tiny.yaml", f"data_root={data}", "device=cuda",
                "max_iters=40", "val_interval=40", "checkpoint_interval=40", "log_interval=5", "num_workers=2",
                "tensorboard=false")
    return [
        Step("data", "synthetic CamVid-layout data, 32 + 8 images of 360x480 (CPU)",
             [python, SCRIPT_REL, "--make-data", str(data)], 180),
        Step("faiss_kmeans", "faiss K-means fit (200k x 512, K=17, 20 iterations) + assignment of 500k rows, "
             "GPU and CPU", [python, SCRIPT_REL, "--child-faiss"], 180,
             skip=None if faiss_gpu else "faiss-gpu not installed (this faiss build has no GPU support)"),
        Step("auxlabels_amp", "auxlabels, ResNet-50 layer4 features on CUDA, bf16 autocast, channels-last",
             child(python, *auxlabels, f"out_dir={out}/auxlabels_amp"), 240, needs=("data",)),
        Step("auxlabels_ddp", f"auxlabels under torchrun, {nproc} process(es)",
             torchrun_child(python, nproc, *auxlabels, f"out_dir={out}/auxlabels_ddp"), 240, needs=("data",),
             note="one GPU: a single torchrun process" if nproc == 1 else ""),
        Step("pretrain_bf16", "pretrain tiny preset (ResNet-18, 64 px, batch 2) with bf16 autocast",
             child(python, *pretrain_tiny, "train.amp=bf16", f"out_dir={out}/pretrain_bf16"), 180,
             images_per_iter=2),
        Step("pretrain_fp16", "pretrain tiny preset with fp16 autocast + GradScaler",
             child(python, *pretrain_tiny, "train.amp=fp16", f"out_dir={out}/pretrain_fp16"), 180,
             images_per_iter=2),
        Step("pretrain_r50", "configs/pretrain/default.yaml as shipped (ResNet-50, 16 images x 2 views, 321 px, "
             "fp32) on synthetic images", child(python, *pretrain_r50, "train.amp=none", f"out_dir={out}/pretrain_r50"),
             300, images_per_iter=16),
        Step("pretrain_r50_bf16", "the same with train.amp=bf16 (configs/pipeline/camvid_gpu.yaml's setting)",
             child(python, *pretrain_r50, "train.amp=bf16", f"out_dir={out}/pretrain_r50_bf16"), 300,
             images_per_iter=16),
        Step("ddp_syncbn", f"pretrain tiny under torchrun, nccl, model.norm=sync, {nproc} process(es), batch 4",
             torchrun_child(python, nproc, *pretrain_tiny, "train.amp=bf16", "train.backend=nccl", "model.norm=sync",
                            "data.batch_size=4", f"out_dir={out}/ddp_syncbn"), 240, note=one_gpu,
             images_per_iter=4),
        Step("finetune_cuda", "mmseg fine-tune tiny preset (DeepLabV3 ResNet-18, 64 px crops, batch 2), device=cuda",
             child(python, *finetune, f"work_dir={out}/finetune_cuda"), 240, needs=("data",), images_per_iter=2),
        Step("finetune_amp", "the same with amp=true (bf16 AmpOptimWrapper)",
             child(python, *finetune, "amp=true", f"work_dir={out}/finetune_amp"), 240, needs=("data",),
             images_per_iter=2),
    ]


def select(steps: list[Step], only: list[str] | None) -> list[Step]:
    """The steps named in ``only`` (comma lists allowed) plus the steps they need, in run order."""
    if not only:
        return steps
    names = {n.strip() for item in only for n in item.split(",") if n.strip()}
    known = {s.name for s in steps}
    unknown = sorted(names - known)
    if unknown:
        raise ValueError(f"unknown step {', '.join(unknown)}; the steps are {', '.join(s.name for s in steps)}")
    by_name = {s.name: s for s in steps}
    for n in list(names):
        names.update(by_name[n].needs)
    return [s for s in steps if s.name in names]


# ----------------------------------------------------------------------------- child modes


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


def _override(argv: list[str], key: str) -> str | None:
    """The last ``key=value`` override in an auxseg argv."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(key + "=")]
    return values[-1] if values else None


def _time_pretrain_loop(timers: dict) -> None:
    """Record when each batch reaches ``pretrain.train.train``; the loop calls ``loss.item()`` every
    iteration (the progress bar), so consecutive hand-overs are one synchronised step apart."""
    import dataclasses

    import pretrain.train as pt

    original = pt.train

    def timed_train(cfg, st):
        stamps = timers.setdefault("batch_times", [])
        start = st.start_iter

        def stamped(loader):
            for batch in loader:
                stamps.append(time.perf_counter())
                yield batch

        it = original(cfg, dataclasses.replace(st, loader=stamped(st.loader)))
        stamps.append(time.perf_counter())
        timers["iterations"] = it - start
        return it

    pt.train = timed_train


def _pretrain_metrics(timers: dict, argv: list[str]) -> dict:
    stamps = timers.get("batch_times", [])
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    if len(steps) < 2:
        return {}
    steady = steps[3:] if len(steps) > 6 else steps[1:]  # the first steps include cuDNN autotuning
    median = statistics.median(steady)
    res = {"it_per_s": round(1.0 / median, 2), "iterations": len(steps), "first_step_s": round(steps[0], 3),
           "median_step_s": round(median, 4)}
    out = _override(argv, "out_dir")
    log = Path(out) / "log.jsonl" if out else None
    if log is not None and log.is_file():
        # time the loop waited for the loader at the logged steps: near median_step_s = loader-bound
        waits = [json.loads(line).get("data_time") for line in log.read_text().splitlines() if line.strip()]
        waits = [w for w in waits[1:] if w is not None]
        if waits:
            res["median_data_wait_s"] = round(statistics.median(waits), 4)
    return res


def _auxlabels_metrics(argv: list[str]) -> dict:
    out = _override(argv, "out_dir")
    path = Path(out) / "manifest.json" if out else None
    if path is None or not path.is_file():
        return {}
    manifest = json.loads(path.read_text())
    t = manifest.get("timings", {})
    n = len(manifest.get("images", []))
    res = {"images": n, "world_size": manifest.get("world_size"),
           "timings_s": {k: round(v, 3) for k, v in t.items()}}
    if t.get("total_wall"):
        res["images_per_s"] = round(n / t["total_wall"], 2)  # end to end: fit, assign, vote, PNGs
    if t.get("forward"):
        res["forward_images_per_s"] = round(n / t["forward"], 2)  # forward time summed over ranks
    return res


def _finetune_metrics(argv: list[str]) -> dict:
    work = _override(argv, "work_dir")
    if not work:
        return {}
    files = sorted(Path(work).glob("*/vis_data/scalars.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return {}
    rows = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    times = [r["time"] for r in rows if "time" in r and "mIoU" not in r]
    res = {}
    if len(times) > 1:
        res["it_per_s"] = round(1.0 / statistics.median(times[1:]), 2)  # mmengine's mean time per logged window
    mem = [r["memory"] for r in rows if "memory" in r]
    if mem:
        res["mmengine_memory_mib"] = max(mem)
    return res


def child_main(argv: list[str]) -> int:
    """Run ``auxseg ARGV`` in this process; print one result line (rank, rc, peak memory, timings)."""
    import torch

    from loop.cli import main

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    timers: dict = {}
    if argv and argv[0] == "pretrain":
        _time_pretrain_loop(timers)
    t0 = time.perf_counter()
    error = None
    try:
        rc = int(main(argv) or 0)
    except SystemExit as err:  # argparse
        rc = err.code if isinstance(err.code, int) else 1
    except BaseException as err:  # noqa: BLE001 - recorded and re-raised below
        rc, error = 1, err
    record: dict = {"rank": int(os.environ.get("RANK", "0")), "rc": rc, "wall_s": round(time.perf_counter() - t0, 2)}
    if cuda:
        record["peak_allocated_mib"] = _mib(torch.cuda.max_memory_allocated(local_rank))
        record["peak_reserved_mib"] = _mib(torch.cuda.max_memory_reserved(local_rank))
    if record["rank"] == 0 and rc == 0:
        stage = argv[0] if argv else ""
        if stage == "pretrain":
            record.update(_pretrain_metrics(timers, argv))
        elif stage == "auxlabels":
            record.update(_auxlabels_metrics(argv))
        elif stage == "finetune":
            record.update(_finetune_metrics(argv))
    print(RESULT_MARK + json.dumps(record), flush=True)
    if error is not None:
        raise error
    return rc


def faiss_timings(gpu: bool, n_fit: int = 200_000, n_assign: int = 500_000, dim: int = 512, k: int = 17,
                  niter: int = 20) -> dict:
    """Time ``auxlabels.kmeans`` fit on ``n_fit`` x ``dim`` rows and assignment of ``n_assign`` rows.

    Defaults: K = 17 (CamVid's 11 classes x 1.5), 512-dim decoder features, 20 Lloyd iterations;
    500k rows is the stride-8 feature grid of about 185 CamVid frames.
    """
    import numpy as np

    from auxlabels.kmeans import NearestCentroid, fit_kmeans

    rng = np.random.default_rng(0)
    sample = rng.standard_normal((n_fit, dim), dtype=np.float32)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    rows = rng.standard_normal((n_assign, dim), dtype=np.float32)
    t0 = time.perf_counter()
    centroids = fit_kmeans(sample, k, niter=niter, seed=0, gpu=gpu)
    t_fit = time.perf_counter() - t0
    index = NearestCentroid(centroids, gpu=gpu)
    t0 = time.perf_counter()
    labels, _ = index.assign(rows)
    t_assign = time.perf_counter() - t0
    assert labels.shape == (n_assign,) and 0 <= labels.min() and labels.max() < k
    return {"fit_s": round(t_fit, 3), "assign_s": round(t_assign, 3),
            "assign_rows_per_s": round(n_assign / max(t_assign, 1e-9))}


def faiss_main() -> int:
    """faiss K-means on the GPU, and the same on the CPU for scale; one result line."""
    from auxlabels.kmeans import faiss_gpu_available

    if not faiss_gpu_available():
        print("faiss-gpu not installed (this faiss build has no GPU support)", file=sys.stderr)
        return 3
    record: dict = {"rank": 0, "rc": 0, "gpu": faiss_timings(gpu=True), "cpu": faiss_timings(gpu=False)}
    record["wall_s"] = round(sum(record[w]["fit_s"] + record[w]["assign_s"] for w in ("gpu", "cpu")), 2)
    print(RESULT_MARK + json.dumps(record), flush=True)
    return 0


# ----------------------------------------------------------------------------- memory estimate (CPU)

# the shipped GPU presets: (name, kind, config, what)
ESTIMATE_PRESETS = (
    ("pretrain default.yaml (fp32)", "pretrain", "configs/pretrain/default.yaml", None),
    ("pretrain camvid_gpu.yaml (bf16)", "pretrain", "configs/pretrain/default.yaml", "bf16"),
    ("finetune camvid (default, 10pct, 20pct)", "finetune", "configs/finetune/mmseg/camvid/deeplabv3_r50-d8_camvid.py",
     None),
    ("finetune nyuv2", "finetune", "configs/finetune/mmseg/nyuv2/deeplabv3_r50-d8_nyuv2.py", None),
    ("finetune cityscapes", "finetune", "configs/finetune/mmseg/cityscapes/deeplabv3_r50-d8_cityscapes.py", None),
    ("finetune ade20k", "finetune", "configs/finetune/mmseg/ade20k/deeplabv3_r50-d8_ade20k.py", None),
)


def saved_activation_bytes(model, forward) -> int:
    """Bytes of the tensors autograd saves for backward during ``forward()``, parameters excluded
    (each storage counted once). This is the activation memory a training step holds at its peak."""
    import torch

    params = {p.data_ptr() for p in model.parameters()}
    seen: set = set()
    total = 0

    def pack(t):
        nonlocal total
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        if t.data_ptr() not in params and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return total


def _per_image(model, make_forward, n1: int, n2: int) -> float:
    """Saved bytes per image from two batch sizes (the difference drops per-forward constants such as
    the bf16 weight copies autocast keeps)."""
    a, b = saved_activation_bytes(model, make_forward(n1)), saved_activation_bytes(model, make_forward(n2))
    return (b - a) / (n2 - n1)


def estimate_memory(scale: float = 0.5) -> list[dict]:
    """Per-GPU training memory of the shipped GPU presets, estimated on the CPU.

    Activations: measured as saved-for-backward bytes of one CPU forward (pretrain: the dilated
    backbone at the preset's crop size; fine-tune: mmseg's DeepLabV3 with both heads and their
    cross-entropy on crops ``scale`` x the preset's sides, scaled by 1/scale^2), times the images
    per GPU. States: fp32 weights + gradients + SGD momentum (+ the DDP gradient buckets when
    there is more than one process). An estimate of ``torch.cuda.max_memory_allocated``; the
    allocator's transients come on top (see docs/cluster.md for the check against measurements).
    """
    import torch
    import torch.nn.functional as F

    from auxseg.config import load_config

    torch.manual_seed(0)
    rows = []
    for name, kind, path, amp in ESTIMATE_PRESETS:
        if kind == "pretrain":
            from pretrain.config import PretrainConfig
            from pretrain.model import DilatedResNet

            cfg = load_config(PretrainConfig, REPO / path)
            model = DilatedResNet(cfg.model.arch, cfg.model.stem, cfg.model.output_stride).train()
            s = cfg.augment.out_size
            crops_per_step = 2 * cfg.data.batch_size  # two views per image

            def make_forward(n, model=model, s=s, amp=amp):
                x = torch.randn(n, 3, s, s)
                return lambda: _autocast(model, x, amp)

            per_crop = _per_image(model, make_forward, 1, 2)
            n_params = sum(p.numel() for p in model.parameters())
            states = n_params * 4 * 3
            rows.append({"preset": name, "config": path, "images_per_gpu": crops_per_step, "what": "crops",
                         "size": f"{s}x{s}", "activation_mib_per_image": round(per_crop / 2**20, 1),
                         "params_m": round(n_params / 1e6, 1), "global_batch": True,
                         "states_mib": round(states / 2**20), "activation_bytes_per_image": per_crop,
                         "state_bytes": states})
        else:
            from finetune.mmseg_config import load_mmseg_config

            mmcfg = load_mmseg_config(REPO / path)  # installs the mmcv.ops compatibility layer first
            from mmseg.registry import MODELS
            from mmseg.utils import register_all_modules

            register_all_modules(init_default_scope=False)
            model = MODELS.build(mmcfg.model).train()
            h, w = mmcfg.crop_size
            sh, sw = max(64, int(h * scale) // 8 * 8), max(64, int(w * scale) // 8 * 8)
            ncls = mmcfg.model.decode_head.num_classes

            def make_forward(n, model=model, sh=sh, sw=sw, ncls=ncls):
                x, label = torch.randn(n, 3, sh, sw), torch.randint(0, ncls, (n, sh, sw))

                def fwd():
                    feats = model.extract_feat(x)
                    for head in (model.decode_head, model.auxiliary_head):
                        logits = F.interpolate(head(feats), size=(sh, sw), mode="bilinear", align_corners=False)
                        F.cross_entropy(logits, label)
                return fwd

            per_image = _per_image(model, make_forward, 2, 4) * (h * w) / (sh * sw)  # BN needs 2+ per batch
            n_params = sum(p.numel() for p in model.parameters())
            states = n_params * 4 * 3
            rows.append({"preset": name, "config": path, "images_per_gpu": mmcfg.train_dataloader.batch_size,
                         "what": "images", "size": f"{h}x{w}", "activation_mib_per_image": round(per_image / 2**20, 1),
                         "params_m": round(n_params / 1e6, 1), "global_batch": False,
                         "states_mib": round(states / 2**20), "activation_bytes_per_image": per_image,
                         "state_bytes": states})
    for r in rows:
        for world in (1, 2, 4, 8):
            per_gpu = r["images_per_gpu"] / world if r["global_batch"] else r["images_per_gpu"]
            ddp = r["state_bytes"] / 3 if world > 1 else 0  # gradient buckets, one fp32 copy of the gradients
            r[f"gib_{world}gpu"] = round((per_gpu * r["activation_bytes_per_image"] + r["state_bytes"] + ddp) / 2**30, 1)
    return rows


def _autocast(model, x, amp):
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
        return model(x)


def estimate_main() -> int:
    rows = estimate_memory()
    print("| preset | config | per step | size | activations MiB / image (CPU, saved for backward) | params M | "
          "weights+grads+momentum MiB | est. GiB 1 GPU | 2 GPUs | 4 GPUs | 8 GPUs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        batch = f"{r['images_per_gpu']} {r['what']}" + (" (global)" if r["global_batch"] else " per process")
        print(f"| {r['preset']} | {r['config']} | {batch} | {r['size']} | {r['activation_mib_per_image']} | "
              f"{r['params_m']} | {r['states_mib']} | {r['gib_1gpu']} | {r['gib_2gpu']} | {r['gib_4gpu']} | "
              f"{r['gib_8gpu']} |")
    return 0


# ----------------------------------------------------------------------------- the parent


class SmiPoller:
    """Peak ``nvidia-smi`` memory.used (MiB, max over GPUs) while a step runs; None without nvidia-smi."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s, self.peak, self._stop = interval_s, None, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                used = [float(v) for v in out.split()]
                if used:
                    self.peak = max(self.peak or 0.0, max(used))
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=15)


def last_error_line(text: str) -> str:
    """The last informative line of a failing command's output (a traceback's last line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(RESULT_MARK)]
    return lines[-1][:500] if lines else "(no output)"


def run_step(step: Step, log_dir: Path) -> Result:
    """Run one step as a subprocess with its timeout; parse the child's result lines."""
    result = Result(step.name, "failed", note=step.note, command=shlex.join(step.argv))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    log = log_dir / f"{step.name}.log"
    t0 = time.perf_counter()
    with SmiPoller() as smi, open(log, "w") as f:
        try:
            proc = subprocess.run(step.argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=step.timeout_s)
            output, rc = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as err:
            output = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
            rc = None
        f.write(output)
    result.wall_s = round(time.perf_counter() - t0, 2)
    result.peak_smi_mib = smi.peak
    records = [json.loads(ln[len(RESULT_MARK):]) for ln in output.splitlines() if ln.startswith(RESULT_MARK)]
    if records:
        main = min(records, key=lambda r: r.get("rank", 0))
        mem = [r["peak_allocated_mib"] for r in records if "peak_allocated_mib" in r]
        res = [r["peak_reserved_mib"] for r in records if "peak_reserved_mib" in r]
        result.peak_allocated_mib = max(mem) if mem else None
        result.peak_reserved_mib = max(res) if res else None
        result.it_per_s = main.get("it_per_s")
        result.images_per_s = main.get("images_per_s")
        if result.images_per_s is None and result.it_per_s and step.images_per_iter:
            result.images_per_s = round(result.it_per_s * step.images_per_iter, 1)
        result.detail = {k: v for k, v in main.items() if k not in ("rank", "rc", "it_per_s", "images_per_s",
                                                                   "peak_allocated_mib", "peak_reserved_mib")}
        result.detail["ranks"] = len(records)
    if rc is None:
        result.status, result.error = "timeout", f"killed after {step.timeout_s} s; " + last_error_line(output)
    elif rc == 0:
        result.status = "passed"
    else:
        result.error = f"exit {rc}: {last_error_line(output)}"
    return result


def markdown_table(results: list[Result], env: dict) -> str:
    """The results as a markdown table with the machine above it."""
    def fmt(v):
        return "" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))

    lines = [
        "# GPU readiness check", "",
        f"{env['created']} on {env['gpus']} ({env['n_gpus']} visible), torch {env['torch']}, CUDA {env['cuda']}, "
        f"faiss {env['faiss']} ({'GPU' if env['faiss_gpu'] else 'CPU only'}); command: `{env['command']}`", "",
        "| step | status | wall s | it/s | images/s | peak alloc MiB (torch) | peak reserved MiB | "
        "peak used MiB (nvidia-smi) | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        note = "; ".join(x for x in (r.error or "", r.note) if x).replace("|", "\\|")
        if r.name == "faiss_kmeans" and r.detail.get("gpu"):
            g, c = r.detail["gpu"], r.detail["cpu"]
            note = (f"fit {g['fit_s']} s GPU / {c['fit_s']} s CPU; assign {g['assign_rows_per_s']:,} / "
                    f"{c['assign_rows_per_s']:,} rows/s; {note}").rstrip("; ")
        lines.append(f"| {r.name} | {r.status} | {fmt(r.wall_s)} | {fmt(r.it_per_s)} | {fmt(r.images_per_s)} | "
                     f"{fmt(r.peak_allocated_mib)} | {fmt(r.peak_reserved_mib)} | {fmt(r.peak_smi_mib)} | {note} |")
    lines += ["", "wall s: the whole subprocess (interpreter start, imports, data, model build, run). it/s: median "
              "over the run after warm-up; images/s = it/s x global batch (pretrain: each image gives 2 views), "
              "auxlabels: images / end-to-end stage time. peak alloc: torch.cuda.max_memory_allocated, max over "
              "ranks; nvidia-smi: device-wide, includes the CUDA context, caches and faiss.", ""]
    return "\n".join(lines)


def environment(argv: list[str]) -> dict:
    import torch

    try:
        import faiss

        faiss_version, faiss_gpu = faiss.__version__, hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    except ImportError:
        faiss_version, faiss_gpu = "not installed", False
    cuda = torch.cuda.is_available()
    n = torch.cuda.device_count() if cuda else 0
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": cuda, "n_gpus": n,
        "gpus": ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(n)})) or "no GPU",
        "faiss": faiss_version, "faiss_gpu": bool(faiss_gpu),
        "command": shlex.join(["python", "tools/gpu_check.py", *argv]),
    }


def print_plan(steps: list[Step]) -> None:
    for i, s in enumerate(steps, 1):
        print(f"{i:2d}. {s.name}: {s.what} (timeout {s.timeout_s} s)")
        if s.skip:
            print(f"    skipped here: {s.skip}")
        if s.note:
            print(f"    note: {s.note}")
        print(f"    {shlex.join(s.argv)}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        rest = argv[1:]
        return child_main(rest[1:] if rest[:1] == ["--"] else rest)
    if argv[:1] == ["--child-faiss"]:
        return faiss_main()
    if argv[:1] == ["--estimate-memory"]:
        return estimate_main()
    if argv[:1] == ["--make-data"] and len(argv) == 2:
        from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset

        make_synthetic_dataset(argv[1], SyntheticSpec(num_train=32, num_val=8, height=360, width=480, seed=0))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Steps: see the module docstring.")
    p.add_argument("--out", default="runs/gpu_check", help="results folder (default: runs/gpu_check)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--only", action="append", metavar="STEP",
                   help="run only this step (repeat or comma-separate; the data step is added when needed)")
    p.add_argument("--budget-s", type=float, default=BUDGET_S,
                   help=f"steps not started within this many seconds are recorded as 'not run' (default {BUDGET_S})")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    env = environment(argv)
    try:
        steps = select(build_steps(out, n_gpus=env["n_gpus"], faiss_gpu=env["faiss_gpu"]), args.only)
    except ValueError as err:
        p.error(str(err))
    if args.dry_run or not env["cuda_available"]:
        if not env["cuda_available"]:
            print(f"gpu_check: no CUDA device is visible (torch {env['torch']}); nothing was run. "
                  f"On a CUDA machine these {len(steps)} step(s) would run (shown for one GPU; with two or more "
                  "the torchrun steps start 2 processes):")
        else:
            print(f"gpu_check: dry run on {env['n_gpus']} x {env['gpus']}; these {len(steps)} step(s) would run:")
        print_plan(steps)
        return 0
    (out / "logs").mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    failed: set[str] = set()
    t_start = time.perf_counter()
    for step in steps:
        blocked = [n for n in step.needs if n in failed]
        if step.skip or blocked:
            reason = step.skip or f"needs {', '.join(blocked)}, which failed"
            results.append(Result(step.name, "skipped", error=reason, note=step.note, command=shlex.join(step.argv)))
        elif time.perf_counter() - t_start > args.budget_s:
            results.append(Result(step.name, "not run", error=f"time budget of {args.budget_s:g} s used up",
                                  command=shlex.join(step.argv)))
        else:
            print(f"gpu_check: {step.name} ...", flush=True)
            if (out / step.name).is_dir():  # an earlier check's outputs: the stages would resume from them
                shutil.rmtree(out / step.name)
            results.append(run_step(step, out / "logs"))
            r = results[-1]
            print(f"gpu_check: {step.name} {r.status} in {r.wall_s} s" + (f": {r.error}" if r.error else ""),
                  flush=True)
        if results[-1].status != "passed":
            failed.add(step.name)
    env["total_s"] = round(time.perf_counter() - t_start, 1)
    payload = {"format": "auxseg.gpu_check/1", "environment": env, "results": [asdict(r) for r in results]}
    (out / "gpu_check.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown_table(results, env))
    print(markdown_table(results, env))
    print(f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} ({env['total_s']} s)")
    bad = [r.name for r in results if r.status in ("failed", "timeout")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
