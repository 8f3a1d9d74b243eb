"""Write (or check) deterministic split files of the labelled training images.

    python tools/make_splits.py --images ../data/camvid/train --suffix .png --out splits/camvid \
        --splits 10% 20% 100% 100img --seed 0
    python tools/make_splits.py ... --check        # verify committed files, write nothing

Each split file lists one image stem per line (finetune/splits.py explains the
selection: images ranked by sha256(f"{seed}:{stem}"), first k taken, sorted).
``splits.json`` next to them records the image count, a hash of the full stem
list, the seed and each file's hash, so a different copy of the dataset is
caught instead of silently producing another subset. An existing file whose
content would change is an error unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from auxseg.files import atomic_write_text  # noqa: E402
from finetune.splits import SplitError, SplitSpec, list_stems, select, split_text  # noqa: E402

MANIFEST_FORMAT = "auxseg.splits/1"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def plan(images: Path, suffix: str, names: list[str], seed: int) -> tuple[dict[str, str], dict]:
    """The split files (file name -> text) and the manifest for these options."""
    stems = list_stems(images, suffix)
    files: dict[str, str] = {}
    entries: dict[str, dict] = {}
    for name in names:
        spec = SplitSpec.parse(name, seed=seed)
        chosen = select(stems, spec)
        text = split_text(chosen)
        file_name = f"{spec.name()}.txt"
        files[file_name] = text
        entries[file_name] = {
            "spec": name, "fraction": spec.fraction, "num_images": len(chosen), "sha256": text_sha256(text),
        }
    manifest = {
        "format": MANIFEST_FORMAT,
        "image_folder": images.name,  # the folder name only: the manifest must not depend on where data lives
        "img_suffix": suffix,
        "num_available": len(stems),
        "all_stems_sha256": text_sha256(split_text(stems)),
        "seed": seed,
        "selection": "rank images by sha256(f'{seed}:{stem}'), take the first k = round(fraction * N) "
                     "(at least 1) or N images; write them sorted",
        "files": entries,
    }
    files["splits.json"] = json.dumps(manifest, indent=2) + "\n"
    return files, manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, type=Path, help="folder of the labelled training images")
    parser.add_argument("--suffix", default=".png", help="image file suffix, e.g. .png, .jpg, _leftImg8bit.png")
    parser.add_argument("--out", required=True, type=Path, help="folder for the split files")
    parser.add_argument("--splits", nargs="+", default=["10%", "20%", "100%"],
                        help="'10%%' (fraction) or '100img' (number of images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="only verify that existing files match")
    parser.add_argument("--force", action="store_true", help="overwrite files whose content differs")
    args = parser.parse_args(argv)

    try:
        files, manifest = plan(args.images, args.suffix, args.splits, args.seed)
    except SplitError as err:
        print(f"make_splits: {err}", file=sys.stderr)
        return 2
    differ = [n for n, t in files.items() if (args.out / n).exists() and (args.out / n).read_text() != t]
    missing = [n for n in files if not (args.out / n).exists()]
    if args.check:
        for name in differ:
            print(f"make_splits: {args.out / name} differs from what {args.images} and seed {args.seed} give",
                  file=sys.stderr)
        for name in missing:
            print(f"make_splits: {args.out / name} is missing", file=sys.stderr)
        if differ or missing:
            return 1
        print(f"{len(files)} files in {args.out} match ({manifest['num_available']} images, seed {args.seed})")
        return 0
    if differ and not args.force:
        print(
            f"make_splits: refusing to change {', '.join(str(args.out / n) for n in differ)}: the images or "
            "options differ from those that made them (wrong dataset copy?). Use --force to replace them.",
            file=sys.stderr,
        )
        return 1
    for name, text in files.items():
        atomic_write_text(args.out / name, text)
    for name, entry in manifest["files"].items():
        print(f"{args.out / name}: {entry['num_images']} of {manifest['num_available']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
