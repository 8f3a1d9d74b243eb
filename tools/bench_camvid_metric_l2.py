"""Pre-training objective on CamVid: metric_l2 (semantic soft segmentation's L2 metric loss) against InfoNCE.

Starts from a finished pipeline run (``auxseg pipeline configs/pipeline/camvid_cpu.yaml "seeds=[0,1]"``):
its auxiliary labels, its InfoNCE pre-training and its fine-tunes are the InfoNCE
row, and its segmenter runs are the baseline without pre-training. The
``metric_l2`` row pre-trains on the same auxiliary labels with the pipeline's
pre-training config, changing only ``loss.name`` (plus any ``--set`` overrides of
its ``loss.metric_l2`` section), and is fine-tuned on the same labelled images
with the same schedule and seeds, exactly as the pipeline fine-tunes after
pre-training. The machinery (config derivation, recorded steps that a rerun
reuses, the table's spread) is the strategy benchmark's
(``tools/bench_camvid_strategies.py``).

Usage::

    python tools/bench_camvid_metric_l2.py runs/camvid_cpu --out runs/camvid_metric_l2 \\
        --results bench/results/camvid_metric_l2.md
    python tools/bench_camvid_metric_l2.py runs/camvid_cpu --set loss.metric_l2.positives=per_image ...
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from bench_camvid_strategies import _mean_spread, _override, open_pipeline_run, step_record  # noqa: E402

from auxseg.contracts.backbone import DECODER_FILENAME  # noqa: E402
from auxseg.io import atomic_write_json, atomic_write_text, list_images, read_json  # noqa: E402
from finetune.config import InitConfig  # noqa: E402
from loop.pipeline import finetune_config, pretrain_config, run_step  # noqa: E402
from pretrain.config import PretrainConfig  # noqa: E402

OBJECTIVE_OVERRIDES = ["loss.name=metric_l2"]


def write_results(rows: list[dict], counts: dict, overrides: list[str], args: argparse.Namespace) -> None:
    cmd = " ".join(["python", "tools/bench_camvid_metric_l2.py", *sys.argv[1:]])
    lines = [
        "# Pre-training objective on CamVid: metric_l2 against InfoNCE (CPU protocol)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores. Command: `{cmd}`, after "
        f"`auxseg pipeline configs/pipeline/camvid_cpu.yaml \"seeds=[0,1]\"` wrote `{args.pipeline}`.",
        f"Both objectives pre-train on the pipeline's auxiliary labels of all {counts['train']} training images with "
        f"the pipeline's pre-training config (metric_l2 changes only `{' '.join(overrides)}`) and are fine-tuned on "
        f"the same {counts['labelled']} labelled images with the same schedule and seeds. mIoU (percent) is on the "
        f"{counts['val']} validation images. One pre-training per objective; the spread is over fine-tune seeds only.",
        "",
        "| pre-training | mIoU per fine-tune seed | mIoU mean ± sd | pre-training time (s) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        per_seed = ", ".join(f"{r['miou'][s]:.2f}" for s in sorted(r["miou"], key=int)) or "not run"
        seconds = "-" if r.get("pretrain_s") is None else f"{r['pretrain_s']:.0f}"
        lines.append(f"| {r['name']} | {per_seed} | {_mean_spread(list(r['miou'].values()))} | {seconds} |")
    atomic_write_text(Path(args.results), "\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="work_dir of a finished `auxseg pipeline` run (e.g. runs/camvid_cpu)")
    parser.add_argument("--out", default="runs/camvid_metric_l2")
    parser.add_argument("--results", default=str(REPO / "bench" / "results" / "camvid_metric_l2.md"))
    parser.add_argument("--seeds", type=int, nargs="*", help="fine-tune seeds (default: the pipeline's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra pre-training overrides for the metric_l2 row, e.g. loss.metric_l2.form=code")
    args = parser.parse_args()

    pipeline_dir = Path(args.pipeline).resolve()
    overrides = OBJECTIVE_OVERRIDES + list(args.set)
    if any(not o.startswith("loss.") for o in overrides):
        print(f"--set: only loss.* keys may differ from the pipeline's pre-training, got {args.set}", file=sys.stderr)
        return 2
    cfg, data = open_pipeline_run(pipeline_dir, args.seeds)
    out = Path(args.out).resolve()

    def recorded(step: str) -> dict:
        return step_record(pipeline_dir, step)

    seed0 = cfg.seeds[0]
    split = (pipeline_dir / f"1_segmenter_seed{seed0}" / "split.txt").read_text().split()
    counts = {"train": len(list_images(data.root / "train")), "val": len(list_images(data.root / "val")),
              "labelled": len(split)}
    rows = [
        {"key": "baseline", "name": "none (fine-tune only, baseline)", "pretrain_s": None,
         "miou": {str(s): recorded(f"1_segmenter_seed{s}")["result"]["mIoU"] for s in cfg.seeds}},
        {"key": "infonce", "name": "InfoNCE (the pipeline's)", "pretrain_s": recorded("3_pretrain").get("elapsed_s"),
         "miou": {str(s): recorded(f"4_finetune_seed{s}")["result"]["mIoU"] for s in cfg.seeds}},
    ]
    from finetune.run import run as run_finetune
    from pretrain.train import run as run_pretrain

    segmenter = recorded(f"1_segmenter_seed{seed0}")["result"]
    init = segmenter["init"]
    pre = _override(pretrain_config(cfg, out / "pretrain", pipeline_dir / "2_auxlabels", init.get("depth"),
                                    init.get("backbone_type")), PretrainConfig, overrides)
    export = run_step("metric_l2: pretrain", out / "pretrain", pre, lambda: str(run_pretrain(pre)))
    row = {"key": "metric_l2", "name": "metric_l2 (" + ", ".join(overrides[1:] or ["defaults"]) + ")",
           "pretrain_s": read_json(out / "pretrain" / "step.json").get("elapsed_s"), "miou": {}}
    rows.append(row)
    decoder = Path(export).parent / DECODER_FILENAME  # as the pipeline: the pre-trained decoder when there is one
    for seed in cfg.seeds:
        step_dir = out / f"finetune_seed{seed}"
        ft = finetune_config(cfg, data, step_dir, InitConfig(type="export", checkpoint=export,
                                                             decoder=str(decoder) if decoder.is_file() else None), seed)
        result = run_step(f"metric_l2: fine-tune (seed {seed})", step_dir, ft, lambda ft=ft: run_finetune(ft))
        row["miou"][str(seed)] = result["mIoU"]
        atomic_write_json(out / "metric_l2.json", {"rows": rows, "overrides": overrides})
        write_results(rows, counts, overrides, args)
        print(f"metric_l2 seed {seed}: mIoU {result['mIoU']:.2f}", flush=True)
    atomic_write_json(out / "metric_l2.json", {"rows": rows, "overrides": overrides})
    write_results(rows, counts, overrides, args)
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
