"""Benchmark the auxlabels stage on CamVid against the naive pipeline, and check memory stays flat.

Measures, with a ResNet-18 extractor (random weights, explicitly: no ImageNet
file is available offline; speed does not depend on the weights, PmIoU does):

1. ours on CamVid val (101 images): wall time, images/s, time per phase, PmIoU;
2. the naive pipeline a user would otherwise write, side by side on the same
   images, extractor and weights: features of all images stacked in memory,
   scikit-learn KMeans on all pixels, a global 5% outlier cut, scikit-image
   SLIC and the same majority vote, PmIoU with the same metric code;
3. ours on the first 100 and 400 images of train+val: peak memory (main
   process plus workers, sampled from /proc) must stay flat.

Each measurement runs in its own process. Writes a Markdown report.

    python tools/bench_auxlabels.py --camvid ../shared/data/camvid --report bench/results/auxlabels.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from auxseg.env_report import machine_line
from auxseg.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist"]


# ----------------------------------------------------------------------------- measuring


def _tree_rss_kb(root_pid: int) -> int:
    """Resident memory of a process and all its descendants, in KiB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss[int(entry)] = int(line.split()[1])
                        break
            children.setdefault(ppid, []).append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def measure(cmd: list[str], env: dict | None = None, cwd: Path = REPO) -> dict:
    """Run a command (in ``cwd``, the checkout whose code it runs); return its wall time, exit code and peak
    tree RSS (MiB)."""
    import resource

    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    loads = []

    def poll():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_kb(proc.pid))
            loads.append(os.getloadavg()[0])
            time.sleep(0.1)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    thread.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    # the machine is shared: the 1-minute load average during the run says how contended it was
    load = sum(loads) / len(loads) if loads else os.getloadavg()[0]
    # CPU seconds of the whole process tree (workers included once they are joined): far less
    # sensitive than wall time to other jobs on the machine
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak[0] / 1024, "load": load, "output": out}


# ----------------------------------------------------------------------------- the naive pipeline


def naive(camvid: Path, out_json: Path, stride: int, n_segments: int, k: int, seed: int) -> None:
    """The straightforward version: all features in memory, sklearn KMeans on all pixels, skimage SLIC."""
    import numpy as np
    import torch
    from skimage.segmentation import slic
    from sklearn.cluster import KMeans

    from auxlabels.config import ExtractorConfig
    from auxlabels.features import build_extractor, working_features
    from auxlabels.metrics import confusion, pmiou
    from auxlabels.vote import superpixel_vote
    from auxseg.images import list_images, read_label, read_rgb

    timings = {}
    t_all = time.perf_counter()
    model = build_extractor(ExtractorConfig(name="resnet18", random_init=True, seed=seed, layer="layer4", stride=stride))
    rels = list_images(camvid / "val")
    images, feats, grids = [], [], []
    t0 = time.perf_counter()
    for rel in rels:
        img = read_rgb(camvid / "val" / rel)
        with torch.no_grad():
            f = model(torch.from_numpy(img).permute(2, 0, 1)[None])
            f = working_features(f, img.shape[:2], stride)[0]  # [h, w, D]
        images.append(img)
        grids.append(f.shape[:2])
        feats.append(f.reshape(-1, f.shape[-1]).numpy())
    timings["features"] = time.perf_counter() - t0
    allf = np.concatenate(feats)  # every pixel of every image in memory
    t0 = time.perf_counter()
    km = KMeans(n_clusters=k, random_state=seed).fit(allf)
    timings["kmeans_fit_all_pixels"] = time.perf_counter() - t0
    dist = np.linalg.norm(allf - km.cluster_centers_[km.labels_], axis=1)
    labels = np.where(dist > np.quantile(dist, 0.95), 255, km.labels_).astype(np.uint8)
    conf = np.zeros((k + 1, 11), dtype=np.int64)
    t0 = time.perf_counter()
    t_slic = 0.0
    start = 0
    for rel, img, (h, w) in zip(rels, images, grids):
        coarse = labels[start : start + h * w].reshape(h, w)
        start += h * w
        full = coarse[np.minimum(np.arange(img.shape[0]) // stride, h - 1)[:, None],
                      np.minimum(np.arange(img.shape[1]) // stride, w - 1)[None, :]]
        t1 = time.perf_counter()
        seg = slic(img, n_segments=n_segments, compactness=10, start_label=0)
        t_slic += time.perf_counter() - t1
        voted = superpixel_vote(full, seg, k, 255)
        gt = read_label(camvid / "valannot" / rel.with_suffix(".png"))
        conf += confusion(voted, gt, k, 11, 255, [11])
    timings["skimage_slic"] = t_slic
    timings["vote_and_metrics"] = time.perf_counter() - t0 - t_slic
    timings["total"] = time.perf_counter() - t_all
    rep = pmiou(conf, CAMVID_CLASSES)
    out_json.write_text(json.dumps({"timings": timings, "pmiou": rep["pmiou"], "majority_miou": rep["majority_miou"],
                                    "num_pixels_clustered": int(len(allf)), "num_images": len(rels)}, indent=2))


# ----------------------------------------------------------------------------- driver


def ours_cmd(camvid: Path, out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "loop", "auxlabels", "configs/auxlabels/camvid_r18.yaml",
            f"image_dir={camvid / 'val'}", f"gt_dir={camvid / 'valannot'}", "extractor.random_init=true",
            f"out_dir={out}", "progress=false", *overrides]


def machine() -> str:
    import torch


    return (f"{machine_line()}, torch {torch.__version__}, no GPU" if not torch.cuda.is_available() else
            f"{machine_line()}, GPU {torch.cuda.get_device_name(0)}")

def share_table(timings: dict, wall: float) -> list[str]:
    rows = ["| phase | seconds | share of stage wall time |", "|---|---:|---:|"]
    for key in ("setup", "read", "forward", "resize_normalise", "fit", "assign", "wait_workers", "superpixels", "vote",
                "write", "cpu_total", "finish"):
        if key in timings:
            rows.append(f"| {key} | {timings[key]:.2f} | {100 * timings[key] / wall:.1f}% |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--camvid", type=Path, default=REPO.parent / "shared" / "data" / "camvid")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_auxlabels")
    parser.add_argument("--report", type=Path, default=REPO / "bench" / "results" / "auxlabels.md")
    parser.add_argument("--threads", type=int, default=1, help="OMP/torch threads of every process")
    parser.add_argument("--workers", type=int, default=2, help="num_workers of our pipeline")
    parser.add_argument("--scaling", default="100,400", help="image counts for the memory check ('' to skip)")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-variants", action="store_true", help="skip the ablation rows of our pipeline")
    parser.add_argument("--naive-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from <work>/results.json")
    parser.add_argument("--naive-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--fine-stride", type=int, default=4, help="second side-by-side comparison (0 to skip)")
    parser.add_argument("--stage-vs-forward", type=int, metavar="N", default=0,
                        help="only the stage against its forward pass on the first N train+val images, with the "
                             "phase table; written to --stage-report (auxlabels.md is left alone)")
    parser.add_argument("--stage-report", type=Path, default=REPO / "bench" / "results" / "auxlabels_stage.md")
    parser.add_argument("--compare", type=Path, default=None, metavar="CHECKOUT",
                        help="with --stage-vs-forward: the same run from another checkout (e.g. the previous "
                             "commit), alternated with ours")
    parser.add_argument("--rounds", type=int, default=2, help="with --stage-vs-forward: runs of each checkout")
    parser.add_argument("--others", default="nothing else", help="what else ran on the machine meanwhile")
    args = parser.parse_args(argv)
    if args.stage_vs_forward:
        return stage_vs_forward(args, argv if argv is not None else sys.argv[1:])
    if args.naive_only:
        naive(args.camvid.resolve(), args.naive_out, args.stride, 500, 17, 0)
        return 0
    if args.report_only:  # re-render the report from the last results.json
        results = json.loads((args.work / "results.json").read_text())
        results["scaling"] = {int(k): v for k, v in results["scaling"].items()}
        write_report(args, results)
        print(args.report.read_text())
        return 0

    import shutil

    camvid = args.camvid.resolve()
    work = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    results: dict = {"machine": machine(), "threads": args.threads, "workers": args.workers}

    print("[bench] ours on CamVid val ...", file=sys.stderr)
    r = measure(ours_cmd(camvid, work / "ours_val", f"num_workers={args.workers}", f"extractor.stride={args.stride}",
                         f"kmeans.threads={args.threads}"), env)
    m = json.loads((work / "ours_val" / "manifest.json").read_text())
    results["ours"] = {**{k: v for k, v in r.items() if k != "output"}, "timings": m["timings"],
                       "pmiou": m["pmiou"], "n": len(m["images"])}

    variants = {
        "single process (num_workers=0)": ["num_workers=0"],
        "skimage SLIC instead of fast-slic": [f"num_workers={args.workers}", "superpixels.method=skimage"],
        "without superpixel vote (outlier share check)": [f"num_workers={args.workers}", "superpixels.enabled=false"],
        "kmeans.seed=1": [f"num_workers={args.workers}", "kmeans.seed=1"],
        "kmeans.seed=2": [f"num_workers={args.workers}", "kmeans.seed=2"],
    }
    results["variants"] = {}
    for i, (name, extra) in enumerate(variants.items()):
        if args.skip_variants:
            break
        print(f"[bench] ours, {name} ...", file=sys.stderr)
        r = measure(ours_cmd(camvid, work / f"variant{i}", *extra, f"extractor.stride={args.stride}",
                             f"kmeans.threads={args.threads}"), env)
        mv = json.loads((work / f"variant{i}" / "manifest.json").read_text())
        results["variants"][name] = {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "load": r["load"],
                                     "peak_rss_mib": r["peak_rss_mib"], "n": len(mv["images"]),
                                     "pmiou": mv["pmiou"], "stage_s": mv["timings"]["total_wall"],
                                     "forward_s": mv["timings"]["forward"], "ignored_share": mv["ignored_share"]}

    if not args.skip_naive:
        print("[bench] naive on CamVid val ...", file=sys.stderr)
        nv = work / "naive.json"
        r = measure([sys.executable, str(Path(__file__).resolve()), "--naive-only", "--camvid", str(camvid),
                     "--naive-out", str(nv), "--stride", str(args.stride)], env)
        results["naive"] = {**{k: v for k, v in r.items() if k != "output"}, **json.loads(nv.read_text())}

    results["fine"] = {}
    if args.fine_stride and not args.skip_naive:
        fs = args.fine_stride
        print(f"[bench] ours and naive at stride {fs} ...", file=sys.stderr)
        r = measure(ours_cmd(camvid, work / f"ours_s{fs}", f"num_workers={args.workers}", f"extractor.stride={fs}",
                             f"kmeans.threads={args.threads}"), env)
        mf = json.loads((work / f"ours_s{fs}" / "manifest.json").read_text())
        nv = work / f"naive_s{fs}.json"
        rn = measure([sys.executable, str(Path(__file__).resolve()), "--naive-only", "--camvid", str(camvid),
                      "--naive-out", str(nv), "--stride", str(fs)], env)
        results["fine"] = {"stride": fs,
                           "ours": {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "load": r["load"],
                                    "peak_rss_mib": r["peak_rss_mib"], "pmiou": mf["pmiou"], "timings": mf["timings"]},
                           "naive": {"wall_s": rn["wall_s"], "cpu_s": rn["cpu_s"], "load": rn["load"],
                                     "peak_rss_mib": rn["peak_rss_mib"],
                                     **json.loads(nv.read_text())}}

    results["scaling"] = {}
    for n in [int(x) for x in args.scaling.split(",") if x]:
        print(f"[bench] ours on {n} train+val images ...", file=sys.stderr)
        r = measure(_scale_cmd(camvid, work / f"scale_{n}", n, args), env)
        ms = json.loads((work / f"scale_{n}" / "manifest.json").read_text())
        results["scaling"][n] = {"wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"], "load": r["load"],
                                 "stage_s": ms["timings"]["total_wall"], "forward_s": ms["timings"]["forward"]}
    (work / "results.json").write_text(json.dumps(results, indent=2))
    write_report(args, results)
    print(args.report.read_text())
    return 0


def _scale_cmd(camvid: Path, work: Path, n: int, args) -> list[str]:
    """The auxlabels command on the first ``n`` CamVid train+val images (random ResNet-18, no ground truth)."""
    rels = sorted(f"train/{p.name}" for p in (camvid / "train").glob("*.png")) + sorted(
        f"val/{p.name}" for p in (camvid / "val").glob("*.png"))
    lst = work.parent / f"list_{n}.txt"
    lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text("\n".join(rels[:n]) + "\n")
    return [sys.executable, "-m", "loop", "auxlabels", "configs/auxlabels/camvid_r18.yaml",
            f"image_dir={camvid}", f"image_list={lst}", "gt_dir=null", "extractor.random_init=true",
            f"out_dir={work}", "progress=false", f"num_workers={args.workers}",
            f"kmeans.threads={args.threads}", f"extractor.stride={args.stride}"]


def stage_vs_forward(args, argv: list[str]) -> int:
    """The stage's wall time against its forward pass on N images, ours alternated with ``--compare``'s code;
    writes ``--stage-report`` with every run and the phase table of our last one."""
    import shutil

    camvid, work = args.camvid.resolve(), args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    checkouts = [("this checkout", REPO)] + ([("--compare checkout", args.compare.resolve())] if args.compare else [])
    runs = []
    for i in range(args.rounds):
        for name, repo in checkouts:
            out = work / f"{name.split()[0].strip('-')}_{i}"
            print(f"[bench] {name}, round {i + 1}, {args.stage_vs_forward} images ...", file=sys.stderr)
            r = measure(_scale_cmd(camvid, out, args.stage_vs_forward, args), env, cwd=repo)
            t = json.loads((out / "manifest.json").read_text())["timings"]
            runs.append({"code": name, "round": i + 1, "wall_s": r["wall_s"], "load": r["load"], "timings": t})
    lines = [f"# auxlabels stage against its forward pass ({args.stage_vs_forward} CamVid images, ResNet-18)", "",
             f"Machine: {machine()}. Threads per process: {args.threads}; CPU workers: {args.workers}. "
             f"Also running: {args.others}.",
             f"Command: `python tools/bench_auxlabels.py {' '.join(argv)}`"
             + (f" (`--compare`: {args.compare.name}, the code before the change)" if args.compare else "") + ".",
             "Each run is the whole `auxseg auxlabels` command; stage = wall time inside `run()`, forward = the "
             "extractor's forward passes inside it.", "",
             "| code | round | stage | forward | stage / forward | process wall | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        t = r["timings"]
        lines.append(f"| {r['code']} | {r['round']} | {t['total_wall']:.1f} s | {t['forward']:.1f} s | "
                     f"{t['total_wall'] / t['forward']:.3f}x | {r['wall_s']:.1f} s | {r['load']:.1f} |")
    last = [r for r in runs if r["code"] == "this checkout"][-1]["timings"]
    lines += ["", "Phase table of this checkout's last run (overlapped phases do not add up):", "",
              *share_table(last, last["total_wall"]), ""]
    atomic_write_text(args.stage_report, "\n".join(lines))
    print(args.stage_report.read_text())
    return 0


def write_report(args, res: dict) -> None:
    ours = res["ours"]
    t = ours["timings"]
    stage = t["total_wall"]
    lines = [
        "# auxlabels benchmark (CamVid, ResNet-18)",
        "",
        f"Machine: {res['machine']}. Threads per process: {res['threads']}; our CPU workers: {res['workers']}.",
        "The machine is shared with other jobs: `load avg` is the mean 1-minute load during each run",
        "(2 = both cores busy). Timings taken at different loads are not comparable to the last second.",
        f"Command: `python tools/bench_auxlabels.py --threads {res['threads']} --workers {res['workers']}"
        f" --stride {args.stride}`",
        "",
        "Extractor: torchvision ResNet-18, layer4, **random weights (seed 0), explicitly** -- no ImageNet file is",
        "available offline. Speed does not depend on the weights; the absolute PmIoU does (random features",
        "are weak), so compare PmIoU only between the two pipelines, which share the extractor and weights.",
        f"K = 17 (round(1.5 x 11)), working stride {args.stride}, 5% global outliers, 500 superpixels.",
        "",
        "## Ours vs the naive pipeline, CamVid val (101 images, 480x360)",
        "",
        "| pipeline | wall (process) | CPU time (all processes) | images/s | PmIoU (Hungarian) | majority mIoU |"
        " peak RSS | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| ours (faiss K-means on a 100k-pixel sample, fast-slic, {res['workers']} workers) | {ours['wall_s']:.1f} s |"
        f" {ours['cpu_s']:.1f} s |"
        f" {ours['n'] / ours['wall_s']:.2f} | {ours['pmiou']['pmiou']:.2f} | {ours['pmiou']['majority_miou']:.2f} |"
        f" {ours['peak_rss_mib']:.0f} MiB | {ours['load']:.1f} |",
    ]
    if "naive" in res:
        nv = res["naive"]
        lines.append(
            f"| naive (sklearn KMeans on all {nv['num_pixels_clustered']:,} pixels, skimage SLIC) | {nv['wall_s']:.1f} s |"
            f" {nv['cpu_s']:.1f} s |"
            f" {nv['num_images'] / nv['wall_s']:.2f} | {nv['pmiou']:.2f} | {nv['majority_miou']:.2f} |"
            f" {nv['peak_rss_mib']:.0f} MiB | {nv['load']:.1f} |")
        beyond_ours = stage - t["forward"]
        beyond_naive = nv["timings"]["total"] - nv["timings"]["features"]
        lines += [
            "",
            f"Speed-up, whole process: **{nv['wall_s'] / ours['wall_s']:.1f}x** in wall time, "
            f"**{nv['cpu_s'] / ours['cpu_s']:.1f}x** in CPU time. "
            f"Everything except feature extraction: ours {beyond_ours:.1f} s vs naive {beyond_naive:.1f} s "
            f"(**{beyond_naive / max(beyond_ours, 1e-9):.1f}x**).",
            "",
            "Naive phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in nv["timings"].items()),
        ]
    if res.get("fine"):
        f = res["fine"]
        o, nv = f["ours"], f["naive"]
        bo = o["timings"]["total_wall"] - o["timings"]["forward"]
        bn = nv["timings"]["total"] - nv["timings"]["features"]
        lines += [
            "",
            f"The same comparison at working stride {f['stride']} (4x the pixels: "
            f"{nv['num_pixels_clustered']:,} for the naive K-means):",
            "",
            "| pipeline | wall (process) | CPU time | PmIoU | majority mIoU | peak RSS | beyond feature extraction |"
            " load avg |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| ours | {o['wall_s']:.1f} s | {o['cpu_s']:.1f} s | {o['pmiou']['pmiou']:.2f} |"
            f" {o['pmiou']['majority_miou']:.2f} | {o['peak_rss_mib']:.0f} MiB | {bo:.1f} s | {o['load']:.1f} |",
            f"| naive | {nv['wall_s']:.1f} s | {nv['cpu_s']:.1f} s | {nv['pmiou']:.2f} | {nv['majority_miou']:.2f} |"
            f" {nv['peak_rss_mib']:.0f} MiB | {bn:.1f} s | {nv['load']:.1f} |",
            "",
            f"Speed-up: whole process **{nv['wall_s'] / o['wall_s']:.1f}x** wall, "
            f"**{nv['cpu_s'] / o['cpu_s']:.1f}x** CPU time; beyond feature extraction "
            f"**{bn / max(bo, 1e-9):.1f}x**.",
        ]
    if res.get("variants"):
        lines += ["", "Variants of our pipeline on the same images:", "",
                  "| variant | wall (process) | CPU time | stage | forward | PmIoU | majority mIoU | ignored pixels |"
                  " peak RSS | load avg |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, v in res["variants"].items():
            lines.append(f"| {name} | {v['wall_s']:.1f} s | {v['cpu_s']:.1f} s | {v['stage_s']:.1f} s |"
                         f" {v['forward_s']:.1f} s |"
                         f" {v['pmiou']['pmiou']:.2f} | {v['pmiou']['majority_miou']:.2f} |"
                         f" {100 * v['ignored_share']:.1f}% | {v['peak_rss_mib']:.0f} MiB | {v['load']:.1f} |")
    if "naive" in res:
        nv = res["naive"]
        seeds = [ours["pmiou"]["pmiou"]] + [v["pmiou"]["pmiou"] for k, v in res.get("variants", {}).items()
                                            if k.startswith("kmeans.seed")]
        bound = nv["timings"]["total"] / max(t["forward"], 1e-9)
        beyond_share = 100 * (stage - t["forward"]) / stage
        lines += [
            "",
            "## Against the targets",
            "",
            "- At least 5x faster than the naive pipeline: "
            + ("**met**" if nv["wall_s"] / ours["wall_s"] >= 5 else "**not met on this CPU**")
            + f" at stride {args.stride} "
            f"({nv['wall_s'] / ours['wall_s']:.1f}x wall, {nv['cpu_s'] / ours['cpu_s']:.1f}x CPU time)"
            + (f", nor at stride {res['fine']['stride']} ({res['fine']['naive']['wall_s'] / res['fine']['ours']['wall_s']:.1f}x)"
               if res.get("fine") else "")
            + ". Both pipelines run the same ResNet-18 forward pass, which alone takes "
            f"{t['forward']:.0f} s here, so even a free rest would give at most ~{bound:.1f}x over the naive "
            f"{nv['timings']['total']:.0f} s. Beyond the forward pass ours is "
            f"{(nv['timings']['total'] - nv['timings']['features']) / max(stage - t['forward'], 1e-9):.1f}x faster; "
            "with a GPU extractor that part is what remains, and the gap grows with the pixel count (stride 4 row).",
            f"- Equal or better PmIoU: ours {ours['pmiou']['pmiou']:.2f} vs naive {nv['pmiou']:.2f} at stride "
            f"{args.stride}; ours over K-means seeds spans {min(seeds):.2f}-{max(seeds):.2f}, so the two are equal "
            "within seed noise (on random-weight features)."
            + (f" At stride {res['fine']['stride']}: ours {res['fine']['ours']['pmiou']['pmiou']:.2f} vs naive "
               f"{res['fine']['naive']['pmiou']:.2f}." if res.get("fine") else ""),
            f"- Work beyond the forward pass at most 25% of the stage: **{beyond_share:.0f}%** on the 101 val images "
            + ("(met)" if beyond_share <= 25 else "(not met)")
            + "; the fixed costs (K-means fit on 100k pixels, set-up) weigh more on a small set"
            + (", see the 400-image row below." if res.get("scaling") else "."),
        ]
        if res.get("scaling") and len(res["scaling"]) >= 2:
            ns = sorted(res["scaling"])
            a, b = res["scaling"][ns[0]], res["scaling"][ns[-1]]
            lines.append(f"- Peak memory flat in the number of images: {a['peak_rss_mib']:.0f} MiB at {ns[0]} images, "
                         f"{b['peak_rss_mib']:.0f} MiB at {ns[-1]} (the naive pipeline holds every feature: "
                         f"{nv['peak_rss_mib']:.0f} MiB already at 101 images).")
    lines += [
        "",
        "## Where our time goes (CamVid val)",
        "",
        f"Stage wall time inside `run()`: {stage:.1f} s (process wall {ours['wall_s']:.1f} s includes Python/torch start-up).",
        f"Work beyond the extractor's forward pass: {stage - t['forward']:.1f} s = "
        f"**{100 * (stage - t['forward']) / stage:.0f}%** of the stage time (target: at most 25%).",
        "superpixels / vote / write / cpu_total run in the worker process, overlapped with extraction;",
        "read runs in a prefetch thread. Shares of overlapped phases do not add up to 100%.",
        "",
        *share_table(t, stage),
    ]
    if res["scaling"]:
        lines += ["", "## Memory with the number of images (train+val, no ground truth)", "",
                  "| images | process wall | stage | forward | beyond forward | peak RSS (main + workers) | load avg |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for n, s in res["scaling"].items():
            lines.append(f"| {n} | {s['wall_s']:.1f} s | {s['stage_s']:.1f} s | {s['forward_s']:.1f} s |"
                         f" {100 * (s['stage_s'] - s['forward_s']) / s['stage_s']:.0f}% |"
                         f" {s['peak_rss_mib']:.0f} MiB | {s['load']:.1f} |")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
