"""Convert the official NYUv2 labelled release into PNGs for NYUv2Dataset (40 classes).

    python tools/prepare_nyuv2.py --labeled nyu_depth_v2_labeled.mat --splits splits.mat \
        --mapping classMapping40.mat --out data/nyuv2

Expected public files (docs/finetune.md, "NYUv2"):
  nyu_depth_v2_labeled.mat  the labelled subset (1,449 images), MATLAB v7.3 / HDF5
  splits.mat                trainNdxs (795) / testNdxs (654), 1-based
  classMapping40.mat        Gupta et al.'s 894 -> 40 class mapping (variable mapClass)

Kept for old instructions; `auxseg data prepare nyuv2 DOWNLOADS --out data/nyuv2` does the same
(finetune/nyuv2.py) and then checks the result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finetune.nyuv2 import NYUv2FormatError, convert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labeled", required=True, type=Path, help="nyu_depth_v2_labeled.mat")
    parser.add_argument("--splits", required=True, type=Path, help="splits.mat (trainNdxs, testNdxs)")
    parser.add_argument("--mapping", required=True, type=Path, help="classMapping40.mat (mapClass), or .txt/.npy")
    parser.add_argument("--out", required=True, type=Path, help="output folder (data_root of the NYUv2 configs)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite files that already exist")
    args = parser.parse_args(argv)
    try:
        manifest = convert(args.labeled, args.mapping, args.splits, args.out, overwrite=args.overwrite)
    except NYUv2FormatError as err:
        print(f"prepare_nyuv2: {err}", file=sys.stderr)
        return 1
    print(f"{manifest['counts']['train']} train / {manifest['counts']['test']} test images in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
