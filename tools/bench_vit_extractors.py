"""Speed and peak memory of the DINOv2 extractors against ResNet-50, on this CPU, at CamVid size (480 x 360).

Random weights (explicitly: speed does not depend on them), a few images, the
extractor's forward pass only (normalisation, padding, tokens, reshaping; not
the working-stride resize, K-means or superpixels). Each extractor runs in its
own process, so each peak RSS is that extractor's alone. Writes (or replaces)
the section "Foundation-model extractors" of the results file, with the
machine, the load and the command.

    python tools/bench_vit_extractors.py --images 20 --rounds 3 --camvid ../shared/data/camvid
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Foundation-model extractors (speed and memory on this CPU)"
# label -> the extractor config (auxlabels.config.ExtractorConfig keys)
MODELS = {
    "resnet50": {"name": "resnet50", "layer": "layer4"},
    "dinov2_vits14": {"name": "dinov2", "arch": "vits14"},
    "dinov2_vitb14": {"name": "dinov2", "arch": "vitb14"},
    "dinov2_vits14_ts8": {"name": "dinov2", "arch": "vits14", "token_stride": 8},
    "dinov2_vits14_ts8_2048": {"name": "dinov2", "arch": "vits14", "token_stride": 8},
}
# labels timed on random pixels of another size (H, W) instead of CamVid frames: the memory bound
LARGE = {"dinov2_vits14_ts8_2048": (1024, 2048)}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(label: str, n: int, size_hw: tuple[int, int], camvid: Path | None, threads: int) -> dict:
    """Build one extractor and time ``n`` single-image forward passes; runs in its own process."""
    import numpy as np
    import torch

    from auxlabels.config import ExtractorConfig
    from auxlabels.features import build_extractor
    from auxseg.images import read_rgb

    torch.set_num_threads(threads)
    load0 = os.getloadavg()[0]
    ex = build_extractor(ExtractorConfig(random_init=True, **MODELS[label]))
    if label in LARGE:
        camvid, size_hw = None, LARGE[label]
    paths = sorted((camvid / "val").glob("*.png"))[:n] if camvid is not None else []
    if paths:
        images = [read_rgb(p) for p in paths]
    else:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (*size_hw, 3), dtype=np.uint8) for _ in range(n)]
    batches = [torch.from_numpy(img).permute(2, 0, 1)[None].contiguous() for img in images]  # [1, 3, H, W]
    rss_built = _rss_mib()
    ex(batches[0])  # warm-up (first-call allocations), not timed
    t0, cpu0 = time.perf_counter(), time.process_time()
    for x in batches:
        out = ex(x)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    return {"label": label, "images": len(batches), "size": list(images[0].shape[:2]),
            "source": "CamVid val" if paths else "random pixels", "seconds": seconds, "cpu_seconds": cpu_seconds,
            "images_per_s": len(batches) / seconds, "rss_built_mib": rss_built,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "feature_shape": list(out.shape[1:]), "load": (load0 + os.getloadavg()[0]) / 2,
            "description": {k: ex.description.get(k) for k in ("arch", "token_stride", "max_tokens", "native_stride")}}


def write_section(report: Path, rows: list[dict], command: str, threads: int, others: str = "nothing else") -> None:
    """Replace (or append) this tool's section of ``report``; the rest of the file is kept."""
    import torch

    from auxseg.env_report import machine_line

    lines = [SECTION, "",
             f"Machine: {machine_line()}, torch {torch.__version__}, no GPU; torch threads: {threads}.",
             f"Also running: {others}. `load avg` is the mean 1-minute load during each measurement (this "
             "benchmark alone keeps it near 2 on 2 cores); numbers at different loads are not comparable to the last "
             "digit. `CPU s/image`: the process's CPU time (all threads) per image, which other jobs' load "
             "disturbs less than the wall time.",
             f"Command: `{command}`", "",
             "Random weights (seed 0), one image "
             "per forward pass after one warm-up pass; the extractors ran in turn, each round in a fresh process, "
             "and the fastest round is shown (with its load), forward pass only (normalisation, padding/resizing, network, "
             "token reshaping). Peak RSS: the whole process (Python, torch, the model, the forward pass); "
             "`after build`: before the first forward pass. ResNet-50: torchvision, layer4 (stride 32). DINOv2: "
             "last block, image padded to a patch multiple (480 x 360 -> 490 x 364, 35 x 26 tokens); `ts8`: "
             "`extractor.token_stride=8`, the image scaled by 14/8 so the tokens fall at the working stride 8 "
             "(60 x 45 tokens). `ts8_2048`: a 2048 x 1024 image at token stride 8 would be 256 x 128 = 32768 tokens; "
             "`extractor.max_tokens=4096` (the default) scales it down to at most 4096.", "",
             "| extractor | image | images | images/s (best round) | s/image | CPU s/image | images/s, every round "
             "| features [D, h, w] | peak RSS | after build | peak - after build | load avg |",
             "|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        every = ", ".join(f"{v:.2f}" for v in r["all_rounds"])
        lines.append(f"| {r['label']} | {r['size'][1]} x {r['size'][0]} {r['source']} | {r['images']} | "
                     f"{r['images_per_s']:.2f} | {r['seconds'] / r['images']:.2f} | "
                     f"{r['cpu_seconds'] / r['images']:.2f} | {every} | {r['feature_shape']} | "
                     f"{r['peak_rss_mib']:.0f} MiB | {r['rss_built_mib']:.0f} MiB | "
                     f"{r['peak_rss_mib'] - r['rss_built_mib']:.0f} MiB | {r['load']:.1f} |")
    text = report.read_text() if report.is_file() else ""
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start].rstrip("\n") + ("\n\n" + text[end + 1:] if end >= 0 else "")
    report.write_text(text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4, help="timed images per extractor")
    parser.add_argument("--camvid", type=Path, default=None, help="CamVid root: time its first val images")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--rounds", type=int, default=2,
                        help="run every extractor this many times, in turn; the fastest round is reported "
                             "(the machine is shared: a slow round is other jobs' load)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--others", default="nothing else", help="what else ran on the machine meanwhile")
    parser.add_argument("--report", type=Path, default=REPO / "bench" / "results" / "auxlabels.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    camvid = args.camvid if args.camvid is not None and (args.camvid / "val").is_dir() else None
    if args.child:
        print(json.dumps(child(args.child, args.images, (360, 480), camvid, args.threads)))
        return 0
    runs: dict[str, list[dict]] = {label: [] for label in args.models}
    for _ in range(args.rounds):
        for label in args.models:
            cmd = [sys.executable, __file__, "--child", label, "--images", str(args.images), "--threads",
                   str(args.threads)] + (["--camvid", str(camvid)] if camvid else [])
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[label].append(r)
            print(f"{label}: {r['images_per_s']:.2f} images/s, peak RSS {r['peak_rss_mib']:.0f} MiB, "
                  f"load {r['load']:.1f}")
    rows = []
    for rs in runs.values():
        best = max(rs, key=lambda r: r["images_per_s"])
        rows.append({**best, "all_rounds": [r["images_per_s"] for r in rs]})
    command = "python tools/bench_vit_extractors.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_section(args.report, rows, command.strip(), args.threads, args.others)
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
