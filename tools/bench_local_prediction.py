"""Label-free local prediction on CamVid: train, boundaries, auxiliary-label quality.

For each model (``pixel``, ``linear``, ``predseg1``, ``resnet18``):

1. pre-train without labels on the CamVid training images (``configs/pretrain/local_prediction.yaml``,
   ``data.source=images``; per-model batch size and repetitions of supplement A / Table 2 unless
   overridden), recording seconds per iteration and the first and last logged loss;
2. boundary maps of the validation images (``auxseg boundaries predict``, which reads a small model's
   ``small_model.pth`` or a ResNet's ``local_predictor.pth``; with ``--globalize`` the spectral
   globalisation too) scored with ``boundaries.evaluation.evaluate_folder`` against the boundaries of
   the validation label maps (ODS / OIS F, AP);
3. K-means auxiliary labels of the validation images from the learned features
   (``configs/auxlabels/camvid_r18.yaml`` with extractor ``small_model``, or ``auxseg_export``
   (layer4 of ``backbone_mmseg.pth``) for the ResNet-18) and their PmIoU against the validation
   ground truth;
The downstream question (does a ResNet-18 pre-trained this way fine-tune better than one from random
weights or from InfoNCE on auxiliary labels?) is a study over seeds, not this script:
``auxseg study configs/study/camvid_local_prediction.yaml`` (docs/study.md).

Writes ``OUT/results.json`` and ``OUT/results.md`` (each model's command and settings, every number);
a later invocation with the same ``--out`` adds its models to both.

Usage:
  python tools/bench_local_prediction.py --camvid ../shared/data/camvid --out bench/results/local_prediction \\
      --models pixel linear resnet18 --iters 5000 --device cuda
  python tools/bench_local_prediction.py --out runs/lp --models resnet18 --iters 200 \\
      --set model.stem=deep "augment.crop=[160,180]" augment.out_size=160
  python tools/bench_local_prediction.py --smoke --out /tmp/lp_smoke     # tiny synthetic data, CPU, seconds
  python tools/bench_local_prediction.py --cost --out /tmp/lp_cost --models pixel linear predseg1 resnet18
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from auxseg.config import load_config  # noqa: E402
from auxseg.env_report import machine_line  # noqa: E402
from auxseg.files import atomic_write_json, atomic_write_text, read_json, read_jsonl  # noqa: E402
from auxseg.nets.small import SMALL_MODELS  # noqa: E402

CAMVID = {"num_classes": 11, "ignore_index": 11,
          "class_names": ["Sky", "Building", "Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car",
                          "Pedestrian", "Bicyclist"]}
# supplement A / Table 2: batch size and gradient-accumulation repetitions per model (resnet18: choice)
PER_MODEL = {"pixel": ["data.batch_size=32", "loss.local_prediction.repetitions=5"],
             "linear": ["data.batch_size=6", "loss.local_prediction.repetitions=10"],
             "predseg1": ["data.batch_size=16", "loss.local_prediction.repetitions=10"],
             "resnet18": ["data.batch_size=8", "loss.local_prediction.repetitions=10"]}
SMOKE = ["data.batch_size=2", "data.num_workers=0", "augment.crop=[40,48]", "augment.out_size=48",
         "loss.local_prediction.repetitions=1", "loss.local_prediction.locations=32"]


def pretrain(root: Path, out: Path, arch: str, args) -> dict:
    from pretrain.config import PretrainConfig
    from pretrain.train import run

    overrides = [f"out_dir={out}", f"data.images={root / 'train'}", f"model.arch={arch}",
                 f"train.max_iters={args.iters}", f"train.device={args.device}", "train.tensorboard=false",
                 f"train.progress={'false' if args.smoke else 'true'}", "train.log_every=1" if args.smoke else
                 "train.log_every=20", *PER_MODEL[arch], *(SMOKE if args.smoke else []), *args.set]
    if arch == "predseg1" and args.smoke:
        overrides += ["augment.crop=[72,72]", "augment.out_size=72", "loss.local_prediction.neighbourhood=4"]
    cfg = load_config(PretrainConfig, REPO / "configs/pretrain/local_prediction.yaml", overrides)
    t0 = time.perf_counter()
    export = run(cfg)
    seconds = time.perf_counter() - t0
    log = read_jsonl(out / "log.jsonl")
    return {"export": str(export), "seconds": round(seconds, 2), "s_per_iter": round(seconds / args.iters, 4),
            "iters": args.iters, "first_loss": log[0]["loss"], "last_loss": log[-1]["loss"],
            "last_posterior": log[-1].get("posterior"), "last_connection_probability":
            log[-1].get("connection_probability"), "overrides": overrides}


def boundaries(root: Path, export: Path, out: Path, info: dict, args) -> dict:
    from boundaries.evaluation import EvalOptions, evaluate_folder
    from boundaries.learned import BoundaryOptions, predict_folder

    t0 = time.perf_counter()
    paths = predict_folder(export, root / "val", out, BoundaryOptions(globalize=args.globalize, device=args.device),
                           progress=not args.smoke)
    predict_s = time.perf_counter() - t0
    result = evaluate_folder(out, root / "valannot", "labels", EvalOptions(ignore_index=info["ignore_index"]),
                             progress=not args.smoke)
    return {"images": len(paths), "predict_s_per_image": round(predict_s / max(1, len(paths)), 4),
            "globalize": args.globalize, "ods_f": result["ods"]["f"], "ois_f": result["ois"]["f"], "ap": result["ap"]}


def pmiou(root: Path, export: Path | None, arch: str, out: Path, info: dict, args) -> dict:
    """K-means auxiliary labels of the validation images from the model's features, and their PmIoU.
    ``export`` None: the reference, a ResNet-18 with random weights (torchvision, layer4) under the same protocol."""
    from auxlabels.config import AuxLabelsConfig
    from auxlabels.pipeline import run

    if export is None:
        extractor = ["extractor.name=resnet18", "extractor.random_init=true", "extractor.layer=layer4"]
    else:
        name, layer = ("small_model", "output") if arch in SMALL_MODELS else ("auxseg_export", "layer4")
        ckpt = export if arch in SMALL_MODELS else export.parent / "backbone_mmseg.pth"  # written for either stem
        extractor = [f"extractor.name={name}", f"extractor.checkpoint={ckpt}", "extractor.random_init=false",
                     f"extractor.layer={layer}"]
    overrides = [f"image_dir={root / 'val'}", f"gt_dir={root / 'valannot'}", f"out_dir={out}",
                 f"num_classes={info['num_classes']}", f"class_names={json.dumps(info['class_names'])}",
                 f"gt_ignore_values=[{info['ignore_index']}]", *extractor,
                 f"extractor.device={args.device}", f"progress={'false' if args.smoke else 'true'}"]
    if args.smoke:
        overrides += ["kmeans.n_fit=8", "kmeans.fit_pixels=4000", "kmeans.niter=5", "superpixels.n_segments=100",
                      "num_workers=0", "extractor.stride=4"]
    manifest = run(load_config(AuxLabelsConfig, REPO / "configs/auxlabels/camvid_r18.yaml", overrides))
    return {"extractor": extractor[0].split("=", 1)[1], "k": manifest["num_labels"],
            "pmiou": manifest["pmiou"]["pmiou"], "overrides": extractor}


def figure(root: Path, out: Path, models: list[str], baselines: Path | None, n_images: int = 3) -> Path:
    """``OUT/boundaries.png``: for validation images spread over the set, the image, the ground-truth boundaries, and the
    boundary map (after NMS, as scored) of each trained model and of each baseline found under ``baselines``
    (``tools/bench_boundaries.py``'s output: one folder of PNGs per method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from auxseg.files import atomic_path
    from auxseg.images import read_label, read_rgb
    from boundaries.evaluation import read_label_ground_truth

    every = sorted((root / "val").glob("*.png"))
    images = every[:: max(1, len(every) // n_images)][:n_images]  # spread over the sequence, not 3 similar frames
    columns = [(f"{arch} (local prediction)", out / arch / "boundaries") for arch in models
               if (out / arch / "boundaries").is_dir()]
    if baselines is not None:
        columns += [(name, baselines / name) for name in ("sobel", "canny", "slic") if (baselines / name).is_dir()]
    fig, axes = plt.subplots(len(images), 2 + len(columns), figsize=(2.6 * (2 + len(columns)), 2.1 * len(images)),
                             squeeze=False)
    for row, img in enumerate(images):
        gt, _ = read_label_ground_truth(root / "valannot" / img.name, ignore_index=CAMVID["ignore_index"])
        panels = [("image", read_rgb(img), None), ("ground-truth boundaries", gt, "gray_r")]
        panels += [(title, read_label(folder / img.name), "gray_r") for title, folder in columns]
        for col, (title, arr, cmap) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(arr, cmap=cmap)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=8)
    path = out / "boundaries.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def cost(args) -> str:
    """Seconds per training step (forward, loss, backward, SGD step on random crops of the preset's size and
    each model's batch) and per boundary map of a 480x360 image, on this machine; no data loading."""
    import numpy as np
    import torch

    from auxseg.contracts.small_model import read_small_model
    from boundaries.learned import BoundaryOptions, boundary_strength
    from pretrain.config import PretrainConfig
    from pretrain.export import export_small_model
    from pretrain.objectives import StepBatch
    from pretrain.train import PretrainModel, build_optimizer

    rows = ["| model | batch x 2 views | crop | repetitions | s/step | network alone s/step | "
            "boundary s/image 480x360 (local / globalised) |", "|---|---|---|---|---|---|---|"]
    rgb = np.random.default_rng(0).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    for arch in args.models:
        cfg = load_config(PretrainConfig, REPO / "configs/pretrain/local_prediction.yaml",
                          [f"model.arch={arch}", "data.images=unused", *PER_MODEL[arch], *args.set])
        torch.manual_seed(0)
        model = PretrainModel(cfg)
        opt = build_optimizer(model, cfg.optim)
        b, s = cfg.data.batch_size, cfg.augment.out_size
        images = torch.randn(b * 2, 3, s, s)
        times = []
        for it in range(4):  # one warm-up step, then three timed
            t0 = time.perf_counter()
            loss, _ = model.objective(model(images), StepBatch(None, None, None, None, None, it,
                                                               torch.Generator().manual_seed(it)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        step = sorted(times[1:])[1]
        alone = []  # the same network forward and backward with a trivial loss: what the objective adds
        for _ in range(3):
            t0 = time.perf_counter()
            feats = model(images)
            if feats.requires_grad:
                feats.mean().backward()
            alone.append(time.perf_counter() - t0)
        net = sorted(alone)[1]
        bnd = "n/a"
        if arch in SMALL_MODELS:
            path = export_small_model(model.net.backbone, model.objective, args.out / f"cost_{arch}", config={},
                                      iteration=0, auxlabels_sha256=None, auxlabels_manifest=None)["small_model"]
            export = read_small_model(path)
            spent = []
            for globalize in (False, True):
                t0 = time.perf_counter()
                boundary_strength(export, rgb, BoundaryOptions(globalize=globalize))
                spent.append(time.perf_counter() - t0)
            bnd = f"{spent[0]:.2f} / {spent[1]:.2f}"
        rows.append(f"| {arch} | {b} x 2 | {s} px | {cfg.loss.local_prediction.repetitions} | {step:.2f} | "
                    f"{net:.2f} | {bnd} |")
    return "\n".join(rows) + "\n"


def _markdown(results: dict) -> str:
    lines = [f"# Local prediction on {results['data']}", "",
             "| model | iters | s/iter | loss first -> last | ODS F | OIS F | AP | PmIoU (K) |",
             "|---|---|---|---|---|---|---|---|"]
    for arch, r in results["models"].items():
        p, b, m = r["pretrain"], r.get("boundaries"), r["auxlabels"]
        bnd = (f"{b['ods_f']:.3f} | {b['ois_f']:.3f} | {b['ap']:.3f}" if b else "n/a | n/a | n/a")
        lines.append(f"| {arch} | {p['iters']} | {p['s_per_iter']:.3f} | {p['first_loss']:.3f} -> "
                     f"{p['last_loss']:.3f} | {bnd} | {m['pmiou']:.2f} ({m['k']}) |")
    ref = results.get("reference")
    if ref:
        lines.append(f"| ResNet-18, random weights (reference; no training) | - | - | - | - | - | - | "
                     f"{ref['pmiou']:.2f} ({ref['k']}) |")
    lines += ["", "Commands (and the machine each ran on):", ""] + [
        f"- {arch}: `{r.get('command', results.get('command'))}` ({r.get('machine', results.get('machine'))})"
        for arch, r in results["models"].items()]
    if ref:
        lines.append(f"- reference: `{ref['command']}` ({ref['machine']})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--camvid", type=Path, default=REPO.parent / "shared/data/camvid", help="CamVid root")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", nargs="+", default=["pixel", "linear", "resnet18"],
                    choices=[*SMALL_MODELS, "resnet18"])
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--globalize", action="store_true", help="spectral globalisation for the boundaries")
    ap.add_argument("--set", nargs="*", default=[], metavar="key=value", help="extra pretrain config overrides")
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic data in OUT/data, a few iterations")
    ap.add_argument("--figure", action="store_true",
                    help="only draw OUT/boundaries.png from the boundary maps an earlier run left in OUT")
    ap.add_argument("--baselines", type=Path, default=None,
                    help="with --figure: tools/bench_boundaries.py's output folder, to draw its maps too")
    ap.add_argument("--reference", action="store_true",
                    help="only the PmIoU reference: K-means labels from a ResNet-18 with random weights (layer4), "
                         "the same protocol as the models' PmIoU")
    ap.add_argument("--cost", action="store_true",
                    help="only time one training step per model and one boundary map on random data")
    args = ap.parse_args(argv)
    if args.figure:
        print(figure(args.out / "data" if args.smoke else args.camvid, args.out, args.models, args.baselines))
        return 0
    if args.cost:
        table = cost(args)
        atomic_write_text(args.out / "cost.md", table)
        print(table)
        return 0
    if args.smoke:
        from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset

        root = args.out / "data"
        if not (root / "dataset.json").is_file():
            make_synthetic_dataset(root, SyntheticSpec(num_train=4, num_val=3, height=48, width=64, seed=1))
        meta = read_json(root / "dataset.json")
        info = {k: meta[k] for k in ("num_classes", "ignore_index", "class_names")}
        args.iters = min(args.iters, 2)
    else:
        root, info = args.camvid, CAMVID
    command = " ".join(["python tools/bench_local_prediction.py", *(argv or sys.argv[1:])])
    previous = args.out / "results.json"
    results = read_json(previous) if previous.is_file() else {"data": str(root), "models": {}}
    def machine() -> str:  # after the work: the load average says whether something shared the cores
        return f"{machine_line()}, 1-minute load average at the end {os.getloadavg()[0]:.1f}"

    if args.reference:
        r = pmiou(root, None, "resnet18", args.out / "reference_random_resnet18", info, args)
        results["reference"] = {**r, "command": command, "machine": machine()}
        args.models = []
    for arch in args.models:
        out = args.out / arch
        r = {"command": command, "pretrain": pretrain(root, out / "pretrain", arch, args)}
        export = Path(r["pretrain"]["export"])
        # a small model's small_model.pth, or the folder with a ResNet's local_predictor.pth
        r["boundaries"] = boundaries(root, export if arch in SMALL_MODELS else export.parent, out / "boundaries",
                                     info, args)
        r["auxlabels"] = pmiou(root, export, arch, out / "auxlabels", info, args)
        r["machine"] = machine()
        results["models"][arch] = r
        atomic_write_json(args.out / "results.json", results)  # partial results survive a later failure
    atomic_write_json(args.out / "results.json", results)
    atomic_write_text(args.out / "results.md", _markdown(results))
    print(_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
