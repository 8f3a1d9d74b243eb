"""Fine-tuning from coarse labels on CamVid: cross-entropy on the argmax prior against QR and RQ (issue table b).

For each labelled fraction (the committed seeded splits, 10% and 100%), each
downsampling factor (16 and 32) and each loss (``ce`` on the argmax of the
prior, ``qr``, ``rq``), one ``auxseg finetune`` run with
``targets.kind=coarse``: the training labels are replaced by priors built
from them downsampled ``factor`` times (block majority, one-hot, Gaussian blur
with std = factor, renormalised; docs/finetune.md). mIoU is on the validation
images against their full labels, from argmax q (``mIoU``) and from argmax r
with the validation images' coarse priors built the same way (``mIoU_r``).
A reference row per fraction fine-tunes on the full labels (``--no-reference``
drops it). The schedule, model and device are the fine-tune section of a
pipeline config (default ``configs/pipeline/camvid_cpu.yaml``: DeepLabV3
ResNet-18 at 240x180, random initialisation), with ``--max-iters`` to shorten
it; QR/RQ warm up with cross-entropy on the prior for ``--warmup-frac`` of the
iterations.

Each run has its own work_dir under ``--out``; a run whose results.json is
complete (as many iterations as asked) is skipped and an interrupted one
resumes from its checkpoint, so rerunning the command continues where it
stopped. The markdown table is rewritten after every run.

Usage::

    python tools/bench_camvid_coarse.py --out runs/camvid_coarse --results bench/results/camvid_coarse.md
    python tools/bench_camvid_coarse.py --max-iters 40 --labelled 10 --factors 16 --seeds 0 1
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from auxseg.config import apply_overrides, from_dict, load_config, to_dict  # noqa: E402
from auxseg.io import atomic_write_text, read_json  # noqa: E402
from auxseg.paths import resolve_path  # noqa: E402
from finetune.config import FinetuneConfig, LossConfig, SplitConfig, TargetsConfig  # noqa: E402
from loop.pipeline import PipelineConfig  # noqa: E402

LOSSES = ("ce", "qr", "rq")


def run_key(pct: int, factor: int | None, loss: str, seed: int) -> str:
    prior = "labels" if factor is None else f"coarse{factor}"
    return f"{pct}pct_{prior}_{loss}_seed{seed}"


def finetune_cfg(base: FinetuneConfig, args, pct: int, factor: int | None, loss: str, seed: int) -> FinetuneConfig:
    ft = copy.deepcopy(base)
    ft.data_root = str(args.data)
    ft.work_dir = str(args.out / run_key(pct, factor, loss, seed))
    ft.split = SplitConfig(file=str(Path(args.splits) / f"train_{pct}pct_seed0.txt"))
    ft.seed = seed
    if args.max_iters is not None:
        ft.max_iters = args.max_iters
        ft.val_interval = args.max_iters  # validate once, at the end
        ft.checkpoint_interval = min(ft.checkpoint_interval or args.max_iters, args.max_iters)
    if factor is not None:
        ft.targets = TargetsConfig(kind="coarse", factor=factor)
        ft.loss = LossConfig(name=loss, warmup_iters=int(args.warmup_frac * args.iters) if loss != "ce" else 0)
    if args.set:
        ft = from_dict(FinetuneConfig, apply_overrides(to_dict(ft), args.set))
    return ft


def finished(work_dir: Path, iters: int) -> dict | None:
    """The results of a complete run in work_dir (as many iterations as asked), else None."""
    path = work_dir / "results.json"
    if not path.is_file():
        return None
    results = read_json(path)
    return results if results.get("iteration") == iters else None


def _cell(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def prior_alone_miou(data: Path, factor: int) -> float:
    """mIoU (percent) of the argmax of each validation image's own coarse prior against its full labels: what
    ``mIoU_r`` gets from the prior before any network (no-argmax pixels count as wrong). Classes and ignore
    value: the ``dataset.json`` of a generated dataset, else CamVid's (11 classes, 11 = Unlabelled)."""
    import numpy as np

    from auxlabels.metrics import confusion, iou_matrix
    from auxseg.io import read_label
    from finetune.priors import coarse_prior, prior_to_labels

    meta = read_json(data / "dataset.json") if (data / "dataset.json").is_file() else \
        {"num_classes": 11, "ignore_index": 11}
    num_classes, ignore = int(meta["num_classes"]), int(meta["ignore_index"])
    conf = np.zeros((num_classes + 1, num_classes), dtype=np.int64)
    for path in sorted((data / "valannot").glob("*.png")):
        gt = read_label(path).astype(np.int64)
        pred = prior_to_labels(coarse_prior(gt, num_classes, factor, float(factor)))
        conf += confusion(pred, gt, num_classes, num_classes, 255, [ignore], path)
    present = conf[:-1].sum(axis=1) + conf.sum(axis=0) > 0  # predicted or in the ground truth
    return float(100 * np.diag(iou_matrix(conf))[present].mean())


def _shown(path) -> str:
    """A path as the table shows it: relative to the repository (``../shared/...`` for the shared data)."""
    return os.path.relpath(path, REPO)


def write_table(rows: list[dict], args, elapsed_s: float) -> None:
    cmd = " ".join(["python", "tools/bench_camvid_coarse.py", *args.argv])
    lines = [
        "# Fine-tuning from coarse labels on CamVid: ce on the argmax prior, QR and RQ",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}; fine-tune device "
        f"`{args.base.device}`. Command: `{cmd}` "
        + ("(the table of the runs finished before; none ran in this invocation)." if args.finished_only
           else f"({elapsed_s / 60:.1f} min of runs in this invocation)."),
        f"Data: `{_shown(args.data)}`. Model and schedule: `{args.base.mmseg_config}` from `{args.pipeline_config}`, "
        f"{args.iters} iterations, initialisation `{args.base.init.type}`; "
        f"QR/RQ warm up with cross-entropy on the prior for {int(args.warmup_frac * args.iters)} iterations. "
        f"Seeds: {', '.join(map(str, args.seeds))} (mmengine seed of each fine-tune); splits: "
        f"`{_shown(args.splits)}/train_<pct>pct_seed0.txt`.",
        "Priors: the training labels downsampled by the factor (block majority, ignore does not vote), one-hot, "
        "Gaussian blur with std = factor pixels, renormalised. mIoU (percent) on the validation images against "
        "their full labels: argmax q, and argmax r with the validation images' coarse priors (class mass over "
        "each image).",
        "",
        "| labelled | training targets | loss | mIoU (argmax q) | mIoU_r (argmax r) | runs |",
        "|---|---|---|---|---|---|",
    ]
    for factor in args.factors:
        lines.append(f"| - | coarse x{factor} of each val image | none: argmax of its prior (no network) | - | "
                     f"{args.prior_alone[factor]:.2f} | - |")
    for r in rows:
        target = "full labels" if r["factor"] is None else f"coarse x{r['factor']}"
        loss = "ce" if r["loss"] == "ce" and r["factor"] is None else \
            ("ce on argmax prior" if r["loss"] == "ce" else r["loss"].upper())
        done = [x for x in r["results"] if x is not None]
        lines.append(f"| {r['pct']}% | {target} | {loss} | {_cell([x['mIoU'] for x in done])} | "
                     f"{_cell([x.get('mIoU_r') for x in done])} | {len(done)}/{len(r['results'])} |")
    atomic_write_text(Path(args.results), "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "camvid"),
                        help="CamVid in the SegNet layout (train/ trainannot/ val/ valannot/)")
    parser.add_argument("--pipeline-config", default="configs/pipeline/camvid_cpu.yaml",
                        help="its finetune section gives model, schedule, device and workers")
    parser.add_argument("--splits", default="splits/camvid", help="folder of train_<pct>pct_seed0.txt split files")
    parser.add_argument("--out", default="runs/camvid_coarse")
    parser.add_argument("--results", default=str(REPO / "bench" / "results" / "camvid_coarse.md"))
    parser.add_argument("--labelled", type=int, nargs="+", default=[10, 100], help="percent of the training images")
    parser.add_argument("--factors", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-iters", type=int, help="override the schedule's iterations (PolyLR follows)")
    parser.add_argument("--warmup-frac", type=float, default=0.1,
                        help="QR/RQ: fraction of the iterations trained with cross-entropy on the prior first")
    parser.add_argument("--no-reference", action="store_true", help="skip the full-label ce reference rows")
    parser.add_argument("--list", action="store_true", help="print the runs (work_dir, targets, loss) and exit")
    parser.add_argument("--finished-only", action="store_true",
                        help="run nothing: write the table from the runs already finished (the others count as "
                             "missing in the runs column)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra `auxseg finetune` overrides for every run (e.g. device=cuda num_workers=8)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)

    args.data = Path(args.data).resolve()
    if not (args.data / "train").is_dir() or not (args.data / "valannot").is_dir():
        print(f"skipped: CamVid not found at {args.data} (expected train/, trainannot/, val/, valannot/)",
              file=sys.stderr)
        return 0
    args.splits = resolve_path(args.splits)
    args.out = Path(args.out).resolve()
    args.prior_alone = {factor: prior_alone_miou(args.data, factor) for factor in args.factors}  # no network: once
    args.base = load_config(PipelineConfig, resolve_path(args.pipeline_config)).finetune
    if args.set:  # so the header reports the device and config actually used
        args.base = from_dict(FinetuneConfig, apply_overrides(to_dict(args.base), args.set))
    from finetune.mmseg_config import load_mmseg_config

    args.iters = args.max_iters or (args.base.max_iters or load_mmseg_config(args.base.mmseg_config).train_cfg.max_iters)

    rows = []
    for pct in args.labelled:
        if not args.no_reference:
            rows.append({"pct": pct, "factor": None, "loss": "ce", "results": [None] * len(args.seeds)})
        for factor in args.factors:
            for loss in args.losses:
                rows.append({"pct": pct, "factor": factor, "loss": loss, "results": [None] * len(args.seeds)})

    if args.list:
        for seed in args.seeds:
            for row in rows:
                ft = finetune_cfg(args.base, args, row["pct"], row["factor"], row["loss"], seed)
                state = "done" if finished(Path(ft.work_dir), args.iters) else "to run"
                print(f"{ft.work_dir}  split={ft.split.file}  targets={to_dict(ft.targets)}  loss={to_dict(ft.loss)}  "
                      f"max_iters={args.iters}  [{state}]")
        return 0

    from finetune.run import run as run_finetune

    start = time.time()
    for i, seed in enumerate(args.seeds):  # every configuration's first seed before any later seed
        for row in rows:
            ft = finetune_cfg(args.base, args, row["pct"], row["factor"], row["loss"], seed)
            key = run_key(row["pct"], row["factor"], row["loss"], seed)
            done = finished(Path(ft.work_dir), args.iters)
            if done is not None:
                print(f"{key}: finished before, skipped (mIoU {done['mIoU']:.2f})", flush=True)
            elif args.finished_only:
                print(f"{key}: not finished, left out", flush=True)
                continue
            else:
                done = run_finetune(ft)
                mr = done.get("mIoU_r")
                print(f"{key}: mIoU {done['mIoU']:.2f}" + (f", mIoU_r {mr:.2f}" if mr is not None else ""), flush=True)
            row["results"][i] = done
            write_table(rows, args, time.time() - start)
    if args.finished_only:
        write_table(rows, args, time.time() - start)
    print(f"table: {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
