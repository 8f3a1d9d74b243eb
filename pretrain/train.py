"""Cross-image pixel contrastive pre-training: the whole loop in :func:`train`.

``run(cfg)`` is the entry point (the CLI and the end-to-end pipeline call it):
it prepares data, model, optimizer and resume state, runs :func:`train` and
writes the backbone export. One iteration, top to bottom inside :func:`train`:
batch -> schedule -> forward both views -> per-pixel targets -> balanced pixel
sampling over the *global* batch -> gather embeddings across processes ->
loss -> backward -> step -> log / checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from auxseg.config import save_config, to_dict
from auxseg.errors import AuxsegError
from auxseg.io import atomic_write_text
from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset
from pretrain.checkpoint import (
    checkpoint_path,
    init_backbone,
    latest_checkpoint,
    load_training_state,
    save_training_state,
)
from pretrain.config import OptimConfig, PretrainConfig
from pretrain.data import (
    LabelFolder,
    LabelFolderError,
    StepSampler,
    TwoViewDataset,
    collate,
    read_label_folder,
    write_groundtruth_label_folder,
)
from pretrain.distributed import (
    DistInfo,
    all_gather_cat,
    barrier,
    cleanup,
    gather_rows_with_grad,
    init_distributed,
)
from pretrain.export import export_backbone, export_decoder
from pretrain.losses import LOSSES, PixelTargets, sample_balanced, targets_at_features
from pretrain.model import PretrainNet, set_frozen_bn


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


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW; no weight decay on norm weights and biases (choice)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    raise ValueError(f"optim.name: {cfg.name!r} is not 'sgd' or 'adamw'")


# ----------------------------------------------------------------------------- one step's pieces


def sampled_embeddings(features: torch.Tensor, ids_local: torch.Tensor, budget: int, min_per_label: int,
                       generator: torch.Generator, project=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample pixels over the global batch and return their embeddings and ids, in the same order on every rank.

    Args:
        features: ``[b*V, C, h, w]`` this process's feature maps (image-major, then view).
        ids_local: ``[b, V, h, w]`` int64 target ids, -1 = ignore.
        project: ``[n, C] -> [n, D]`` applied to this process's sampled rows before the
            gather (the projection head); None keeps the features.

    Returns:
        feats ``[N, D]`` (with gradient, gathered from all processes), ids ``[N]``.
    """
    ids_global = all_gather_cat(ids_local).reshape(-1)  # [B*V*h*w], rank order = single-process order
    sel = sample_balanced(ids_global, budget, min_per_label, generator)  # [N], identical on all ranks
    per_rank = ids_local.numel()
    owner = sel // per_rank  # [N] which process holds each sampled pixel
    world = ids_global.numel() // per_rank
    rank = torch.distributed.get_rank() if world > 1 else 0
    mine = sel[owner == rank] - rank * per_rank  # local flat indices (image*V+view, y, x)
    _, _, h, w = features.shape
    n_img, yx = mine // (h * w), mine % (h * w)
    feats_local = features[n_img, :, yx // w, yx % w]  # [n_r, C] without copying the whole map
    if project is not None:
        feats_local = project(feats_local)  # [n_r, D]
    counts = [int((owner == r).sum()) for r in range(world)]
    pieces = gather_rows_with_grad(feats_local, counts)  # per rank, in that rank's sel order
    # back to the order of `sel`: position of each row of cat(pieces) in sel
    where = torch.cat([(owner == r).nonzero().squeeze(1) for r in range(world)])
    feats = torch.cat(pieces)[torch.argsort(where)]  # [N, D] in the order of sel
    return feats, ids_global[sel]


@dataclass
class TrainState:
    """What :func:`train` needs besides the config."""

    model: nn.Module  # PretrainNet, possibly DDP-wrapped
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
    tc, lc = cfg.train, cfg.loss
    stop = min(tc.max_iters, tc.stop_at) if tc.stop_at > 0 else tc.max_iters
    net = st.model.module if hasattr(st.model, "module") else st.model
    loss_fn = LOSSES[lc.name]
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tc.amp)
    per_image_ids = st.folder.scope == "image"
    writer = None
    if st.dist.is_main and tc.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run wrote after the checkpoint we resume from
        writer = SummaryWriter(str(out / "tensorboard"), purge_step=st.start_iter if st.start_iter else None)
    bar = tqdm(total=stop, initial=st.start_iter, desc="pretrain", dynamic_ncols=True,
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
            group["lr"] = lr
        # --- forward both views of every image: [b, 2, 3, S, S] -> [b*2, 3, S, S]
        images = batch["image"].to(st.device, non_blocking=True).flatten(0, 1)
        with torch.autocast(st.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            features = st.model(images)  # [b*2, C, h, w]
        # --- targets at feature resolution, then balanced sampling over the global batch
        h, w = features.shape[-2:]
        ids = targets_at_features(
            lc.mode, batch["label"].to(st.device), batch["coords"].to(st.device), batch["index"].to(st.device),
            batch["size"][:, 1].to(st.device), h=h, w=w, num_labels=st.folder.num_labels,
            ignore_index=st.folder.ignore_index, per_image_ids=per_image_ids, pixel_cell=lc.pixel_cell,
        )  # [b, 2, h, w]
        gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + it)  # same draw on every rank, every run
        with torch.autocast(st.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            # the pointwise projection head runs on the sampled pixels only: [N, D], L2-normalised
            feats, sel_ids = sampled_embeddings(features, ids, lc.budget, lc.min_per_label, gen, project=net.head.rows)
        # --- loss, backward, step
        loss, stats = loss_fn(feats, PixelTargets(sel_ids), temperature=lc.temperature)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at iteration {it} (lr {lr:.3g}); stopping. The last good checkpoint "
                f"is {latest_checkpoint(out)}. Lower optim.lr, enable optim.grad_clip or check the inputs."
            )
        st.optimizer.zero_grad(set_to_none=True)
        st.scaler.scale(loss).backward()
        if cfg.optim.grad_clip > 0:
            st.scaler.unscale_(st.optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)
        st.scaler.step(st.optimizer)
        st.scaler.update()
        it += 1
        # --- log, checkpoint
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", pos=f"{stats['positives_per_anchor']:.1f}")
        if st.dist.is_main and (it % tc.log_every == 0 or it == stop):
            record = {"iter": it, "loss": loss.item(), "lr": lr, "data_time": data_time, **stats}
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if writer is not None:
                for key in ("loss", "loss_chance", "loss_floor", "lr", "positives_per_anchor", "anchors", "data_time"):
                    if key in record:  # a loss in LOSSES may report fewer stats
                        writer.add_scalar(f"train/{key}", record[key], it)
        if writer is not None and (it % tc.histogram_every == 0 or it == st.start_iter + 1):
            valid = ids[ids >= 0]
            if lc.mode == "aux" and valid.numel():
                # label histogram of the batch (ids are label values for scope "global")
                writer.add_histogram("train/label_histogram", (valid % st.folder.num_labels).cpu(), it,
                                     bins=np.arange(st.folder.num_labels + 1) - 0.5)
            writer.add_histogram("train/sampled_ids_per_label", torch.unique(sel_ids, return_counts=True)[1].cpu(), it)
        if (tc.checkpoint_every and it % tc.checkpoint_every == 0) or it == stop:
            if st.dist.is_main:
                save_training_state(checkpoint_path(out, it), model=net, optimizer=st.optimizer, scaler=st.scaler,
                                    iteration=it, config=to_dict(cfg), keep=tc.keep_checkpoints)
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
    """Open the label folder (generating the synthetic one first when ``data.source`` is "synthetic")."""
    dc = cfg.data
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
    """Drop log records after ``iteration`` (written by a run that died after its last checkpoint)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["iter"] <= iteration]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def _worker_init(_: int) -> None:
    import cv2

    # one thread per loader worker: the workers are the parallelism
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def run(cfg: PretrainConfig) -> Path:
    """Pre-train as configured and return the path of the mmseg-format backbone export.

    If ``train.stop_at`` stops the run before ``max_iters``, no export is written
    and the path of the last training checkpoint is returned instead.
    """
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
    if cfg.loss.name not in LOSSES:
        raise ValueError(f"loss.name: {cfg.loss.name!r} is not one of {sorted(LOSSES)}")
    folder = prepare_label_folder(cfg, dist)
    if cfg.loss.mode == "superpixel" and folder.scope != "image":
        raise LabelFolderError(f"{folder.manifest_path}: loss.mode=superpixel needs a label folder of scope "
                               f"'image' (superpixel ids), this one has scope {folder.scope!r}")
    torch.manual_seed(tc.seed)  # same initial weights on every rank (DDP also broadcasts them)
    model = PretrainNet(cfg.model)
    init_desc = init_backbone(model.backbone, cfg.model.init)
    if cfg.model.norm == "sync" and dist.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=tc.amp == "fp16")
    start = 0
    resume = latest_checkpoint(out) if tc.resume == "auto" else (None if tc.resume == "none" else Path(tc.resume))
    if resume is not None:
        start = load_training_state(resume, model=model, optimizer=optimizer, scaler=scaler, config=to_dict(cfg))
        if dist.is_main:
            truncate_log(out / "log.jsonl", start)
    ddp_model = model
    if dist.world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = StepSampler(len(folder.images), cfg.data.batch_size, tc.seed, start, tc.max_iters,
                          rank=dist.rank, world_size=dist.world_size)
    loader = DataLoader(TwoViewDataset(folder, cfg.augment, tc.seed), batch_sampler=sampler, collate_fn=collate,
                        num_workers=cfg.data.num_workers, worker_init_fn=_worker_init,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    if dist.is_main:
        print(f"pretrain: {len(folder.images)} images, K={folder.num_labels} ({folder.scope}), mode {cfg.loss.mode}, "
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
        paths = export_backbone(model.backbone, out, **provenance)
        if model.decoder is not None:
            export_decoder(model.decoder, out, **provenance)
    barrier()
    return paths.get("mmseg", out / "backbone_mmseg.pth")
