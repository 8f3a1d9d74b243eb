"""PmIoU ablation on CamVid val in the shape of supplement Table 1 (issue: CamVid benchmark, part a).

Runs the auxlabels stage with one setting changed at a time and reports the
proxy mIoU of the validation images' auxiliary labels:

- #1 same pixel (no labels): every pixel is its own label. Not run: with
  one-to-one matching each class can match at most one pixel, so PmIoU is at
  most mean_c 1/n_c, computed here exactly from the ground truth.
- #2 same superpixel: every superpixel its own label (``clusterer=superpixel``).
- K-means without / with the superpixel vote; outliers 0 / 5 / 10 %;
  K = 1.0 / 1.5 / 2.0 x M; DBSCAN; a random-initialised ResNet-18 vs the
  segmenter fine-tuned on the labelled subset (the pipeline's step 1).

K-means is fitted on a seeded subset of the *training* images; PmIoU is
computed on all validation images. Nothing is tuned on validation.

Usage (the CPU protocol, docs/benchmarks.md)::

    python tools/bench_camvid_pmiou.py --segmenter runs/camvid_cpu/1_segmenter_seed0 \\
        --out runs/camvid_pmiou --results bench/results/camvid_pmiou.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from auxlabels.config import AuxLabelsConfig  # noqa: E402
from auxlabels.metrics import same_pixel_bound  # noqa: E402
from auxlabels.pipeline import run as run_auxlabels  # noqa: E402
from auxseg.config import load_config  # noqa: E402
from auxseg.files import atomic_write_json, atomic_write_text  # noqa: E402
from auxseg.images import list_images  # noqa: E402
from loop.pipeline import last_checkpoint  # noqa: E402

CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist"]

# (name, Table 1 row it mirrors, overrides on the base config)
VARIANTS = [
    ("#2 same superpixel", "2", ["clusterer=superpixel"]),
    ("K-means, no vote", "3", ["superpixels.enabled=false"]),
    ("K-means + vote (default: K=1.5M, 5% outliers)", "4/9", []),
    ("K-means + vote (default), K-means seed 1", "noise", ["kmeans.seed=1"]),
    ("K-means + vote (default), K-means seed 2", "noise", ["kmeans.seed=2"]),
    ("K-means + vote, 0% outliers", "Tab. 4", ["outliers.enabled=false"]),
    ("K-means + vote, 10% outliers", "Tab. 4", ["outliers.fraction=0.10"]),
    ("K-means + vote, K = 1.0 M", "Tab. 2", ["kmeans.k_factor=1.0"]),
    ("K-means + vote, K = 2.0 M", "Tab. 2", ["kmeans.k_factor=2.0"]),
    ("DBSCAN + vote", "5", ["clusterer=dbscan"]),
    ("random-init ResNet-18 (layer4), K-means + vote", "-", [
        "extractor.name=resnet18", "extractor.random_init=true", "extractor.checkpoint=null",
        "extractor.layer=layer4"]),
]


def train_subset(train_dir: Path, count: int, seed: int, path: Path) -> Path:
    """Write a seeded list of ``count`` training images (relative paths) and return its path."""
    images = [str(p) for p in list_images(train_dir)]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(images, size=min(count, len(images)), replace=False).tolist())
    atomic_write_text(path, "\n".join(chosen) + "\n")
    return path


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value >= 0.01 else f"{value:.1e}"


def write_results(rows: list[dict], args: argparse.Namespace) -> None:
    """The Markdown results table, with machine and command."""
    cmd = " ".join(["python", "tools/bench_camvid_pmiou.py", *sys.argv[1:]])
    lines = [
        "# PmIoU ablation on CamVid val (supplement Table 1 shape)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU. Command: `{cmd}`.",
        f"Extractor unless stated: the segmenter of `{args.segmenter}` (DeepLabV3 ResNet-18 fine-tuned on the "
        "labelled 10% of CamVid train, decoder features). K-means fitted on "
        f"{args.fit_images} seeded training images; PmIoU on all 101 validation images (percent; Hungarian "
        "one-to-one matching, and the many-to-one majority diagnostic).",
        "",
        "| labelling strategy | Table 1 row | K | PmIoU | majority mIoU | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['table1']} | {r['k'] or '-'} | {_fmt(r['pmiou'])} | {_fmt(r['majority'])} "
                     f"| {r['seconds']} |")
    atomic_write_text(Path(args.results), "\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--camvid", default=str(REPO.parent / "shared" / "data" / "camvid"))
    parser.add_argument("--segmenter", required=True,
                        help="work_dir of a fine-tune run (the pipeline's 1_segmenter_seed0) used as extractor")
    parser.add_argument("--base", default=str(REPO / "configs" / "auxlabels" / "camvid_segmenter_cpu.yaml"))
    parser.add_argument("--out", default="runs/camvid_pmiou")
    parser.add_argument("--results", default=str(REPO / "bench" / "results" / "camvid_pmiou.md"))
    parser.add_argument("--fit-images", type=int, default=120, help="training images the K-means fit samples")
    parser.add_argument("--only", nargs="*", help="run only variants whose name contains one of these")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite --results from <out>/pmiou_ablation.json without running anything")
    args = parser.parse_args()
    if args.render_only:
        write_results(json.loads((Path(args.out) / "pmiou_ablation.json").read_text()), args)
        return 0

    camvid = Path(args.camvid)
    if not (camvid / "val").is_dir():
        print(f"CamVid not found at {camvid}; pass --camvid", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    segmenter_ckpt = last_checkpoint(Path(args.segmenter).resolve())
    subset = train_subset(camvid / "train", args.fit_images, 0, out / "train_subset.txt")
    common = [
        f"image_dir={camvid / 'train'}", f"image_list={subset}",
        f"eval_image_dir={camvid / 'val'}", f"eval_gt_dir={camvid / 'valannot'}",
        "num_classes=11", f"class_names={json.dumps(CAMVID_CLASSES)}", "gt_ignore_values=[11]",
        f"extractor.checkpoint={segmenter_ckpt}", "progress=false",
    ]
    rows = []
    bound = same_pixel_bound(camvid / "valannot", [11], 11)
    rows.append({"name": "#1 same pixel (bound, not run)", "table1": "1", "pmiou": bound, "majority": None,
                 "k": None, "seconds": 0.0})
    for name, row, overrides in VARIANTS:
        if args.only and not any(s in name for s in args.only):
            continue
        slug = "".join(c if c.isalnum() else "_" for c in name)[:48]
        cfg = load_config(AuxLabelsConfig, args.base, [*common, f"out_dir={out / slug}", *overrides])
        start = time.time()
        manifest = run_auxlabels(cfg)
        pm = manifest.get("pmiou") or {}
        rows.append({"name": name, "table1": row, "pmiou": pm.get("pmiou"), "majority": pm.get("majority_miou"),
                     "k": manifest["num_labels"], "seconds": round(time.time() - start, 1)})
        print(f"{name}: PmIoU {pm.get('pmiou'):.2f}  majority {pm.get('majority_miou'):.2f}  "
              f"K={manifest['num_labels']}  {rows[-1]['seconds']} s", flush=True)

    previous = out / "pmiou_ablation.json"
    if args.only and previous.is_file():  # keep the rows of variants not rerun, in VARIANTS order
        fresh = {r["name"]: r for r in rows}
        kept = {r["name"]: r for r in json.loads(previous.read_text())}
        kept.update(fresh)
        order = ["#1 same pixel (bound, not run)", *[v[0] for v in VARIANTS]]
        rows = [kept[name] for name in order if name in kept]
    atomic_write_json(previous, rows)
    write_results(rows, args)
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
