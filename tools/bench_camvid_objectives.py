"""Pre-training objectives on CamVid against the pipeline's InfoNCE: metric_l2, qr, rq or any registered one.

Starts from a finished pipeline run (``auxseg pipeline configs/pipeline/camvid_cpu.yaml "seeds=[0,1]"``):
its auxiliary labels, its InfoNCE pre-training and its fine-tunes are the InfoNCE
row, and its segmenter runs are the baseline without pre-training. Each objective
of ``--objectives`` pre-trains with the pipeline's pre-training config, changing
only ``loss.name`` (plus ``--set loss.*`` overrides), and is fine-tuned on the
same labelled images with the same schedule and seeds, exactly as the pipeline
fine-tunes after pre-training.

With ``--soft-labels`` the objectives pre-train on *soft* auxiliary labels instead:
the pipeline's auxiliary-label step rerun with ``soft_labels.enabled=true`` (plus
``--soft-set soft_labels.*`` overrides) into ``OUT/auxlabels_soft``; its K-means is
the pipeline's (same extractor, sample and seed), so its hard label PNGs are
checked against the pipeline's and the table says whether they agree. Objectives
that read priors (``uses_prior``: qr, rq) get ``loss.<name>.use_priors=true``.

The machinery (config derivation, recorded steps that a rerun reuses, the
table's spread) is the strategy benchmark's (``tools/bench_camvid_strategies.py``).

Usage::

    python tools/bench_camvid_objectives.py runs/camvid_cpu --objectives metric_l2 --out runs/camvid_metric_l2 \\
        --results bench/results/camvid_metric_l2.md
    python tools/bench_camvid_objectives.py runs/camvid_cpu --objectives qr rq --soft-labels \\
        --set loss.qr.warmup_iters=50 loss.rq.warmup_iters=50 --out runs/camvid_soft_qr_rq \\
        --results bench/results/camvid_soft_qr_rq.md
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

from auxlabels.config import AuxLabelsConfig  # noqa: E402
from auxseg.config import to_dict  # noqa: E402
from auxseg.io import atomic_write_json, atomic_write_text, list_images, read_json  # noqa: E402
from loop.pipeline import (  # noqa: E402
    auxlabels_config,
    export_init,
    finetune_config,
    last_checkpoint,
    pretrain_config,
    run_step,
)
from pretrain.config import PretrainConfig  # noqa: E402


def objective_overrides(name: str, sets: list[str], soft: bool) -> list[str]:
    """``loss.name`` plus the ``--set`` keys of this objective's section (and use_priors on soft labels)."""
    from pretrain.objectives import OBJECTIVES

    def section(s: str) -> str | None:
        parts = s.split("=", 1)[0].split(".")
        return parts[1] if len(parts) >= 3 and parts[1] in OBJECTIVES else None

    mine = [s for s in sets if section(s) in (None, name)]  # another objective's section is not this one's
    if soft and getattr(OBJECTIVES[name], "uses_prior", False):
        mine.append(f"loss.{name}.use_priors=true")
    return [f"loss.name={name}", *mine]


def same_hard_labels(a: Path, b: Path) -> tuple[int, int]:
    """(images whose label PNGs differ, images compared) between two label folders over a's images."""
    import numpy as np

    from auxseg.contracts.label_folder import read_label_folder
    from auxseg.io import read_label

    fa, fb = read_label_folder(a, verify_hash=False), read_label_folder(b, verify_hash=False)
    rels = read_json(fa.manifest_path)["images"]
    differ = sum(not np.array_equal(read_label(fa.label_path(r)), read_label(fb.label_path(r))) for r in rels)
    return differ, len(rels)


def write_results(rows: list[dict], counts: dict, notes: list[str], args: argparse.Namespace) -> None:
    cmd = " ".join(["python", "tools/bench_camvid_objectives.py", *sys.argv[1:]])
    labels = "soft auxiliary labels (below)" if args.soft_labels else "the pipeline's auxiliary labels"
    lines = [
        "# Pre-training objectives on CamVid against InfoNCE (CPU protocol)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; 1-minute load average when the table "
        f"was written: {os.getloadavg()[0]:.1f}. Command: `{cmd}`, after "
        f"`auxseg pipeline configs/pipeline/camvid_cpu.yaml \"seeds=[0,1]\"` wrote `{args.pipeline}`.",
        f"InfoNCE pre-trains on the pipeline's (hard) auxiliary labels of all {counts['train']} training images; "
        f"each other objective on {labels} of the same images, with the pipeline's pre-training config changing only "
        f"the keys in its row. All are fine-tuned on the same {counts['labelled']} labelled images with the same "
        f"schedule and seeds; mIoU (percent) is on the {counts['val']} validation images. One pre-training per "
        "objective; the spread is over fine-tune seeds only.",
        *notes,
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
    parser.add_argument("--objectives", nargs="+", default=["metric_l2"], help="registered objectives to compare")
    parser.add_argument("--soft-labels", action="store_true", help="pre-train them on soft auxiliary labels")
    parser.add_argument("--soft-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="soft_labels.* overrides of the soft auxiliary labels, e.g. soft_labels.temperature=0.2")
    parser.add_argument("--out", default="runs/camvid_objectives")
    parser.add_argument("--results", default=str(REPO / "bench" / "results" / "camvid_objectives.md"))
    parser.add_argument("--seeds", type=int, nargs="*", help="fine-tune seeds (default: the pipeline's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="loss.* pre-training overrides; loss.<name>.* keys apply to that objective only")
    args = parser.parse_args()

    from pretrain.objectives import OBJECTIVES

    pipeline_dir = Path(args.pipeline).resolve()
    if any(not o.startswith("loss.") for o in args.set):
        print(f"--set: only loss.* keys may differ from the pipeline's pre-training, got {args.set}", file=sys.stderr)
        return 2
    if any(not o.startswith("soft_labels.") for o in args.soft_set):
        print(f"--soft-set: only soft_labels.* keys, got {args.soft_set}", file=sys.stderr)
        return 2
    unknown = [n for n in args.objectives if n not in OBJECTIVES or n == "infonce"]
    if unknown:
        print(f"--objectives: {unknown} not registered or the pipeline's own (known: {', '.join(OBJECTIVES)})",
              file=sys.stderr)
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
    from auxlabels.pipeline import run as run_auxlabels
    from finetune.run import run as run_finetune
    from pretrain.train import run as run_pretrain

    labels_dir, notes = pipeline_dir / "2_auxlabels", []
    if args.soft_labels:
        labels_dir = out / "auxlabels_soft"
        aux = auxlabels_config(cfg, data, labels_dir, last_checkpoint(pipeline_dir / f"1_segmenter_seed{seed0}"))
        aux = _override(aux, AuxLabelsConfig, ["soft_labels.enabled=true", *args.soft_set])
        manifest = run_step("soft auxlabels", labels_dir, aux, lambda: run_auxlabels(aux))
        differ, n = same_hard_labels(pipeline_dir / "2_auxlabels", labels_dir)
        pm = (manifest.get("pmiou") or {}).get("pmiou")
        shown = labels_dir.relative_to(REPO) if labels_dir.is_relative_to(REPO) else labels_dir
        notes.append(f"Soft auxiliary labels: `{shown}` (the pipeline's auxiliary-label step with "
                     f"`soft_labels.enabled=true{''.join(' ' + s for s in args.soft_set)}`; settings "
                     f"`{to_dict(aux.soft_labels)}`); their hard label PNGs differ from the pipeline's on {differ} "
                     f"of {n} images; PmIoU on val {'n/a' if pm is None else f'{pm:.2f}'}.")
    segmenter = recorded(f"1_segmenter_seed{seed0}")["result"]
    init = segmenter["init"]
    for name in args.objectives:
        overrides = objective_overrides(name, args.set, args.soft_labels)
        pre = _override(pretrain_config(cfg, out / name / "pretrain", labels_dir, init.get("depth"),
                                        init.get("backbone_type")), PretrainConfig, overrides)
        export = run_step(f"{name}: pretrain", out / name / "pretrain", pre, lambda pre=pre: str(run_pretrain(pre)))
        row = {"key": name, "name": f"{name} ({', '.join(overrides[1:]) or 'defaults'})",
               "pretrain_s": read_json(out / name / "pretrain" / "step.json").get("elapsed_s"), "miou": {}}
        rows.append(row)
        for seed in cfg.seeds:
            step_dir = out / name / f"finetune_seed{seed}"
            ft = finetune_config(cfg, data, step_dir, export_init(export), seed)  # as the pipeline fine-tunes
            result = run_step(f"{name}: fine-tune (seed {seed})", step_dir, ft, lambda ft=ft: run_finetune(ft))
            row["miou"][str(seed)] = result["mIoU"]
            atomic_write_json(out / "objectives.json", {"rows": rows, "sets": args.set})
            write_results(rows, counts, notes, args)
            print(f"{name} seed {seed}: mIoU {result['mIoU']:.2f}", flush=True)
    atomic_write_json(out / "objectives.json", {"rows": rows, "sets": args.set})
    write_results(rows, counts, notes, args)
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
