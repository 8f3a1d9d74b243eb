"""Grid PNG of image / auxiliary labels / ground truth overlays for an auxiliary-label folder.

One row per image: the image, its auxiliary labels blended over it (ignore =
black), and the ground truth blended over it when the run had ground truth
(or --gt-dir is given). With ``--match`` the auxiliary labels are recoloured
with the colour of the class each cluster is matched to in pmiou.json, so
the two overlays can be compared by eye.

    python tools/visualize_auxlabels.py runs/auxlabels_camvid_r18 --n 6 --out grid.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from auxseg.colours import blend, colourise, palette
from auxseg.images import read_label, read_rgb, write_rgb_png


def _resize(img: np.ndarray, width: int, nearest: bool = False) -> np.ndarray:
    h, w = img.shape[:2]
    size = (width, max(1, round(h * width / w)))
    return np.asarray(Image.fromarray(img).resize(size, Image.NEAREST if nearest else Image.BILINEAR))


def render(folder: Path, n: int, width: int, alpha: float, gt_dir: Path | None, match: bool, seed: int) -> np.ndarray:
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("format") != "auxseg.auxlabels/1":
        raise ValueError(f"{folder / 'manifest.json'}: not an auxiliary-label manifest")
    cfg = manifest.get("config") or {}
    image_root = Path(manifest["image_root"])
    images = manifest["images"]
    gt_roots = []
    if gt_dir is not None:
        gt_roots = [(image_root, gt_dir)]
    else:  # the run's own ground truth: gt_dir for image_dir, eval_gt_dir for eval_image_dir
        for img_key, gt_key in (("image_dir", "gt_dir"), ("eval_image_dir", "eval_gt_dir")):
            if cfg.get(img_key) and cfg.get(gt_key):
                gt_roots.append((Path(cfg[img_key]).resolve(), Path(cfg[gt_key]).resolve()))

    def gt_path(rel: str) -> Path | None:
        full = image_root / rel
        for img_root, root in gt_roots:
            try:
                cand = root / full.relative_to(img_root).with_suffix(".png")
            except ValueError:
                continue
            if cand.is_file():
                return cand
        return None

    with_gt = [r for r in images if gt_path(r) is not None]
    pool = with_gt or images  # prefer images that have ground truth
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False))
    k = int(manifest["num_labels"])
    m = int(cfg.get("num_classes") or 0)
    class_colours = palette(max(m, 1), seed=1)
    aux_colours = palette(k, seed=2)
    if match and (folder / "pmiou.json").is_file():
        report = json.loads((folder / "pmiou.json").read_text())
        names = list(report["matching"])
        for ci, name in enumerate(names):
            cluster = report["matching"][name]
            if cluster is not None and cluster < k:
                aux_colours[cluster] = class_colours[ci]
    gt_ignore = set(cfg.get("gt_ignore_values") or [255])
    rows = []
    for i in chosen:
        rel = pool[i]
        img = read_rgb(image_root / rel)
        aux = read_label(folder / "labels" / Path(rel).with_suffix(".png"))
        tiles = [img, blend(img, colourise(aux, aux_colours, {manifest["ignore_index"]}), alpha)]
        gp = gt_path(rel)
        if gp is not None:
            tiles.append(blend(img, colourise(read_label(gp), class_colours, gt_ignore), alpha))
        elif with_gt:
            tiles.append(np.zeros_like(img))
        row = np.concatenate([_resize(t, width) for t in tiles], axis=1)
        rows.append(row)
    width_max = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width_max - r.shape[1]), (0, 0))) for r in rows]
    grid = np.concatenate(rows, axis=0)
    header = Image.new("RGB", (grid.shape[1], 18), (255, 255, 255))
    titles = ["image", f"auxiliary labels (K={k})", "ground truth"]
    draw = ImageDraw.Draw(header)
    for j, title in enumerate(titles[: grid.shape[1] // width]):
        draw.text((j * width + 4, 3), title, fill=(0, 0, 0))
    return np.concatenate([np.asarray(header), grid], axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="auxiliary-label folder (holds manifest.json)")
    parser.add_argument("--out", type=Path, help="output PNG (default: <folder>/grid.png)")
    parser.add_argument("--n", type=int, default=6, help="number of images (rows)")
    parser.add_argument("--width", type=int, default=320, help="tile width in pixels")
    parser.add_argument("--alpha", type=float, default=0.6, help="overlay opacity")
    parser.add_argument("--gt-dir", type=Path, help="ground truth folder (default: the run's own)")
    parser.add_argument("--match", action="store_true", help="colour clusters like their Hungarian-matched class")
    parser.add_argument("--seed", type=int, default=0, help="which images are picked")
    args = parser.parse_args(argv)
    grid = render(args.folder, args.n, args.width, args.alpha, args.gt_dir, args.match, args.seed)
    out = args.out or args.folder / "grid.png"
    write_rgb_png(out, grid)
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
