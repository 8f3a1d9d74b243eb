"""Pre-training with a pluggable objective: the whole loop in :func:`train`.

``run(cfg)`` is the entry point (the CLI and the end-to-end pipeline call it):
it prepares data, model, optimizer and resume state, runs :func:`train` and
writes the backbone export. One iteration, top to bottom inside :func:`train`:
batch -> schedule -> forward both views -> the objective (``loss.name``; for
``infonce``: per-pixel targets -> balanced pixel sampling over the *global*
batch -> gather across processes -> loss) -> NaN guard -> backward -> step ->
log the objective's stats / checkpoint. Adding an objective never changes it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from auxseg import console
from auxseg.config import save_config, to_dict
from auxseg.contracts.small_model import SMALL_MODEL_FILENAME
from auxseg.errors import AuxsegError
from auxseg.files import append_jsonl, atomic_write_text, read_jsonl
from auxseg.nets.small import SMALL_MODELS
from auxseg.paths import check_separate
from auxseg.precision import autocast
from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset
from pretrain.checkpoint import (
    TrainedOn,
    TrainingParts,
    checkpoint_path,
    init_backbone,
    latest_checkpoint,
    load_training_state,
    save_training_state,
)
from pretrain.config import OptimConfig, PretrainConfig, objective_section
from pretrain.data import (
    LabelFolder,
    LabelFolderError,
    StepSampler,
    TwoViewDataset,
    collate,
    read_label_folder,
    write_groundtruth_label_folder,
    write_unlabelled_label_folder,
)
from pretrain.distributed import (
    DistInfo,
    barrier,
    cleanup,
    init_distributed,
)
from pretrain.export import export_network
from pretrain.model import PretrainNet, set_frozen_bn
from pretrain.objectives import StepBatch, build_objective, check_plugins
from pretrain.objectives.base import SoftPrior


class NonFiniteLossError(AuxsegError, FloatingPointError):
    """The loss became NaN or infinite; training stopped without overwriting the last good checkpoint."""


# ----------------------------------------------------------------------------- schedule


def lr_at(it: int, cfg: OptimConfig, max_iters: int) -> float:
    """Learning rate at iteration ``it``: linear warmup, then poly / cosine decay to ``min_lr`` (or constant)."""
    if it < cfg.warmup_iters:
        return cfg.lr * (cfg.warmup_ratio + (1.0 - cfg.warmup_ratio) * it / cfg.warmup_iters)
    t = min(1.0, (it - cfg.warmup_iters) / max(1, max_iters - cfg.warmup_iters))
    if cfg.schedule == "poly":
        return (cfg.lr - cfg.min_lr) * (1.0 - t) ** cfg.power + cfg.min_lr
    if cfg.schedule == "cosine":
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * t))
    return cfg.lr


def build_optimizer(model: PretrainModel, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW; no weight decay on norm weights and biases (choice).

    ``foreach=True`` on every device: torch picks the per-tensor loop on the CPU,
    which is several times slower for a ResNet and gives bitwise the same update.

    The objective's parameters get their own groups with ``lr_mult`` (the loop
    sets each group's lr to ``lr_at(it) * lr_mult``).
    """
    groups = []
    for part, mult in ((model.net, 1.0), (model.objective, model.objective.lr_mult)):
        decay, no_decay = [], []
        for p in part.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups += [{"params": ps, "weight_decay": wd, "lr_mult": mult}
                   for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)) if ps]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, foreach=True)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=True)
    raise ValueError(f"optim.name: {cfg.name!r} is not 'sgd' or 'adamw'")


# ----------------------------------------------------------------------------- the trained module


class PretrainModel(nn.Module):
    """What is trained and checkpointed: the network (exported) and the objective (its heads; dropped at export).

    ``forward(images)`` runs the network only, so DDP wraps this module and
    the objective, called on the unwrapped module, still has its gradients reduced.
    """

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        self.net = PretrainNet(cfg.model)
        # built right after the network: the same seeded draw gives the same initial weights as before
        self.objective = build_objective(cfg.loss.name, objective_section(cfg.loss), self.net.out_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


@dataclass
class TrainState:
    """What :func:`train` needs besides the config."""

    model: nn.Module  # PretrainModel, possibly DDP-wrapped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: DataLoader
    folder: LabelFolder
    device: torch.device
    dist: DistInfo
    start_iter: int


def train(cfg: PretrainConfig, st: TrainState) -> int:
    """Run iterations ``st.start_iter .. stop`` and return the iteration reached."""
    out = Path(cfg.out_dir)
    tc = cfg.train
    stop = min(tc.max_iters, tc.stop_at) if tc.stop_at > 0 else tc.max_iters
    model = st.model.module if hasattr(st.model, "module") else st.model
    objective = model.objective
    writer = None
    if st.dist.is_main and tc.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run wrote after the checkpoint we resume from
        writer = SummaryWriter(str(out / "tensorboard"), purge_step=st.start_iter)
    bar = console.bar(total=stop, initial=st.start_iter, desc="pretrain",  # the step's line, or a tqdm bar
                      disable=not (st.dist.is_main and tc.progress))
    st.model.train()
    if cfg.model.norm == "frozen":
        set_frozen_bn(st.model)
    it = st.start_iter
    t_data = time.perf_counter()
    for batch in st.loader:
        data_time = time.perf_counter() - t_data
        # --- schedule: a function of the iteration
        lr = lr_at(it, cfg.optim, tc.max_iters)
        for group in st.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        # --- forward both views of every image: [b, 2, 3, S, S] -> [b*2, 3, S, S], then the objective
        images = batch["image"].to(st.device, non_blocking=True).flatten(0, 1)
        step = StepBatch(
            label=batch["label"].to(st.device), coords=batch["coords"].to(st.device),
            index=batch["index"].to(st.device), size=batch["size"].to(st.device), folder=st.folder, iteration=it,
            generator=torch.Generator().manual_seed(tc.seed * 1_000_003 + it),  # same draw on every rank, every run
            prior=SoftPrior(batch["prior_ids"].to(st.device), batch["prior_probs"].to(st.device))
            if "prior_ids" in batch else None,  # only when the objective wants_priors
        )
        with autocast(st.device, tc.amp):  # bf16 on CUDA or on a CPU (auxseg.precision); the loss stays fp32
            features = st.model(images)  # [b*2, C, h, w]
            loss, stats = objective(features, step)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at iteration {it} (lr {lr:.3g}); stopping. The last good checkpoint "
                f"is {latest_checkpoint(out)}. Lower optim.lr, enable optim.grad_clip or check the inputs."
            )
        # --- backward, step
        st.optimizer.zero_grad(set_to_none=True)
        st.scaler.scale(loss).backward()
        if cfg.optim.grad_clip > 0:
            st.scaler.unscale_(st.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        st.scaler.step(st.optimizer)
        st.scaler.update()
        it += 1
        # --- log, checkpoint: the stats are whatever the objective reports
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}",
                        **{short: f"{stats[key]:.3g}" for key, short in objective.progress_stats.items() if key in stats})
        if st.dist.is_main and (it % tc.log_every == 0 or it == stop):
            record = {"iter": it, "loss": loss.item(), "lr": lr, "data_time": data_time, **stats}
            append_jsonl(out / "log.jsonl", record)
            if writer is not None:
                for key, value in record.items():
                    if key != "iter" and isinstance(value, int | float):
                        writer.add_scalar(f"train/{key}", value, it)
        if writer is not None and (it % tc.histogram_every == 0 or it == st.start_iter + 1):
            for name, (values, bins) in objective.histograms().items():
                writer.add_histogram(f"train/{name}", values, it, **({"bins": bins} if bins is not None else {}))
        if (tc.checkpoint_every and it % tc.checkpoint_every == 0) or it == stop:
            if st.dist.is_main:
                save_training_state(checkpoint_path(out, it), TrainingParts(model, st.optimizer, st.scaler),
                                    iteration=it, config=to_dict(cfg), keep=tc.keep_checkpoints,
                                    data=TrainedOn.of(st.folder, objective.wants_priors))
            barrier()
        t_data = time.perf_counter()
        if it >= stop:
            break
    bar.close()
    if writer is not None:
        writer.close()
    return it


# ----------------------------------------------------------------------------- setup and entry point


def prepare_label_folder(cfg: PretrainConfig, dist: DistInfo) -> LabelFolder:
    """Open the label folder (generating the synthetic one first when ``data.source`` is "synthetic",
    the all-ignore one of a plain image folder when it is "images")."""
    dc = cfg.data
    if dc.source == "images":
        from auxseg.config import ConfigError
        from pretrain.objectives import OBJECTIVES

        if OBJECTIVES[cfg.loss.name].needs_labels:
            raise ConfigError(f"data.source=images: objective {cfg.loss.name!r} needs auxiliary labels; give a "
                              "label folder (data.source=folder, data.labels=PATH)")
        if not dc.images:
            raise ConfigError("data.images is empty: give the image folder (data.images=PATH)")
        root = Path(cfg.out_dir) / "unlabelled"
        if dist.is_main:
            write_unlabelled_label_folder(dc.images, root)
        barrier()
        return read_label_folder(root, verify_hash=dc.verify_hash)
    if dc.source == "synthetic":
        root = Path(cfg.out_dir) / "synthetic_data"
        if dist.is_main and not (root / "auxlabels" / "manifest.json").is_file():
            h, w = dc.synthetic_size
            make_synthetic_dataset(root / "dataset", SyntheticSpec(num_train=dc.synthetic_images, num_val=0,
                                                                    height=h, width=w, seed=cfg.train.seed))
            write_groundtruth_label_folder(root / "dataset", root / "auxlabels")
        barrier()
        return read_label_folder(root / "auxlabels", verify_hash=dc.verify_hash)
    if not dc.labels:
        raise LabelFolderError("data.labels is empty: give the auxiliary-label folder (data.labels=PATH)")
    return read_label_folder(dc.labels, image_root=dc.image_root, verify_hash=dc.verify_hash)


def truncate_log(path: Path, iteration: int) -> None:
    """Drop log records after ``iteration`` (written by a run that died after its last checkpoint).

    A torn last line (what a kill -9 mid-write leaves) is dropped too; corruption
    elsewhere is an error naming the file and line.
    """
    if not path.is_file():
        return
    keep = [r for r in read_jsonl(path) if r.get("iter", 0) <= iteration]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def final_loss_line(out: Path) -> str | None:
    """``"loss L at iteration N"`` from the last loss record of ``out/log.jsonl``: a run's headline number
    (the command's and the pipeline's closing lines); None without a log or a loss in it."""
    log_file = Path(out) / "log.jsonl"
    log = [r for r in read_jsonl(log_file) if "loss" in r] if log_file.is_file() else []
    return f"loss {log[-1]['loss']:.3f} at iteration {log[-1]['iter']}" if log else None


def _describe(section) -> str:
    """``mode=aux`` style summary of an objective's settings that have a short value (for the start-up line)."""
    mode = getattr(section, "mode", None)
    return f"(mode {mode})" if mode is not None else ""


def _worker_init(_: int) -> None:
    import cv2

    # one thread per loader worker: the workers are the parallelism
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def run(cfg: PretrainConfig) -> Path:
    """Pre-train as configured and return the path of the mmseg-format backbone export
    (of ``small_model.pth`` for the small networks, ``model.arch`` pixel / linear / predseg1).

    If ``train.stop_at`` stops the run before ``max_iters``, no export is written
    and the path of the last training checkpoint is returned instead.
    """
    check_plugins()  # a plug-in that failed to load stops the run here, in one line
    check_separate(cfg.out_dir, "out_dir", {"data.labels": cfg.data.labels, "data.images": cfg.data.images,
                                            "data.image_root": cfg.data.image_root})
    dist, device = init_distributed(cfg.train.device, cfg.train.backend)
    try:
        return _run(cfg, dist, device)
    finally:
        cleanup()


def _run(cfg: PretrainConfig, dist: DistInfo, device: torch.device) -> Path:
    out = Path(cfg.out_dir)
    tc = cfg.train
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    if cfg.model.norm == "sync" and dist.world_size > 1 and device.type != "cuda":
        raise ValueError("model.norm=sync needs CUDA (torch's SyncBatchNorm has no CPU kernel); "
                         "use model.norm=frozen or train for multi-process CPU runs")
    folder = prepare_label_folder(cfg, dist)
    torch.manual_seed(tc.seed)  # same initial weights on every rank (DDP also broadcasts them)
    model = PretrainModel(cfg)
    model.objective.check_folder(folder)
    init_desc = init_backbone(model.net.backbone, cfg.model.init)
    if cfg.model.norm == "sync" and dist.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=tc.amp == "fp16")
    start = 0
    resume = latest_checkpoint(out) if tc.resume == "auto" else (None if tc.resume == "none" else Path(tc.resume))
    if resume is not None:
        start = load_training_state(resume, TrainingParts(model, optimizer, scaler), config=to_dict(cfg),
                                    data=TrainedOn.of(folder, model.objective.wants_priors))
    if dist.is_main:  # records of a run killed after its last checkpoint (or before its first) are redone
        truncate_log(out / "log.jsonl", start)
    ddp_model = model
    if dist.world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = StepSampler(len(folder.images), cfg.data.batch_size, tc.seed, start, tc.max_iters,
                          rank=dist.rank, world_size=dist.world_size)
    dataset = TwoViewDataset(folder, cfg.augment, tc.seed, priors=model.objective.wants_priors)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                        num_workers=cfg.data.num_workers, worker_init_fn=_worker_init,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    if dist.is_main:
        print(f"pretrain: {len(folder.images)} images, K={folder.num_labels} ({folder.scope}), objective "
              f"{cfg.loss.name} {_describe(objective_section(cfg.loss))}, "
              f"{cfg.model.arch}/{cfg.model.stem}, init {init_desc}, iterations {start}..{tc.max_iters}, "
              f"{dist.world_size} process(es) on {device}", flush=True)
    it = start
    if start < tc.max_iters:
        it = train(cfg, TrainState(ddp_model, optimizer, scaler, loader, folder, device, dist, start))
    if it < tc.max_iters:
        return checkpoint_path(out, it)
    paths = {}
    if dist.is_main:
        provenance = dict(config=to_dict(cfg), iteration=it, auxlabels_sha256=folder.labels_sha256,
                          auxlabels_manifest=str(folder.manifest_path))
        paths = export_network(model.net, model.objective, out, provenance)  # the same path as --export
    barrier()
    if cfg.model.arch in SMALL_MODELS:
        return paths.get("small_model", out / SMALL_MODEL_FILENAME)
    return paths.get("mmseg", out / "backbone_mmseg.pth")
