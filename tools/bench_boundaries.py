"""Benchmark the classical boundary baselines on a CamVid-layout folder with the BSDS-style evaluation.

For each method (default: sobel, canny, slic) writes one boundary PNG per image
of ``<camvid>/<split>/`` exactly as ``auxseg boundaries baseline`` does, then
scores them against the label maps of ``<camvid>/<split>annot/``
(``auxseg boundaries eval``: ignore index 11 = CamVid's Unlabelled, margin 1,
99 thresholds, tolerance 0.0075 x diagonal, thinned label boundaries). A last
row scores the ground truth's own boundaries, which must give 1.0 (a check of
the evaluation, not a method). Writes a Markdown table with ODS / OIS / AP, the
BSDS-interpolated variants, CPU seconds per image for making the maps and for
evaluating them, the machine and the command.

    OMP_NUM_THREADS=1 python tools/bench_boundaries.py                  # CamVid val, 101 images
    OMP_NUM_THREADS=1 python tools/bench_boundaries.py --limit 5 --report /tmp/b.md   # a timing probe

Without the data folder it prints why and exits 0 without writing anything.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from auxseg.env_report import machine_line  # noqa: E402

DESCRIPTIONS = {
    "sobel": "gradient magnitude after a Gaussian of 1 px, max-normalised per image",
    "canny": "fraction of 16 OpenCV Canny settings (Gaussian 2 px, high threshold at the 0.70..0.98 quantile "
             "of the gradient, low = high / 2) marking the pixel",
    "slic": "SLIC boundaries averaged over 100, 200, 400, 800 superpixels",
    "sobel_nms": "sobel thinned by oriented non-maximum suppression along the gradient",
}
METHODS = tuple(DESCRIPTIONS)


def machine() -> str:
    return machine_line()


def make_maps(method: str, image_dir: Path, rels: list[Path], out: Path) -> float:
    """Write the boundary PNGs of one method; return CPU seconds per image."""
    from auxseg.images import read_rgb, write_label_png
    from boundaries.baselines import BASELINES, to_uint8

    fn = BASELINES[method]
    cpu = 0.0
    for rel in rels:
        rgb = read_rgb(image_dir / rel)
        t0 = time.process_time()
        pb = fn(rgb)
        cpu += time.process_time() - t0
        write_label_png(out / rel.with_suffix(".png"), to_uint8(pb))
    return cpu / len(rels)


def write_truth(gt_dir: Path, rels: list[Path], out: Path, ignore_index: int) -> None:
    """The ground truth's own (thinned, masked) boundaries as predictions: the evaluation must give 1."""
    from auxseg.images import write_label_png
    from boundaries.evaluation import read_label_ground_truth

    for rel in rels:
        bdry, _ = read_label_ground_truth(gt_dir / rel.with_suffix(".png"), ignore_index, 1)
        write_label_png(out / rel.with_suffix(".png"), bdry.astype("uint8") * 255)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--camvid", type=Path, default=Path(os.environ.get("AUXSEG_CAMVID", REPO.parent / "shared" / "data" / "camvid")))
    parser.add_argument("--split", default="val", help="images in <camvid>/<split>/, labels in <camvid>/<split>annot/")
    parser.add_argument("--methods", default="sobel,canny,slic", help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    parser.add_argument("--thresholds", type=int, default=99)
    parser.add_argument("--ignore-index", type=int, default=11, help="CamVid: 11 = Unlabelled")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_boundaries")
    parser.add_argument("--report", type=Path, default=REPO / "bench" / "results" / "boundaries.md")
    args = parser.parse_args(argv)

    image_dir = args.camvid / args.split
    gt_dir = args.camvid / f"{args.split}annot"
    if not image_dir.is_dir() or not gt_dir.is_dir():
        print(f"bench_boundaries: skipped: no CamVid-layout data at {args.camvid} "
              f"(need {args.split}/ and {args.split}annot/; set --camvid or AUXSEG_CAMVID)", file=sys.stderr)
        return 0
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")

    from auxseg.files import atomic_write_json, atomic_write_text
    from auxseg.images import list_images
    from boundaries.evaluation import EvalOptions, evaluate_folder

    rels = list_images(image_dir)
    if args.limit:
        rels = rels[: args.limit]
    if not rels:
        print(f"bench_boundaries: no images in {image_dir}", file=sys.stderr)
        return 1
    # evaluate exactly these images: a ground-truth folder holding only their labels
    work = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    subset_gt = work / "gt"
    for rel in rels:
        dst = subset_gt / rel.with_suffix(".png")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(gt_dir / rel.with_suffix(".png"), dst)

    rows, results = [], {}
    for method in [*methods, "ground truth"]:
        out = work / method.replace(" ", "_")
        print(f"[bench_boundaries] {method} on {len(rels)} images ...", file=sys.stderr)
        if method == "ground truth":
            write_truth(gt_dir, rels, out, args.ignore_index)
            make_s = 0.0
        else:
            make_s = make_maps(method, image_dir, rels, out)
        t0 = time.process_time()
        res = evaluate_folder(out, subset_gt, "labels",
                              EvalOptions(ignore_index=args.ignore_index, ignore_margin=1, n_thresholds=args.thresholds))
        eval_s = (time.process_time() - t0) / len(rels)
        results[method] = {k: res[k] for k in ("ods", "ois", "ap", "bsds")} | {"make_s": make_s, "eval_s": eval_s}
        rows.append(
            f"| {method} | {res['ods']['f']:.3f} | {res['ods']['threshold']:.2f} | {res['ois']['f']:.3f} "
            f"| {res['ap']:.3f} | {res['bsds']['ods_f']:.3f} | {res['bsds']['ap']:.3f} "
            f"| {make_s:.3f} | {eval_s:.2f} |"
        )
    atomic_write_json(work / "results.json", results)

    command = "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "(unset)") + " python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *(argv if argv is not None else sys.argv[1:])])
    lines = [
        f"# Boundary baselines on CamVid {args.split} ({len(rels)} images)",
        "",
        f"Machine: {machine()}. 1-minute load average at the end: {os.getloadavg()[0]:.1f} "
        "(the machine is shared; CPU seconds are less sensitive to that than wall time).",
        f"Command: `{command}`",
        "",
        f"Evaluation (`auxseg boundaries eval`, docs/boundaries.md): label maps of `{args.split}annot/` with "
        f"ignore index {args.ignore_index} and margin 1, thinned seg2bmap boundaries, {args.thresholds} "
        "thresholds, tolerance 0.0075 x diagonal (4.5 px at 480x360), one-to-one matching. ODS / OIS / AP: "
        "ours (no interpolation; AP = area under the PR curve); BSDS: the benchmark's interpolated ODS and "
        "its 101-point AP. Seconds are CPU seconds per image, one thread.",
        "",
        "| method | ODS F | ODS threshold | OIS F | AP | BSDS ODS F | BSDS AP | make s/img | eval s/img |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Methods (default settings of `auxseg boundaries baseline`): "
        + "; ".join(f"{m} = {DESCRIPTIONS[m]}" for m in methods)
        + ". The ground-truth row scores the labels' own boundaries: 1.0 checks the evaluation.",
        "",
    ]
    atomic_write_text(args.report, "\n".join(lines))
    print(args.report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
