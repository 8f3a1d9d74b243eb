"""Fine-tune an mmseg segmenter (DeepLabV3 / PSPNet) on a split of the labelled images: ``run(cfg)``.

``run`` reads top to bottom: resolve the config's paths once, read the mmseg
config, then :func:`prepare` (apply the few overrides of
:class:`~finetune.config.FinetuneConfig`, choose the training split, convert and
key-check the backbone initialisation, set the targets and, with
``consistency.method``, the consistency fine-tune of :mod:`finetune.consistency_run`),
:func:`train` with mmengine's Runner (resume, IoUMetric validation, TensorBoard,
checkpoints), then write ``results.json`` (docs/contracts.md section 3).
mmengine's own train step (``train_step``: data preprocessor, forward, loss,
backward, step) is used unchanged; the schedule is the mmseg config's PolyLR,
indexed by iteration.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auxseg import console
from auxseg.checkpoint_io import CheckpointError, allow_mmengine_checkpoints
from auxseg.config import ConfigError, save_config, to_dict
from auxseg.contracts.common import versions
from auxseg.distributed import announce_join, dist_timeout_s, launcher_dist_info
from auxseg.files import atomic_write_json, atomic_write_text, read_json_object, sha256_file
from auxseg.paths import check_separate
from finetune import splits as splits_mod
from finetune.config import FinetuneConfig, FinetunePaths, resolve_paths
from finetune.mmseg_config import inner_dataset, load_mmseg_config, train_image_dir

RESULTS_FORMAT = "auxseg.finetune/1"


# ----------------------------------------------------------------------------- mmseg config


def choose_split(cfg: FinetuneConfig, mmcfg, paths: FinetunePaths) -> dict[str, Any]:
    """Pick the training subset, write ``<work_dir>/split.txt`` and point the train dataset at it."""
    image_dir, suffix = train_image_dir(mmcfg)
    available = splits_mod.list_stems(image_dir, suffix)
    info: dict[str, Any] = {"num_available": len(available), "image_dir": str(image_dir), "seed": None}
    if paths.split_file is not None:
        source = paths.split_file
        prefix = inner_dataset(mmcfg.train_dataloader).data_prefix.get("img_path", "")
        stems = splits_mod.read_split(source, available, image_prefix=prefix, img_suffix=suffix)  # stems or pairs
        info.update(mode="file", file=str(source), file_sha256=sha256_file(source))
    elif cfg.split.fraction is not None or cfg.split.num_images is not None:
        spec = splits_mod.SplitSpec(fraction=cfg.split.fraction, count=cfg.split.num_images, seed=cfg.split.seed)
        stems = splits_mod.select(available, spec)
        info.update(mode="fraction" if spec.fraction is not None else "num_images", name=spec.name(),
                    fraction=spec.fraction, num_images=spec.count, seed=spec.seed)
    else:
        stems = available
        info.update(mode="all")
    split_path = paths.work_dir / "split.txt"
    text = splits_mod.split_text(stems)
    if split_path.exists() and split_path.read_text() != text:
        raise ConfigError(
            f"{split_path} lists other training images than this config selects; this work_dir belongs to "
            "another split: use a new work_dir"
        )
    atomic_write_text(split_path, text)
    inner_dataset(mmcfg.train_dataloader).ann_file = str(split_path.resolve())
    info.update(num_images=len(stems), split_file=str(split_path.resolve()), sha256=sha256_file(split_path))
    return info


def _split_stems(split_info: dict) -> list[str]:
    """The chosen training images' stems (paths relative to the train image folder without the suffix)."""
    return Path(split_info["split_file"]).read_text().split()


def apply_overrides(cfg: FinetuneConfig, mmcfg, paths: FinetunePaths) -> None:
    """Apply the FinetuneConfig knobs to the mmseg config (in place)."""
    _apply_data_and_schedule(cfg, mmcfg, paths)
    _apply_environment(cfg, mmcfg, paths.work_dir)
    if cfg.cfg_options:
        mmcfg.merge_from_dict(copy.deepcopy(cfg.cfg_options))


def _apply_data_and_schedule(cfg: FinetuneConfig, mmcfg, paths: FinetunePaths) -> None:
    """data_root, the schedule knobs, batch size, learning rate and loader processes."""
    if paths.data_root is not None:
        root = paths.data_root
        if not root.is_dir():
            raise ConfigError(f"data_root not found: {root}")
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            if loader in mmcfg:
                inner_dataset(mmcfg[loader]).data_root = str(root)
    train_cfg = mmcfg.train_cfg
    if cfg.max_iters is not None:
        old = train_cfg.max_iters
        train_cfg.max_iters = cfg.max_iters
        # stretch/shrink the schedule with the run (PolyLR ends where training ends)
        for sched in mmcfg.get("param_scheduler", []) or []:
            if sched.get("end") == old:
                sched.end = cfg.max_iters
    if cfg.val_interval is not None:
        train_cfg.val_interval = cfg.val_interval
    if cfg.checkpoint_interval is not None:
        mmcfg.default_hooks.checkpoint.interval = cfg.checkpoint_interval
    if cfg.log_interval is not None:
        mmcfg.default_hooks.logger.interval = cfg.log_interval
    if cfg.batch_size is not None:
        mmcfg.train_dataloader.batch_size = cfg.batch_size
    if cfg.lr is not None:
        mmcfg.optim_wrapper.optimizer.lr = cfg.lr
    if mmcfg.optim_wrapper.optimizer.get("type") in ("SGD", "AdamW", "Adam"):
        # torch's default on the CPU is the per-tensor loop: several times slower, bitwise the same update
        mmcfg.optim_wrapper.optimizer.setdefault("foreach", True)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if loader in mmcfg:
            mmcfg[loader].num_workers = cfg.num_workers
            mmcfg[loader].persistent_workers = cfg.num_workers > 0


def _apply_environment(cfg: FinetuneConfig, mmcfg, work_dir: Path) -> None:
    """Seeds, distribution, precision, logging backends, work_dir and resume."""
    mmcfg.randomness = dict(seed=cfg.seed, deterministic=cfg.deterministic)
    mmcfg.launcher = cfg.launcher
    if cfg.launcher != "none" and cfg.device == "cuda":
        mmcfg.sync_bn = "torch"  # the configs use BN for one process; DDP wants SyncBN
        # mmengine joins the group itself here (_process_group): with the same timeout as every other join
        mmcfg.env_cfg.dist_cfg = dict(backend="nccl", timeout=dist_timeout_s())
    elif cfg.launcher != "none":  # gloo on CPUs: SyncBN needs a GPU, mmengine's DDP wrapper a device id
        from finetune.ddp import CPU_DDP_WRAPPER  # registers it

        mmcfg.env_cfg.dist_cfg = dict(backend="gloo")
        mmcfg.model_wrapper_cfg = dict(type=CPU_DDP_WRAPPER, broadcast_buffers=False,  # mmengine's defaults
                                       find_unused_parameters=mmcfg.get("find_unused_parameters", False))
    if cfg.amp and cfg.device == "cuda":
        mmcfg.optim_wrapper.type = "AmpOptimWrapper"
        mmcfg.optim_wrapper.dtype = "bfloat16"
    elif cfg.amp:  # AmpOptimWrapper refuses a CPU; bf16 needs no loss scaling, only the autocast context
        from finetune.amp import CPU_BF16_WRAPPER  # registers it

        mmcfg.optim_wrapper.type = CPU_BF16_WRAPPER
    vis_hook = (mmcfg.get("default_hooks") or {}).get("visualization")
    if vis_hook is not None and not vis_hook.get("draw", False):
        mmcfg.default_hooks.pop("visualization")  # it would draw nothing (draw=False) and warn so in every run
    backends = [dict(type="LocalVisBackend")]
    if cfg.tensorboard:
        backends.append(dict(type="TensorboardVisBackend"))
    mmcfg.visualizer.vis_backends = backends
    mmcfg.work_dir = str(work_dir)
    has_checkpoint = (work_dir / "last_checkpoint").is_file()
    mmcfg.resume = bool(cfg.resume and has_checkpoint)
    mmcfg.load_from = None


@contextlib.contextmanager
def _process_group(cfg: FinetuneConfig):
    """On ``device=cpu`` with ``launcher=pytorch``, join torchrun's gloo group before the Runner (finetune.ddp)
    and leave it after the run; otherwise mmengine joins (or not) as usual, announced here as every join is
    (its timeout is ``dist_cfg``'s, :func:`_apply_environment`)."""
    created = False
    if cfg.launcher == "pytorch" and cfg.device == "cpu":
        from finetune.ddp import join_cpu_process_group

        created = join_cpu_process_group()
    elif cfg.launcher != "none":
        info = launcher_dist_info(cfg.launcher)
        if info.world_size > 1:
            addr = os.environ.get("MASTER_ADDR") or "the first node of SLURM_NODELIST"  # mmengine's choice for slurm
            announce_join(info, f"{addr}:{os.environ.get('MASTER_PORT') or 29500}")
    try:
        yield
    finally:
        if created:
            from auxseg.distributed import cleanup

            cleanup()


@contextlib.contextmanager
def _device(device: str):
    """Make mmengine place the model on ``device`` (it picks CUDA whenever one is visible)."""
    import torch
    from mmengine.device import utils as device_utils

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible")
    old = device_utils.DEVICE
    device_utils.DEVICE = device
    try:
        yield
    finally:
        device_utils.DEVICE = old


# ----------------------------------------------------------------------------- hooks


def _make_hooks(report_path: Path, report: dict):
    """Two small hooks: verify the backbone init once, and remember every validation's metrics."""
    from mmengine.hooks import Hook
    from mmengine.model import is_model_wrapper

    from finetune.convert import verify_loaded

    class VerifyInitHook(Hook):
        """Before the first iteration, prove each backbone (and decoder) tensor equals the converted checkpoint."""

        priority = "VERY_HIGH"

        def before_train(self, runner) -> None:
            if runner.iter != 0 or not (report.get("converted") or report.get("decoder_converted")):
                return  # resumed runs restore their own weights
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            if report.get("converted"):
                report["verified_tensors"] = verify_loaded(model.backbone, report["converted"])
            if report.get("decoder_converted"):
                report["verified_decoder_tensors"] = verify_loaded(  # a prior-loss's buffers are its own too
                    model.decode_head, report["decoder_converted"], not_loaded=("conv_seg.", "loss_decode."),
                    what="decode head")
            atomic_write_json(report_path, report)

    class RecordValHook(Hook):
        priority = "LOW"

        def __init__(self) -> None:
            self.history: list[dict] = []

        def after_val_epoch(self, runner, metrics=None) -> None:
            self.history.append({"iter": runner.iter, "metrics": dict(metrics or {})})

    return VerifyInitHook(), RecordValHook()


# consistency fine-tune: the unlabelled loss, the confident share of unlabelled pixels, the pseudo-label accuracy
PROGRESS_STATS = (("loss_u_strong", "loss_u"), ("mask_ratio", "mask"), ("pseudo_acc", "pl_acc"))


def _progress_hook():
    """A hook that draws the run on the console's step line (auxseg.console): iterations, loss, mIoU so far."""
    from mmengine.hooks import Hook

    class ProgressHook(Hook):
        priority = "LOW"

        def __init__(self) -> None:
            self.train = self.val = None
            self.miou: float | None = None

        def before_train(self, runner) -> None:
            self.train = console.bar(total=runner.max_iters, initial=runner.iter, desc="train", unit="it")

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            outputs = outputs or {}
            loss = outputs.get("loss")
            self.train.update(1)
            self.train.set_postfix_str(", ".join(
                ([f"loss={float(loss.detach() if hasattr(loss, 'detach') else loss):.3f}"] if loss is not None else [])
                + [f"{short}={float(outputs[key].detach() if hasattr(outputs[key], 'detach') else outputs[key]):.2f}"
                   for key, short in PROGRESS_STATS if key in outputs]
                + ([f"mIoU={self.miou:.2f}"] if self.miou is not None else [])))

        def after_train(self, runner) -> None:
            self.train.close()

        def before_val_epoch(self, runner) -> None:
            self.val = console.bar(total=len(runner.val_dataloader), desc="val", unit="batch")

        def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            self.val.update(1)

        def after_val_epoch(self, runner, metrics=None) -> None:
            self.val.close()
            if metrics and "mIoU" in metrics:
                self.miou = float(metrics["mIoU"])

    return ProgressHook()


class _MMEngineNoise(logging.Filter):
    """Drops two warnings mmengine logs in every run: its own CheckpointHook and LoggerHook build a
    ``FileClient`` (a ``HardDiskBackend``) for backward compatibility ("will not be removed until
    MMEngine 1.0", mmengine/hooks/checkpoint_hook.py) although nothing asks for one; no config can avoid it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith('"FileClient" will be deprecated')
                    or message.startswith('"HardDiskBackend" is the alias'))


# ----------------------------------------------------------------------------- results


def _nan_to_none(value: float) -> float | None:
    """A JSON-safe percentage: NaN (JSON has none) -> None, float32 -> float rounded to 0.01."""
    value = float(value)
    return None if value != value else round(value, 2)


def build_results(metrics: dict, classes: list[str], **extra) -> dict:
    """The results.json payload: mIoU, aAcc, mAcc and per-class IoU (percent, 0-100) plus context."""
    from finetune.metrics import PER_CLASS_PREFIX

    missing = [k for k in ("mIoU", "aAcc") if k not in metrics]
    if missing:
        raise RuntimeError(f"validation metrics lack {missing}; is val_evaluator an IoUMetric? got {list(metrics)}")
    per_class = {c: _nan_to_none(metrics[PER_CLASS_PREFIX + c]) for c in classes if PER_CLASS_PREFIX + c in metrics}
    return {
        "format": RESULTS_FORMAT,
        "mIoU": _nan_to_none(metrics["mIoU"]),
        "aAcc": _nan_to_none(metrics["aAcc"]),
        "mAcc": _nan_to_none(metrics["mAcc"]) if "mAcc" in metrics else None,
        "units": "percent",
        "per_class_iou": per_class,
        "classes": list(classes),
        **extra,
    }


# ----------------------------------------------------------------------------- the run


@dataclass
class Prepared:
    """What a run settled before training: the split, the init report, the targets and the consistency setup."""

    split_info: dict
    report: dict
    targets: dict | None
    consistency: dict | None


def run(cfg: FinetuneConfig) -> dict:
    """Fine-tune as ``cfg`` says and return the results dict (also written to ``<work_dir>/results.json``)."""
    start = time.time()
    launcher_dist_info(cfg.launcher)  # every launcher's variables, checked before anything is written
    paths = resolve_paths(cfg)  # every path of the config, resolved once
    check_separate(paths.work_dir, "work_dir", {"data_root": cfg.data_root,
                                                "consistency.unlabelled_folder": cfg.consistency.unlabelled_folder})
    mmcfg = load_mmseg_config(paths.mmseg_config)  # before anything is written: a broken file leaves no work_dir
    paths.work_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, paths.work_dir / "config.yaml")
    prepared = prepare(cfg, paths, mmcfg)
    runner, history = train(cfg, paths, mmcfg, prepared)
    results = _results(cfg, paths, mmcfg, prepared, runner, history, start)
    atomic_write_json(paths.work_dir / "results.json", results)
    return results


def prepare(cfg: FinetuneConfig, paths: FinetunePaths, mmcfg) -> Prepared:
    """Everything before training, in place on ``mmcfg``: overrides, split, checked initialisation, targets,
    consistency; writes split.txt, init_report.json and the mmseg_config.py that will run."""
    from finetune.consistency_run import configure_consistency
    from finetune.convert import prepare_decoder_init, prepare_init
    from finetune.priors import configure_targets

    apply_overrides(cfg, mmcfg, paths)
    split_info = choose_split(cfg, mmcfg, paths)
    init_ckpt = str(paths.init_checkpoint) if paths.init_checkpoint else None
    report = prepare_init(cfg.init.type, init_ckpt, mmcfg, paths.work_dir)  # raises before any training
    if paths.init_decoder:
        report.update(prepare_decoder_init(paths.init_decoder, mmcfg, paths.work_dir))
    # after the decoder check, which wants the head type of the export (ASPPHead, not PriorASPPHead)
    suffix = train_image_dir(mmcfg)[1]
    targets = configure_targets(cfg, mmcfg, [stem + suffix for stem in _split_stems(split_info)], paths)
    consistency = configure_consistency(cfg, paths, mmcfg, _split_stems(split_info))
    _record_init(report, paths.work_dir / "init_report.json", mmcfg.resume, init_ckpt)
    atomic_write_text(paths.work_dir / "mmseg_config.py", mmcfg.dump())
    return Prepared(split_info, report, targets, consistency)


def _record_init(report: dict, report_path: Path, resume: bool, init_ckpt: str | None) -> None:
    """Write init_report.json; a resumed run must come from the same checkpoint and keeps its verified count."""
    report["verified_tensors"] = None
    previous = read_json_object(report_path) if report_path.is_file() and resume else None
    if previous and previous.get("checkpoint_sha256") != report.get("checkpoint_sha256"):
        raise CheckpointError(
            f"{report_path.parent}: resuming a run that was initialised from {previous.get('checkpoint')}, "
            f"but init.checkpoint is now {init_ckpt}; use a new work_dir"
        )
    if previous:
        report["verified_tensors"] = previous.get("verified_tensors")
    atomic_write_json(report_path, report)


def train(cfg: FinetuneConfig, paths: FinetunePaths, mmcfg, prepared: Prepared) -> tuple[Any, list[dict]]:
    """Train with mmengine's Runner and validate the final model; returns the runner and every validation."""
    from finetune.consistency_run import LOG_NAME, consistency_log_hook

    allow_mmengine_checkpoints()  # mmengine's resume calls torch.load(weights_only=True) itself
    from mmengine.runner import Runner

    report_path = paths.work_dir / "init_report.json"
    verify_hook, record_hook = _make_hooks(report_path, prepared.report)
    with _device(cfg.device), _process_group(cfg):
        # mmengine keeps one logger / message hub / visualizer per name for the whole process; mmseg's
        # runtime config names its visualizer "visualizer", so a second run in the same process would
        # write its logs and TensorBoard events into the first run's folder. Unique names per run:
        mmcfg.experiment_name = f"finetune_{uuid.uuid4().hex[:8]}"
        mmcfg.visualizer.name = mmcfg.experiment_name
        with console.muted_stdout():  # in a console step: the env block and config go to mmengine's log file only
            runner = Runner.from_cfg(mmcfg)
        console.quiet_console_handlers(runner.logger)  # likewise the iteration logs and per-class tables
        runner.logger.addFilter(_MMEngineNoise())
        runner.register_hook(verify_hook)
        runner.register_hook(record_hook)
        if prepared.consistency is not None:
            runner.register_hook(consistency_log_hook(paths.work_dir / LOG_NAME))
        if console.quiet():  # verbose: mmengine's own iteration logs are on the terminal
            runner.register_hook(_progress_hook())
        runner.train()
        last = record_hook.history[-1] if record_hook.history else None
        if last is None or last["iter"] != runner.iter:
            runner.val()  # the final model was not evaluated yet (e.g. a finished run resumed)
    if cfg.init.type != "random" and prepared.report.get("verified_tensors") is None:
        raise CheckpointError(f"{report_path}: the backbone initialisation was never verified")
    return runner, record_hook.history


def _results(cfg: FinetuneConfig, paths: FinetunePaths, mmcfg, prepared: Prepared, runner, history: list[dict],
             start: float) -> dict:
    """The results.json payload of a finished run (docs/contracts.md section 3)."""
    from finetune.consistency_run import LOG_NAME, summarise_log

    final, report = history[-1], prepared.report
    val_ds = inner_dataset(mmcfg.val_dataloader)
    classes = list(runner.val_dataloader.dataset.metainfo["classes"])
    consistency = {}
    if prepared.consistency is not None:
        log = paths.work_dir / LOG_NAME
        consistency["consistency"] = {**prepared.consistency, "log": str(log),
                                      "train_history": summarise_log(log, [h["iter"] for h in history])}
    return build_results(
        final["metrics"],
        classes,
        iteration=runner.iter,
        max_iters=mmcfg.train_cfg.max_iters,
        evaluated_on={"dataset": val_ds.type, "data_root": val_ds.get("data_root"),
                      "img_path": val_ds.data_prefix.get("img_path"),
                      "num_images": len(runner.val_dataloader.dataset)},
        split=prepared.split_info,
        init={k: report.get(k) for k in ("type", "checkpoint", "checkpoint_sha256", "backbone_type", "depth",
                                         "verified_tensors", "decoder", "decoder_sha256", "verified_decoder_tensors")},
        mmseg_config=str(paths.mmseg_config),
        work_dir=str(paths.work_dir),
        mIoU_r=_nan_to_none(final["metrics"]["mIoU_r"]) if "mIoU_r" in final["metrics"] else None,
        targets=prepared.targets or {"kind": "labels", "loss": "ce"},
        **consistency,
        val_history=[{"iter": h["iter"], "mIoU": _nan_to_none(h["metrics"]["mIoU"]),
                      **({"mIoU_r": _nan_to_none(h["metrics"]["mIoU_r"])} if "mIoU_r" in h["metrics"] else {})}
                     for h in history if "mIoU" in h["metrics"]],
        config=to_dict(cfg),
        elapsed_s=round(time.time() - start, 1),
        versions=versions(),
    )
