"""Switching a fine-tune run to weak-to-strong consistency, and recording what it did (docs/consistency.md).

:func:`configure_consistency` edits the mmseg config of a run (in place): the unlabelled images (the
training images outside the labelled split, or ``consistency.unlabelled_folder``) become a second
dataset batched with the labelled one (:class:`finetune.consistency_data.ConsistencyDataset`), the
segmenter and its data preprocessor become their consistency variants (:mod:`finetune.consistency`).
:func:`consistency_log_hook` writes ``consistency_log.jsonl`` (one line per iteration: the labelled and
unlabelled loss terms, the confident share of the unlabelled pixels, the pseudo-label accuracy) and
:func:`summarise_log` turns it into the ``consistency.train_history`` of ``results.json``.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from auxseg.config import ConfigError
from auxseg.files import append_jsonl, atomic_write_text, read_jsonl, sha256_file
from finetune import splits as splits_mod
from finetune.config import FinetuneConfig, FinetunePaths
from finetune.mmseg_config import inner_dataset, train_image_dir

LOG_NAME = "consistency_log.jsonl"
LIST_NAME = "unlabelled.txt"
STATS = ("mask_ratio", "pseudo_acc", "pseudo_acc_all")  # logged, never trained on


def unlabelled_stems(paths: FinetunePaths, mmcfg, labelled_stems: list[str]) -> list[str]:
    """The unlabelled images (stems): the training images outside the split, or those of the unlabelled folder."""
    image_dir, suffix = train_image_dir(mmcfg)
    if paths.unlabelled_folder is not None:
        if not paths.unlabelled_folder.is_dir():
            raise ConfigError(f"consistency.unlabelled_folder: {paths.unlabelled_folder} is not a folder")
        return splits_mod.list_stems(paths.unlabelled_folder, suffix)
    rest = sorted(set(splits_mod.list_stems(image_dir, suffix)) - set(labelled_stems))
    if not rest:
        raise ConfigError(f"consistency: every training image of {image_dir} is labelled, so none is left unlabelled; "
                          "choose a smaller split or give consistency.unlabelled_folder")
    return rest


def _write_list(work_dir: Path, stems: list[str]) -> Path:
    """``<work_dir>/unlabelled.txt``, refused when the work_dir was made with other unlabelled images."""
    path = work_dir / LIST_NAME
    text = splits_mod.split_text(stems)
    if path.exists() and path.read_text() != text:
        raise ConfigError(f"{path} lists other unlabelled images than this config selects; this work_dir belongs "
                          "to another run: use a new work_dir")
    atomic_write_text(path, text)
    return path


def _unlabelled_dataset(cfg: FinetuneConfig, paths: FinetunePaths, mmcfg, list_path: Path) -> tuple[dict, bool]:
    """The unlabelled images as the labelled dataset's class with the weak view's pipeline, and whether their
    ground truth is loaded (for the logged pseudo-label accuracy only)."""
    from finetune.consistency_data import unlabelled_pipeline

    ds = copy.deepcopy(inner_dataset(mmcfg.train_dataloader))
    ds.ann_file = str(list_path.resolve())
    if paths.unlabelled_folder is not None:
        ds.data_root = str(paths.unlabelled_folder)
        ds.data_prefix = dict(img_path="", seg_map_path="")
    scored = cfg.consistency.score_pseudo_labels and paths.unlabelled_folder is None
    ds.pipeline = unlabelled_pipeline(ds.pipeline, with_ground_truth=scored)
    return ds, scored


def _switch_model(cfg: FinetuneConfig, mmcfg) -> None:
    """EncoderDecoder -> ConsistencyEncoderDecoder, SegDataPreProcessor -> ConsistencyDataPreProcessor (same keys)."""
    c, model = cfg.consistency, mmcfg.model
    if model.get("type") != "EncoderDecoder":
        raise ConfigError(f"consistency: model.type {model.get('type')!r} of the mmseg config; the consistency "
                          "fine-tune runs on mmseg's EncoderDecoder (DeepLabV3, PSPNet)")
    pre = model.get("data_preprocessor") or {}
    if pre.get("type") != "SegDataPreProcessor" or pre.get("size") is None:
        raise ConfigError("consistency: model.data_preprocessor of the mmseg config must be a SegDataPreProcessor "
                          "with a size (the crop size), so labelled and unlabelled views share one batch size")
    model.type = "ConsistencyEncoderDecoder"
    model.consistency = dict(method=c.method, threshold=c.threshold, labelled_weight=c.labelled_weight,
                             unlabelled_weight=c.unlabelled_weight, fp_share=c.fp_share, fp_dropout=c.fp_dropout,
                             seed=cfg.seed)
    pre.type = "ConsistencyDataPreProcessor"


def configure_consistency(cfg: FinetuneConfig, paths: FinetunePaths, mmcfg, labelled_stems: list[str]) -> dict | None:
    """Point the mmseg config (in place) at the consistency fine-tune of ``cfg.consistency``; return what
    ``results.json`` records of it. None (and nothing changes) for ``method=none``."""
    c = cfg.consistency
    if not c.enabled:
        return None
    import finetune.consistency  # noqa: F401  (registers the model and data preprocessor for this process)
    list_path = _write_list(paths.work_dir, unlabelled_stems(paths, mmcfg, labelled_stems))
    unlabelled, scored = _unlabelled_dataset(cfg, paths, mmcfg, list_path)
    _switch_model(cfg, mmcfg)
    mmcfg.train_dataloader.dataset = dict(type="ConsistencyDataset", dataset=mmcfg.train_dataloader.dataset,
                                          unlabelled=unlabelled, strong=dataclasses.asdict(c.strong),
                                          num_strong=c.num_strong)
    imports = list(mmcfg.get("custom_imports", {}).get("imports", []))
    mmcfg.custom_imports = dict(imports=imports + [m for m in ("finetune.consistency", "finetune.consistency_data")
                                                   if m not in imports], allow_failed_imports=False)
    settings = {k: v for k, v in dataclasses.asdict(c).items() if k != "unlabelled_folder"}
    if c.method != "unimatch":  # FixMatch has no perturbed-feature stream
        settings = {k: v for k, v in settings.items() if k not in ("fp_share", "fp_dropout")}
    source = "folder" if paths.unlabelled_folder is not None else "training images outside the labelled split"
    return {**settings, "num_strong": c.num_strong, "unlabelled": {
        "source": source, "folder": None if paths.unlabelled_folder is None else str(paths.unlabelled_folder),
        "num_images": len(list_path.read_text().split()), "list_file": str(list_path.resolve()),
        "sha256": sha256_file(list_path), "scored_against_ground_truth": scored}}


# ----------------------------------------------------------------------------- the log


def log_row(iteration: int, outputs: dict) -> dict:
    """One line of ``consistency_log.jsonl`` from a train step's logged values (mmengine's ``outputs``)."""
    values = {k: float(v.detach()) if hasattr(v, "detach") else float(v) for k, v in outputs.items()}
    terms = {k: v for k, v in values.items() if "loss" in k and k != "loss"}
    unlabelled = {k: v for k, v in terms.items() if k.startswith("loss_u")}
    return {"iter": iteration, "loss_labelled": sum(v for k, v in terms.items() if k not in unlabelled),
            "loss_unlabelled": sum(unlabelled.values()), **unlabelled, **{k: values[k] for k in STATS if k in values}}


def consistency_log_hook(path: Path):
    """A hook that writes :func:`log_row` of every iteration to ``path`` (rank 0); a resumed run first drops
    the lines after the iteration it resumes from."""
    from mmengine.hooks import Hook

    class ConsistencyLogHook(Hook):
        priority = "LOW"

        def before_train(self, runner) -> None:
            if runner.rank != 0:
                return
            kept = [r for r in read_jsonl(path) if r.get("iter", 0) <= runner.iter] if path.is_file() else []
            atomic_write_text(path, "".join(_json_line(r) for r in kept))

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            if runner.rank == 0 and outputs:
                append_jsonl(path, log_row(runner.iter + 1, outputs))

    return ConsistencyLogHook()


def _json_line(row: dict) -> str:
    import json

    return json.dumps(row) + "\n"


def summarise_log(path: Path, val_iters: list[int]) -> list[dict]:
    """Means of the log's values over each stretch between validations: ``[{iter, mask_ratio, ...}]``."""
    rows = read_jsonl(path) if path.is_file() else []
    out, start = [], 0
    for end in val_iters:
        window = [r for r in rows if start < r["iter"] <= end]
        start = end
        if not window:
            continue
        keys = [k for k in window[0] if k != "iter"]
        means = {k: round(sum(r[k] for r in window if k in r) / max(1, sum(k in r for r in window)), 6) for k in keys}
        out.append({"iter": end, "iterations": len(window), **means})
    return out
