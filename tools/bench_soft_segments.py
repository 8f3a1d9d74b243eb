"""Boundary accuracy and cost of semantic soft segments on CamVid val (issue measurement b).

For the first ``--n`` CamVid val images (all 101 by default): ``auxseg softsegments``
(the settings of ``--set key=value`` overrides, e.g. ``features=colour`` or an
extractor), the boundaries of the argmax of its layers against the boundaries
of the ground-truth labels, scored BSDS-style with :mod:`boundaries.evaluation`
(ODS / OIS F, AP; tolerance 0.0075 of the diagonal; Unlabelled (11) and its
8 neighbours left out; ground truth thinned). The same score for SLIC
superpixels at ``--slic`` segment counts (fast-slic, compactness 10, full
resolution) and, with ``--kmeans-folder``, for the label PNGs of an
auxiliary-label folder (e.g. the K-means output of ``auxseg auxlabels`` on
CamVid val; matched by file name, its ignore value leaves no boundary).
A hard segmentation's boundaries are a binary map, so ODS = OIS and AP is
the area under its single precision-recall point.

Seconds per image: the soft segmentation (semantic features + graph +
eigenvectors + sparsification + upsampling; image reading and writing
excluded; wall and this process's CPU time), and SLIC's wall time. Run with
``OMP_NUM_THREADS=1`` for one-thread numbers.

Usage::

    python tools/bench_soft_segments.py --n 5 --set features=colour
    python tools/bench_soft_segments.py --kmeans-folder runs/auxlabels_camvid --set extractor.name=resnet50 \\
        --set extractor.checkpoint=weights/resnet50.pth
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from auxseg.config import load_config, to_dict  # noqa: E402
from auxseg.contracts.label_folder import read_label_folder  # noqa: E402
from auxseg.env_report import machine_line  # noqa: E402
from auxseg.files import atomic_write_text  # noqa: E402
from auxseg.images import read_label, read_rgb  # noqa: E402
from boundaries.evaluation import (  # noqa: E402
    evaluate_segmentation,
    read_label_ground_truth,
    summarize,
    thresholds,
)

CAMVID_IGNORE = 11


def machine() -> str:
    return f"{machine_line()}, numpy {np.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"


class Scorer:
    """Accumulates per-image boundary counts of one method against the CamVid ground truth."""

    def __init__(self):
        self.ts = thresholds(1)  # a binary map: every threshold gives the same map
        self.counts = []
        self.seconds = []

    def add(self, seg: np.ndarray, gt: tuple[np.ndarray, np.ndarray], ignore_index: int | None = None,
            seconds: float | None = None) -> None:
        gt_bdry, valid = gt
        self.counts.append(evaluate_segmentation(seg, [gt_bdry], valid, ignore_index))
        if seconds is not None:
            self.seconds.append(seconds)

    def row(self, name: str, cpu: float | None = None) -> str:
        s = summarize(np.stack(self.counts), self.ts)
        sec = f"{np.mean(self.seconds):.2f}" if self.seconds else "n/a"
        if cpu is not None:
            sec += f" ({cpu:.2f} CPU)"
        return (f"| {name} | {len(self.counts)} | {s.ods_f:.3f} | {s.ods_p:.3f} | {s.ods_r:.3f} | {s.ois_f:.3f} | "
                f"{s.ap:.3f} | {sec} |")


def kmeans_labels(folder: Path) -> tuple[dict[str, Path], int]:
    """Label PNG per image stem of an auxiliary-label folder, and its ignore value."""
    f = read_label_folder(folder, verify_hash=False)
    m_images = __import__("json").loads(f.manifest_path.read_text())["images"]  # train and eval images alike
    return {Path(rel).stem: f.label_path(rel) for rel in m_images}, f.ignore_index


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "camvid")
    ap.add_argument("--n", type=int, default=None, help="first N val images (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="key=value",
                    help="softsegments config override (repeatable), e.g. features=colour, soft.working_side=200")
    ap.add_argument("--slic", default="5,100,500", help="SLIC segment counts, comma-separated")
    ap.add_argument("--kmeans-folder", type=Path, default=None, help="an auxiliary-label folder to score as well")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench_soft_segments",
                    help="where the soft-segment label folder is written")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soft_segments.md")
    ap.add_argument("--note", default="", help="a sentence added under the header (e.g. how --kmeans-folder was made)")
    args = ap.parse_args(argv)

    val, annot = args.data / "val", args.data / "valannot"
    if not val.is_dir() or not annot.is_dir():
        print(f"skipped: CamVid not found at {args.data} (expected val/ and valannot/)")
        return 0
    all_names = sorted(p.name for p in val.glob("*.png"))
    names = all_names[: args.n]
    args.work.mkdir(parents=True, exist_ok=True)
    listing = args.work / "images.txt"
    listing.write_text("".join(f"{n}\n" for n in names))

    from auxlabels.soft_segments_run import SoftSegmentsConfig, run
    from auxlabels.superpixels import compute_superpixels

    cfg = load_config(SoftSegmentsConfig, None, [f"image_dir={val}", f"image_list={listing}",
                                                  f"out_dir={args.work / 'soft'}", "progress=true", *args.set])
    t0 = time.perf_counter()
    manifest = run(cfg)
    wall = time.perf_counter() - t0
    folder = read_label_folder(args.work / "soft")
    per_image = manifest["seconds_per_image"]

    gts = {n: read_label_ground_truth(annot / n, CAMVID_IGNORE, ignore_margin=1, thin=True) for n in names}
    soft = Scorer()
    for n in names:
        soft.add(read_label(folder.label_path(n)), gts[n], seconds=per_image)
    slic_counts = [int(c) for c in args.slic.split(",") if c.strip()]
    slics = {c: Scorer() for c in slic_counts}
    for n in names:
        image = read_rgb(val / n)
        for c, scorer in slics.items():
            t = time.perf_counter()
            seg = compute_superpixels(image, c, 10.0, "fast_slic")
            scorer.add(seg, gts[n], seconds=time.perf_counter() - t)
    rows = [soft.row(f"soft segments (K={cfg.soft.segments}, argmax)", manifest["cpu_seconds_per_image"])]
    rows += [scorer.row(f"SLIC, {c} segments (fast-slic, compactness 10)") for c, scorer in slics.items()]
    if args.kmeans_folder is not None:
        labels, ignore = kmeans_labels(args.kmeans_folder)
        km = Scorer()
        for n in names:
            if Path(n).stem in labels:
                km.add(read_label(labels[Path(n).stem]), gts[n], ignore_index=ignore)
        if km.counts:
            rows.append(km.row(f"auxiliary labels `{args.kmeans_folder}`"))
        else:
            print(f"warning: {args.kmeans_folder} labels none of the {len(names)} images", file=sys.stderr)

    phases = manifest["timings"]
    n_done = len(manifest["images"])
    phase_line = ", ".join(f"{k} {v / n_done:.2f}" for k, v in phases.items() if k != "total_wall")
    cmd = "python tools/bench_soft_segments.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    soft_cfg = to_dict(cfg.soft)
    text = "\n".join([
        "# Soft segments on CamVid val: boundary accuracy and cost",
        "",
        f"Machine: {machine()}. 1-minute load average at the end: {os.getloadavg()[0]:.1f} (the machine may be "
        "shared with other jobs; above the core count, wall times are inflated and CPU times are the fairer figure).",
        "Command:",
        "",
        "```bash",
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} {cmd}" if "OMP_NUM_THREADS" in os.environ else cmd,
        "```",
        "",
        f"Images: the first {len(names)} of CamVid val (480x360); ground truth: the label maps' boundaries "
        "(thinned), Unlabelled and its 8 neighbours left out; tolerance 0.0075 x diagonal (4.5 px).",
        *([f"**A check on {len(names)} of the {len(all_names)} val images, not the full measurement.**"]
          if len(names) < len(all_names) else []),
        *([args.note] if args.note else []),
        f"Semantic features: {manifest['semantic_features']}"
        + (f" ({manifest['extractor'].get('name')}, {manifest['extractor'].get('layer')}, "
           f"random_init={manifest['extractor'].get('random_init')})" if manifest["extractor"] else "") + ".",
        f"Soft segments: working side {soft_cfg['working_side']} px, {soft_cfg['eigenvectors']} eigenvectors, "
        f"{soft_cfg['initial_layers']} initial layers, {soft_cfg['segments']} segments; wall time of the run "
        f"{wall:.1f} s (with reading and writing).",
        "",
        "| method | images | ODS F | P | R | OIS F | AP | seconds / image (wall; CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "A hard segmentation gives a binary boundary map: ODS and OIS use the same single threshold and AP is "
        "the area under one precision-recall point (boundaries.evaluation.average_precision).",
        f"Soft-segment seconds per image by phase: {phase_line}.",
        "",
    ])
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
