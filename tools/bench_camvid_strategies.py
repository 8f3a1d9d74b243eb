"""Does PmIoU order labelling strategies like their downstream mIoU? (CamVid benchmark, part c)

Starts from a finished pipeline run (``auxseg pipeline configs/pipeline/camvid_cpu.yaml``):
its segmenter, its auxiliary labels, its pre-training and its fine-tunes are the
default strategy, and its segmenter runs are the baseline without pre-training.
Every other strategy gets its own auxiliary labels for all training images (with
PmIoU on val), its own pre-training and its own fine-tunes, with everything else
(data, split, schedules, seeds) taken from the pipeline's resolved config:

- ``pixel``: #1 same pixel. Positives are the two views of one pixel; the
  labels are not used (``loss.infonce.mode=pixel``). PmIoU is its exact upper bound.
- ``superpixel``: #2 same superpixel. One label per superpixel of one image
  (``clusterer=superpixel``, ``loss.infonce.mode=superpixel``).
- ``random``: K-means + vote on the features of a random-initialised
  ResNet-18 (layer4) instead of the segmenter's.

Each step is recorded like a pipeline step, so a rerun reuses finished work.
Fine-tunes of the first seed run for every strategy before the later seeds.

Usage::

    python tools/bench_camvid_strategies.py runs/camvid_cpu --out runs/camvid_strategies \\
        --results bench/results/camvid_strategies.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from auxlabels.config import AuxLabelsConfig  # noqa: E402
from auxlabels.metrics import same_pixel_bound  # noqa: E402
from auxseg.config import apply_overrides, from_dict, load_config, to_dict  # noqa: E402
from auxseg.io import atomic_write_json, atomic_write_text, list_images, read_json  # noqa: E402
from finetune.config import InitConfig  # noqa: E402
from loop.pipeline import (  # noqa: E402
    PipelineConfig,
    auxlabels_config,
    finetune_config,
    last_checkpoint,
    prepare_data,
    pretrain_config,
    run_step,
)
from pretrain.config import PretrainConfig  # noqa: E402

# key -> (description, Table 1 row, auxlabels overrides or None to reuse the pipeline's labels, pretrain overrides)
STRATEGIES = {
    "pixel": ("#1 same pixel", "1", None, ["loss.infonce.mode=pixel"]),
    "superpixel": ("#2 same superpixel", "2", ["clusterer=superpixel"], ["loss.infonce.mode=superpixel"]),
    "random": ("K-means + vote, random-init ResNet-18 features", "-", [
        "extractor.name=resnet18", "extractor.random_init=true", "extractor.checkpoint=null",
        "extractor.layer=layer4"], []),
}
DEFAULT = "K-means + vote, segmenter features (the pipeline's labels)"


def open_pipeline_run(pipeline_dir: Path, seeds: list[int] | None) -> tuple[PipelineConfig, object]:
    """The config (with ``seeds`` if given) and dataset of a finished ``auxseg pipeline`` run; exits if absent."""
    config_path = pipeline_dir / "config.yaml"
    if not config_path.is_file():
        print(f"{config_path}: not found; run `auxseg pipeline` first", file=sys.stderr)
        raise SystemExit(2)
    cfg = load_config(PipelineConfig, config_path)
    cfg.seeds = seeds or cfg.seeds
    return cfg, prepare_data(cfg, pipeline_dir)


def step_record(pipeline_dir: Path, step: str) -> dict:
    """The ``step.json`` record of a finished pipeline step; exits naming the file if the step has not finished."""
    path = pipeline_dir / step / "step.json"
    if not path.is_file():
        raise SystemExit(f"{path}: not found; the pipeline run has not finished step {step}")
    return read_json(path)


def _override(cfg, schema, overrides: list[str]):
    return from_dict(schema, apply_overrides(to_dict(cfg), overrides))


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman rank correlation; None for fewer than 3 points or a constant."""
    from scipy.stats import spearmanr

    if len(x) < 3:
        return None
    rho = float(spearmanr(x, y).statistic)
    return None if rho != rho else rho


def write_results(rows: list[dict], baseline: dict, counts: dict, args: argparse.Namespace) -> None:
    cmd = " ".join(["python", "tools/bench_camvid_strategies.py", *sys.argv[1:]])
    lines = [
        "# Labelling strategies on CamVid: PmIoU against downstream mIoU (CPU protocol)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU. Command: `{cmd}`, after "
        f"`auxseg pipeline configs/pipeline/camvid_cpu.yaml \"seeds=[0,1]\"` wrote `{args.pipeline}`.",
        f"Every strategy labels all {counts['train']} training images, pre-trains with the pipeline's pre-training "
        f"config (only `loss.infonce.mode` differs for #1 and #2) and is fine-tuned on the same {counts['labelled']} labelled "
        f"images with the same schedule and seeds. PmIoU and mIoU (percent) are on the {counts['val']} validation "
        "images. One label set and one pre-training per strategy; the spread is over fine-tune seeds only.",
        "",
        "| labelling strategy | Table 1 row | PmIoU (val) | mIoU per fine-tune seed | mIoU mean ± sd |",
        "|---|---|---|---|---|",
        f"| no pre-training (baseline) | - | - | {', '.join(f'{v:.2f}' for v in baseline.values())} "
        f"| {_mean_spread(list(baseline.values()))} |",
    ]
    for r in rows:
        pm = r["pmiou"]
        pm_text = "-" if pm is None else (f"{pm:.2f}" if pm >= 0.01 else f"{pm:.1e}")
        if r.get("pmiou_is_bound"):
            pm_text += " (upper bound)"
        per_seed = ", ".join(f"{r['miou'][s]:.2f}" for s in sorted(r["miou"], key=int)) or "not run"
        lines.append(f"| {r['name']} | {r['table1']} | {pm_text} | {per_seed} | {_mean_spread(list(r['miou'].values()))} |")
    done = [r for r in rows if r["miou"] and r["pmiou"] is not None]
    if len(done) >= 2:
        by_pm = sorted(done, key=lambda r: -r["pmiou"])
        by_miou = sorted(done, key=lambda r: -statistics.mean(r["miou"].values()))
        rho = spearman([r["pmiou"] for r in done], [statistics.mean(r["miou"].values()) for r in done])
        lines += [
            "",
            "Order by PmIoU: " + " > ".join(r["key"] for r in by_pm) + ".",
            "Order by downstream mIoU: " + " > ".join(r["key"] for r in by_miou) + ".",
            f"Spearman rank correlation over {len(done)} strategies: "
            + ("undefined" if rho is None else f"{rho:.2f}") + ".",
        ]
    atomic_write_text(Path(args.results), "\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="work_dir of a finished `auxseg pipeline` run (e.g. runs/camvid_cpu)")
    parser.add_argument("--out", default="runs/camvid_strategies")
    parser.add_argument("--results", default=str(REPO / "bench" / "results" / "camvid_strategies.md"))
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--seeds", type=int, nargs="*", help="fine-tune seeds (default: the pipeline's)")
    args = parser.parse_args()

    pipeline_dir = Path(args.pipeline).resolve()
    cfg, data = open_pipeline_run(pipeline_dir, args.seeds)
    out = Path(args.out).resolve()

    def recorded(step: str) -> dict:
        return step_record(pipeline_dir, step)["result"]

    seed0 = cfg.seeds[0]
    baseline = {str(s): recorded(f"1_segmenter_seed{s}")["mIoU"] for s in cfg.seeds}
    segmenter = recorded(f"1_segmenter_seed{seed0}")
    pipeline_labels = pipeline_dir / "2_auxlabels"
    split = (pipeline_dir / f"1_segmenter_seed{seed0}" / "split.txt").read_text().split()
    counts = {"train": len(list_images(data.root / "train")), "val": len(list_images(data.root / "val")),
              "labelled": len(split)}
    rows = [{
        "key": "default", "name": DEFAULT, "table1": "4/9",
        "pmiou": (recorded("2_auxlabels").get("pmiou") or {}).get("pmiou"),
        "miou": {str(s): recorded(f"4_finetune_seed{s}")["mIoU"] for s in cfg.seeds},
    }]
    from auxlabels.pipeline import run as run_auxlabels
    from finetune.run import run as run_finetune
    from pretrain.train import run as run_pretrain

    exports: dict[str, str] = {}

    def finetune(row: dict, seed: int) -> None:
        step_dir = out / row["key"] / f"finetune_seed{seed}"
        ft = finetune_config(cfg, data, step_dir, InitConfig(type="export", checkpoint=exports[row["key"]]), seed)
        result = run_step(f"{row['key']}: fine-tune (seed {seed})", step_dir, ft, lambda: run_finetune(ft))
        row["miou"][str(seed)] = result["mIoU"]
        atomic_write_json(out / "strategies.json", {"baseline": baseline, "rows": rows})
        write_results(rows, baseline, counts, args)
        print(f"{row['key']} seed {seed}: mIoU {result['mIoU']:.2f}", flush=True)

    for key in args.strategies:
        name, table1, aux_overrides, pre_overrides = STRATEGIES[key]
        work = out / key
        if aux_overrides is None:
            labels_dir = pipeline_labels
            pm = same_pixel_bound(data.root / "valannot", data.ignore_values, data.num_classes)
        else:
            labels_dir = work / "labels"
            aux = auxlabels_config(cfg, data, labels_dir, last_checkpoint(pipeline_dir / f"1_segmenter_seed{seed0}"))
            aux = _override(aux, AuxLabelsConfig, aux_overrides)
            manifest = run_step(f"{key}: auxlabels", labels_dir, aux, lambda aux=aux: run_auxlabels(aux))
            pm = (manifest.get("pmiou") or {}).get("pmiou")
        init = segmenter["init"]
        pre = _override(pretrain_config(cfg, work / "pretrain", labels_dir, init.get("depth"), init.get("backbone_type")),
                        PretrainConfig, pre_overrides)
        exports[key] = run_step(f"{key}: pretrain", work / "pretrain", pre, lambda pre=pre: str(run_pretrain(pre)))
        rows.append({"key": key, "name": name, "table1": table1, "pmiou": pm, "pmiou_is_bound": aux_overrides is None,
                     "miou": {}})
        finetune(rows[-1], seed0)  # every strategy's first seed before any later seed
    for seed in cfg.seeds[1:]:
        for row in rows[1:]:
            finetune(row, seed)
    atomic_write_json(out / "strategies.json", {"baseline": baseline, "rows": rows})
    write_results(rows, baseline, counts, args)
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
