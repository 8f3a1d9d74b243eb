"""Feature-view pictures of several extractors side by side on the same CamVid val images (issue measurement a).

Each column is one extractor (``extractor.*`` keys, as ``auxseg featureview`` takes them);
each row one validation image, picked evenly over the sorted val list so that the rows are
not near-identical frames of one sequence. A cell is the feature view of
:func:`auxlabels.feature_view.views_of_image` (standardise, clip, guided filter with the
image as guide, per-image PCA to RGB) at the working size ``--max-side``.

With ``--pipeline DIR`` (a finished ``auxseg pipeline`` run) the three standard columns
come first: a ResNet-18 with random weights (no training at all), the seed-0 segmenter
trained on the labelled 10% (its decoder features, the extractor settings the pipeline's
auxiliary labels were made with) and the backbone the pipeline pre-trained. ``--column
TITLE KEY=VALUE ...`` adds more (e.g. a backbone pre-trained with another objective).

Writes the figure (``--figure``) and a Markdown page (``--out``) with the command, the
images, each column's extractor and seconds per image.

Usage::

    python tools/bench_feature_views.py --pipeline runs/camvid_cpu
    python tools/bench_feature_views.py --pipeline runs/camvid_cpu --column "metric_l2 backbone" \\
        extractor.name=auxseg_export extractor.checkpoint=runs/camvid_metric_l2/pretrain/backbone_torchvision.pth
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

from auxseg.config import ConfigError, load_config, read_yaml_with_bases, to_dict  # noqa: E402
from auxseg.env_report import machine_line  # noqa: E402
from auxseg.errors import AuxsegError  # noqa: E402
from auxseg.files import atomic_write_text  # noqa: E402
from auxseg.images import read_rgb  # noqa: E402


def pipeline_columns(pipeline: Path) -> list[tuple[str, list[str]]]:
    """The three standard columns of a finished pipeline run: random weights, segmenter, pre-trained backbone."""
    aux_config = pipeline / "2_auxlabels" / "config.yaml"
    export = pipeline / "3_pretrain" / "backbone_mmseg.pth"
    for p in (aux_config, export):
        if not p.is_file():
            raise ConfigError(f"--pipeline: {p} not found (is {pipeline} a finished `auxseg pipeline` run?)")
    seg = read_yaml_with_bases(aux_config)["extractor"]
    seg_keys = [f"extractor.{k}={seg[k]}" for k in ("name", "checkpoint", "config", "layer", "stride", "max_side")
                if seg.get(k) is not None]
    # every column sees the images at the size the segmenter (and the fine-tune) works at
    size = [f"extractor.max_side={seg['max_side']}"] if seg.get("max_side") else []
    return [
        ("ResNet-18, random weights (layer4)", ["extractor.name=resnet18", "extractor.random_init=true",
                                               "extractor.layer=layer4", *size]),
        (f"segmenter, labelled 10% ({seg['layer']})", seg_keys),
        ("pre-trained backbone (layer4)", ["extractor.name=auxseg_export", f"extractor.checkpoint={export}",
                                          "extractor.layer=layer4", *size]),
    ]


def pick_images(image_dir: Path, n: int) -> list[Path]:
    """``n`` images spread evenly over the sorted list (the first, the last and between)."""
    from auxseg.images import list_images

    images = [image_dir / rel for rel in list_images(image_dir)]
    if not images:
        raise ConfigError(f"--images: no images in {image_dir}")
    idx = np.unique(np.linspace(0, len(images) - 1, min(n, len(images))).round().astype(int))
    return [images[i] for i in idx]


def views(columns: list[tuple[str, list[str]]], images: list[Path], max_side: int) -> tuple[list, list[dict]]:
    """The view of every image under every column, and per column its extractor and seconds per image."""
    from auxlabels.feature_view import FeatureViewConfig, views_of_image
    from auxlabels.features import build_extractor

    grid = [[read_rgb(p)] for p in images]
    info = []
    for title, keys in columns:
        cfg = load_config(FeatureViewConfig, None, [f"max_side={max_side}", *keys])
        extractor = build_extractor(cfg.extractor).to(cfg.extractor.device)
        t0 = time.perf_counter()
        for row in grid:
            row.append(views_of_image(extractor, row[0], cfg.view_params())["view"])
        seconds = (time.perf_counter() - t0) / len(images)
        described = {k: v for k, v in to_dict(cfg.extractor).items()
                     if k in ("name", "checkpoint", "random_init", "layer", "max_side")}
        if described["checkpoint"]:  # shown relative to the repository where it lies inside it
            path = Path(described["checkpoint"]).resolve()
            described["checkpoint"] = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
        info.append({"title": title, "extractor": described, "seconds": seconds})
        print(f"{title}: {seconds:.2f} s per image", flush=True)
    return grid, info


def figure(grid: list[list[np.ndarray]], titles: list[str], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from auxseg.files import atomic_path

    rows, cols = len(grid), len(grid[0])
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 2.3 * rows), squeeze=False)
    for r, row in enumerate(grid):
        for c, arr in enumerate(row):
            ax = axes[r][c]
            ax.imshow(arr)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(names[r], fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline", type=Path, help="a finished `auxseg pipeline` run: its three standard columns")
    ap.add_argument("--column", nargs="+", action="append", default=[], metavar="TITLE KEY=VALUE",
                    help="one more column: its title, then extractor.* (or feature-view) keys")
    ap.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "camvid" / "val")
    ap.add_argument("--n", type=int, default=4, help="images (rows), spread evenly over the sorted folder")
    ap.add_argument("--max-side", type=int, default=480, help="working size of the views (longer side, px)")
    ap.add_argument("--figure", type=Path, default=REPO / "bench" / "results" / "feature_view_figures" / "camvid_val.png")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "feature_views.md")
    args = ap.parse_args(argv)

    if not args.images.is_dir():
        print(f"skipped: no image folder at {args.images} (CamVid val expected)")
        return 0
    try:
        columns = pipeline_columns(args.pipeline) if args.pipeline else []
        columns += [(c[0], c[1:]) for c in args.column]
        if not columns:
            raise ConfigError("no columns: give --pipeline and/or --column")
        images = pick_images(args.images, args.n)
        grid, info = views(columns, images, args.max_side)
    except AuxsegError as e:  # bad keys, a missing checkpoint, an unreadable image: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    figure(grid, ["image", *[c[0] for c in columns]], [p.name for p in images], args.figure)

    cmd = "python tools/bench_feature_views.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    try:
        fig_link = args.figure.resolve().relative_to(args.out.resolve().parent)
    except ValueError:
        fig_link = args.figure
    lines = [
        "# Feature views on CamVid val",
        "",
        f"Machine: {machine_line()}; 1-minute load average at the end: {os.getloadavg()[0]:.1f}.",
        "Command:",
        "",
        "```bash",
        cmd,
        "```",
        "",
        f"Images (rows): {', '.join(p.name for p in images)} from `{args.images}`, spread evenly over the sorted "
        f"folder. Each cell is `auxseg featureview`'s view at {args.max_side} px (standardise, clip 5, guided "
        "filter radius 5 and eps 0.01 with the image as guide, per-image PCA to RGB, min-max): pixels the "
        "extractor finds alike get alike colours; colours are per image and per column, so only the grouping "
        "can be compared, not the hues.",
        "",
        f"![feature views]({fig_link})",
        "",
        "| column | extractor | seconds / image |",
        "|---|---|---:|",
        *[f"| {c['title']} | `{c['extractor']}` | {c['seconds']:.2f} |" for c in info],
        "",
    ]
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
