"""Write the *_gtFine_labelTrainIds.png files mmseg's CityscapesDataset reads (19 classes, 255 = ignore).

    python tools/prepare_cityscapes.py data/cityscapes/gtFine

Kept for old instructions; `auxseg data prepare cityscapes data/cityscapes` does the same
(finetune/prepare.py) and then checks the whole folder.

Reads the official *_gtFine_labelIds.png files (gtFine_trainvaltest.zip) and maps
label ids to train ids with the official table (finetune/prepare.py); no
cityscapesScripts needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finetune.prepare import convert_cityscapes_labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gt_root", type=Path, help="the gtFine folder (or one split of it)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing labelTrainIds files")
    args = parser.parse_args(argv)
    try:
        n = convert_cityscapes_labels(args.gt_root, overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as err:
        print(f"prepare_cityscapes: {err}", file=sys.stderr)
        return 1
    print(f"wrote {n} labelTrainIds files under {args.gt_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
