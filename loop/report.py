"""The pipeline's report: a Markdown file with the numbers and PNG figures.

Figures: auxiliary-label overlays on validation images, the feature view of the
same images (the auxiliary-label extractor's features, guided-filtered and
reduced to RGB by PCA; :mod:`auxlabels.feature_view`), per-class IoU of the
baseline vs the pre-trained model, and training curves (pre-training loss,
fine-tuning loss and validation mIoU).
"""

from __future__ import annotations

import statistics
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from auxseg.colours import blend, colourise, palette  # noqa: E402
from auxseg.contracts.label_folder import label_rel  # noqa: E402
from auxseg.errors import AuxsegError  # noqa: E402
from auxseg.files import atomic_path, atomic_write_text, read_jsonl  # noqa: E402
from auxseg.images import read_label, read_rgb  # noqa: E402


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def overlay_figure(pairs: list[tuple[Path, Path, Path]], num_labels: int, num_classes: int,
                   ignore_values: list[int], label_ignore: int, path: Path) -> Path:
    """Rows of image | auxiliary labels | ground truth for (image, aux label, gt) path triples."""
    fig, axes = plt.subplots(len(pairs), 3, figsize=(9, 2.4 * len(pairs)), squeeze=False)
    for row, (img_p, aux_p, gt_p) in enumerate(pairs):
        image = read_rgb(img_p)
        aux = colourise(read_label(aux_p), palette(max(num_labels, 1), seed=3), [label_ignore])
        gt = colourise(read_label(gt_p), palette(max(num_classes, 1), seed=3), ignore_values)
        for col, (title, arr) in enumerate((("image", image), ("auxiliary labels", aux), ("ground truth", gt))):
            ax = axes[row][col]
            ax.imshow(arr if col == 0 else blend(image, arr, 0.55))
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title)
    return _save(fig, path)


def feature_view_figure(images: list[Path], extractor_config: dict, path: Path) -> Path:
    """Rows of image | PCA of the features | guided filter + PCA (the feature view) for validation images.

    ``extractor_config`` is the ``extractor`` section of the label folder's config: the
    views show what the auxiliary labels were clustered from.
    """
    from auxlabels.config import ExtractorConfig
    from auxlabels.feature_view import ViewParams, views_of_image
    from auxlabels.features import build_extractor
    from auxseg.config import from_dict

    cfg = from_dict(ExtractorConfig, extractor_config)
    extractor = build_extractor(cfg).to(cfg.device)
    fig, axes = plt.subplots(len(images), 3, figsize=(9, 2.4 * len(images)), squeeze=False)
    for row, img_p in enumerate(images):
        views = views_of_image(extractor, read_rgb(img_p), ViewParams(extract_max_side=cfg.max_side))
        for col, (title, key) in enumerate((("image", "image"), ("features (PCA)", "pca"),
                                            ("guided filter + PCA", "view"))):
            ax = axes[row][col]
            ax.imshow(views[key])
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title)
    return _save(fig, path)


def per_class_figure(class_names: list[str], baseline: list[dict], pretrained: list[dict], path: Path) -> Path:
    """Grouped bars of per-class IoU (mean over seeds), baseline vs pre-trained."""

    def mean_iou(results: list[dict], name: str) -> float:
        values = [r["per_class_iou"].get(name) for r in results]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else float("nan")

    x = np.arange(len(class_names))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(class_names) + 2), 3.5))
    ax.bar(x - 0.2, [mean_iou(baseline, c) for c in class_names], 0.4, label="fine-tune only (baseline)")
    ax.bar(x + 0.2, [mean_iou(pretrained, c) for c in class_names], 0.4, label="pre-train + fine-tune")
    ax.set_xticks(x, class_names, rotation=30, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title("Per-class IoU on the validation set")
    return _save(fig, path)


def read_mmengine_scalars(work_dir: Path) -> list[dict]:
    """The JSON-lines scalars mmengine's LocalVisBackend wrote under ``work_dir/<timestamp>/vis_data``."""
    rows: list[dict] = []
    for scalars in sorted(work_dir.glob("*/vis_data/scalars.json")):
        rows.extend(read_log(scalars))
    return rows


def read_log(path: Path) -> list[dict]:
    """Rows of a JSON-lines log (the pre-training loop writes ``log.jsonl``); [] if absent."""
    return read_jsonl(path) if path.is_file() else []


def curves_figure(pretrain_dir: Path, baseline_dirs: list[Path], pretrained_dirs: list[Path], path: Path) -> Path:
    """Pre-training loss; fine-tuning loss and validation mIoU, baseline vs pre-trained."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    log = [r for r in read_log(pretrain_dir / "log.jsonl") if "loss" in r]
    if log:
        axes[0].plot([r["iter"] for r in log], [r["loss"] for r in log], color="tab:purple", label="loss")
        # reference levels logged with the loss (pretrain.losses): chance and the lower bound
        for key, style, label in (("loss_chance", ":", "chance"), ("loss_floor", "--", "floor")):
            if all(key in r for r in log):
                axes[0].plot([r["iter"] for r in log], [r[key] for r in log], "k" + style, lw=1, label=label)
        axes[0].legend(fontsize=7)
    axes[0].set_title("pre-training: contrastive loss")
    axes[0].set_xlabel("iteration")
    for dirs, label, colour in ((baseline_dirs, "baseline", "tab:blue"), (pretrained_dirs, "pre-trained", "tab:orange")):
        for i, d in enumerate(dirs):
            rows = read_mmengine_scalars(d)
            train = [(r["step"], r["loss"]) for r in rows if "loss" in r and "step" in r]
            val = [(r["step"], r["mIoU"]) for r in rows if "mIoU" in r and "step" in r]
            kwargs = {"color": colour, "alpha": 0.8, "label": label if i == 0 else None}
            if train:
                axes[1].plot(*zip(*train), **kwargs)
            if val:
                axes[2].plot(*zip(*val), marker="o", **kwargs)
    axes[1].set_title("fine-tuning: training loss")
    axes[1].set_xlabel("iteration")
    axes[2].set_title("fine-tuning: validation mIoU (%)")
    axes[2].set_xlabel("iteration")
    for ax in axes[1:]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return _save(fig, path)


def _reading(base: list[float], pre: list[float], seeds: list[int]) -> str:
    """One sentence that says whether the difference is larger than the spread over seeds, and the per-seed values."""
    per_seed = "; ".join(f"seed {s}: {b:.2f} -> {p:.2f}" for s, b, p in zip(seeds, base, pre))
    if len(seeds) < 2:
        return f"One fine-tune seed ({per_seed}): no spread to compare the difference with; run more `seeds`."
    diff = statistics.mean(pre) - statistics.mean(base)
    spread = max(statistics.stdev(base), statistics.stdev(pre))
    verdict = "larger" if abs(diff) > spread else "not larger"
    overlap = "do not overlap" if min(pre) > max(base) or max(pre) < min(base) else "overlap"
    return (f"The difference is {verdict} than the larger standard deviation over seeds ({spread:.2f}); the "
            f"per-seed ranges {overlap} ({per_seed}).")


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def _eval_label_pairs(manifest: dict, labels_dir: Path, data_root: Path, count: int) -> list[tuple[Path, Path, Path]]:
    """Up to ``count`` (val image, its auxiliary label, its ground truth) path triples.

    Taken from the manifest's ``eval_images`` (paths relative to its
    ``image_root``; labels at ``labels/<rel>.png``), so the figure finds the
    labels however the dataset folders are laid out (symlinks included).
    """
    image_root = Path(manifest["image_root"])
    pairs = []
    for rel in sorted(manifest.get("eval_images", []))[:count]:
        image = image_root / rel
        aux = labels_dir / "labels" / label_rel(rel)
        gt = data_root / "valannot" / Path(rel).with_suffix(".png").name
        if image.is_file() and aux.is_file() and gt.is_file():
            pairs.append((image, aux, gt))
    return pairs


def _label_figures(manifest: dict, labels_dir: Path, data_root: Path, num_classes: int,
                   fig_dir: Path) -> list[tuple[str, Path]]:
    """The auxiliary-label overlay and the feature view of a few validation images, as ``(title, path)``;
    a figure that cannot be made is left out with a warning (it must not cost the whole report)."""
    figures: list[tuple[str, Path]] = []
    pairs = _eval_label_pairs(manifest, labels_dir, data_root, count=4)
    if not pairs:
        warnings.warn(f"{labels_dir / 'manifest.json'}: no validation image with its auxiliary label and ground "
                      "truth was found (eval_images); the report has no auxiliary-label overlay figure",
                      UserWarning, stacklevel=3)
        return figures
    figures.append(("Auxiliary labels on validation images (overlay)", overlay_figure(
        pairs, manifest["num_labels"], num_classes, manifest.get("gt_ignore_values", [255]),
        manifest["ignore_index"], fig_dir / "auxlabels_overlay.png")))
    extractor_config = (manifest.get("config") or {}).get("extractor")
    try:
        if extractor_config is None:
            raise ValueError(f"{labels_dir / 'manifest.json'} names no extractor")
        figures.append(("Feature view of the same images (extractor features, guided filter + PCA)",
                        feature_view_figure([img for img, _, _ in pairs], extractor_config,
                                            fig_dir / "feature_view.png")))
    except (AuxsegError, OSError, ValueError) as err:  # a moved checkpoint must not cost the whole report
        warnings.warn(f"the report has no feature-view figure: {err}", UserWarning, stacklevel=3)
    return figures


def write_report(work_dir: Path, data_root: Path, class_names: list[str], manifest: dict,
                 baseline: dict[int, dict], pretrained: dict[int, dict], export: str) -> Path:
    """Write ``<work_dir>/report.md`` and its figures; returns the report path."""
    fig_dir = work_dir / "figures"
    labels_dir = work_dir / "2_auxlabels"
    figures = _label_figures(manifest, labels_dir, data_root, len(class_names), fig_dir)
    seeds = sorted(baseline)
    figures.append(("Per-class IoU, baseline vs pre-trained", per_class_figure(
        class_names, [baseline[s] for s in seeds], [pretrained[s] for s in seeds], fig_dir / "per_class_iou.png")))
    figures.append(("Training curves", curves_figure(
        work_dir / "3_pretrain", [work_dir / f"1_segmenter_seed{s}" for s in seeds],
        [work_dir / f"4_finetune_seed{s}" for s in seeds], fig_dir / "training_curves.png")))

    pm = manifest.get("pmiou") or {}
    base_miou = [baseline[s]["mIoU"] for s in seeds]
    pre_miou = [pretrained[s]["mIoU"] for s in seeds]
    split = baseline[seeds[0]].get("split", {})
    lines = [
        "# Semi-supervised pre-training report",
        "",
        f"Labelled training images: {split.get('num_images')} of {split.get('num_available')} "
        f"({split.get('name') or split.get('mode')}); all training images are used, unlabelled, for "
        "auxiliary labels and pre-training. Metrics are on the validation images, never seen in training.",
        "",
        "| | mIoU (%) on val |",
        "|---|---|",
        f"| {arm_name('fine-tune only (baseline)', consistency_method(baseline.values()))} | {_spread(base_miou)} |",
        f"| {arm_name('pre-train with auxiliary labels + fine-tune', consistency_method(pretrained.values()))} | "
        f"{_spread(pre_miou)} |",
        f"| difference | {statistics.mean(pre_miou) - statistics.mean(base_miou):+.2f} |",
        "",
        _reading(base_miou, pre_miou, seeds),
        "",
        "Auxiliary labels (from the seed-0 segmenter's decoder features): "
        f"K = {manifest.get('num_labels')}, "
        f"PmIoU (Hungarian, one-to-one) = {_fmt(pm.get('pmiou'))}, "
        f"many-to-one majority = {_fmt(pm.get('majority_miou'))} (validation images).",
        "",
        "## Per-class IoU (%), mean over seeds",
        "",
        "| class | baseline | pre-trained |",
        "|---|---|---|",
    ]
    lines += _per_class_rows(class_names, baseline, pretrained, seeds)
    lines += ["", "## Figures", ""]
    for title, path in figures:
        lines += [f"### {title}", "", f"![{title}]({path.relative_to(work_dir)})", ""]
    lines += [
        "## Artefacts",
        "",
        f"- auxiliary labels: `{labels_dir}` (manifest.json)",
        f"- pre-trained backbone: `{export}`",
        *[f"- baseline seed {s}: `{baseline[s].get('work_dir')}`" for s in seeds],
        *[f"- pre-trained seed {s}: `{pretrained[s].get('work_dir')}`" for s in seeds],
        "",
    ]
    report = work_dir / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report


def _per_class_rows(class_names: list[str], baseline: dict[int, dict], pretrained: dict[int, dict],
                    seeds: list[int]) -> list[str]:
    """``| class | baseline | pre-trained |`` rows: each class's IoU averaged over the seeds."""
    rows = []
    for name in class_names:
        b = [baseline[s]["per_class_iou"].get(name) for s in seeds]
        p = [pretrained[s]["per_class_iou"].get(name) for s in seeds]
        rows.append(f"| {name} | {_mean_or_na(b)} | {_mean_or_na(p)} |")
    return rows


CONSISTENCY_NAMES = {"fixmatch": "FixMatch", "unimatch": "UniMatch"}


def consistency_method(runs) -> str | None:
    """The consistency fine-tune (fixmatch / unimatch) that an arm's runs used, from their results.json; None: labels only."""
    return ", ".join(sorted({str(r["consistency"]["method"]) for r in runs if r.get("consistency")})) or None


def arm_name(name: str, method: str | None) -> str:
    """An arm's row name with the consistency fine-tune it used (docs/consistency.md): ``... + UniMatch consistency``."""
    return name if not method else f"{name} + {CONSISTENCY_NAMES.get(method, method)} consistency"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _mean_or_na(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.mean(values):.2f}" if values else "n/a"
