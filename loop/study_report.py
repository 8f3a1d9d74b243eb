"""The report of a study: ``study.json``, ``study.md`` and figures, from the finished cells on disk.

Numbers come from :mod:`loop.study_stats` (scipy's t-intervals). ``study.json``
holds no timings or absolute times, so a study that was killed and resumed
writes the same file as one that ran straight through.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from auxseg.files import atomic_write_json, atomic_write_text, read_json_object
from loop.report import read_log
from loop.study import STUDY_FORMAT, Cell, Plan, cell_dir, is_done
from loop.study_stats import (
    instability,
    loss_not_falling,
    paired_difference,
    summarise,
    variance_components,
)


def _run_record(p: Plan, run: Cell) -> dict:
    folder = cell_dir(p.work_dir, run.key)
    result = read_json_object(folder / "step.json")["result"]
    rel = f"cells/{run.key}"  # paths relative to the study's work_dir: the file does not depend on where it ran
    record = {"arm": run.arm, "fraction": run.fraction, "pretrain_seed": run.pretrain_seed,
              "finetune_seed": run.finetune_seed, "mIoU": result["mIoU"], "cell": run.key,
              "config": f"{rel}/config.yaml", "log": f"{rel}/console.log",
              "checkpoint": f"{rel}/iter_{result['iteration']}.pth",
              "flags": instability(result.get("val_history", []), result.get("max_iters"))}
    record["per_class_iou"] = result.get("per_class_iou") or {}
    if result.get("mIoU_r") is not None:  # fine-tunes from priors: argmax r (docs/finetune.md)
        record["mIoU_r"] = result["mIoU_r"]
    if result.get("consistency"):  # consistency fine-tunes: did the pseudo-labels pass the threshold, and were they right
        keep = ("iter", "mask_ratio", "pseudo_acc", "pseudo_acc_all")
        record["consistency"] = {"method": result["consistency"]["method"],
                                 "history": [{k: h[k] for k in keep if k in h}
                                             for h in result["consistency"]["train_history"]]}
    if run.deps:  # the pre-training this fine-tune started from
        pre = cell_dir(p.work_dir, run.deps[0])
        labels = cell_dir(p.work_dir, p.cells[run.deps[0]].deps[0]) / "pmiou.json"
        if labels.is_file():  # the quality of the auxiliary labels it pre-trained on
            record["pmiou"] = read_json_object(labels)["pmiou"]
        log = [r["loss"] for r in read_log(pre / "log.jsonl") if "loss" in r]
        flag = loss_not_falling(log)
        export = Path(read_json_object(pre / "step.json")["result"])
        record["pretrain"] = {"cell": run.deps[0], "export": f"cells/{run.deps[0]}/{export.name}",
                              "log": f"cells/{run.deps[0]}/log.jsonl"}
        if flag:
            record["flags"].append(f"pre-training {flag}")
    return record


def collect(p: Plan) -> dict:
    """Everything the report says, as plain data (``study.json``)."""
    missing = [r.key for r in p.runs if not is_done(p.work_dir, r.key)]
    if missing:
        raise FileNotFoundError(f"{p.work_dir}: {len(missing)} runs are not finished (e.g. cells/{missing[0]}); "
                                "run the study first")
    records = [_run_record(p, r) for r in p.runs]
    study = p.study
    arms = {a.name: a for a in study.arms}
    out: dict[str, Any] = {"format": STUDY_FORMAT, "reference": study.reference,
                           "pretrain_seeds": list(study.pretrain_seeds), "finetune_seeds": list(study.finetune_seeds),
                           "arms": {}, "differences": {}, "runs": records}
    for fraction in p.fractions:
        for name, arm in arms.items():
            mine = [r for r in records if r["arm"] == name and r["fraction"] == fraction]
            entry = summarise([r["mIoU"] for r in mine]).as_dict()
            entry["pretrains"] = arm.pretrain
            entry["overrides"] = list(arm.overrides)
            entry.update(_secondary(mine))
            if arm.pretrain:
                grid = [[_score(mine, ps, fs) for fs in study.finetune_seeds] for ps in study.pretrain_seeds]
                entry["variance_components"] = variance_components(grid)
                entry["pretrain_seed_means"] = [sum(row) / len(row) for row in grid]
            out["arms"].setdefault(fraction, {})[name] = entry
            if name != study.reference:
                out["differences"].setdefault(fraction, {})[name] = _difference(
                    records, name, study.reference, fraction, arm.pretrain, arms[study.reference].pretrain, study)
    return out


def _secondary(runs: list[dict]) -> dict:
    """What an arm's runs say beside mIoU: per-class IoU (mean over runs), ``mIoU_r`` (runs from priors) and
    the PmIoU of the auxiliary labels it pre-trained on (one label folder per arm and fraction)."""
    out: dict[str, Any] = {}
    classes = list(runs[0]["per_class_iou"]) if runs else []
    per_class = {c: [r["per_class_iou"].get(c) for r in runs] for c in classes}
    out["per_class_iou"] = {c: (None if any(v is None for v in vs) else sum(vs) / len(vs))
                            for c, vs in per_class.items()}
    if runs and all("mIoU_r" in r for r in runs):
        out["mIoU_r"] = summarise([r["mIoU_r"] for r in runs]).as_dict()
    if runs and all("consistency" in r for r in runs):
        out["consistency"] = _pseudo_label_curve(runs)
    pm = sorted({r["pmiou"] for r in runs if "pmiou" in r})
    if pm:
        out["pmiou"] = pm[0] if len(pm) == 1 else pm
    return out


def _pseudo_label_curve(runs: list[dict]) -> list[dict]:
    """Per logged interval of consistency fine-tunes: the mean over the runs of the share of unlabelled pixels
    above the threshold and of the pseudo-labels' accuracy (confident ones, all), where the runs logged it."""
    curve = []
    for i, point in enumerate(runs[0]["consistency"]["history"]):
        row = {"iter": point["iter"]}
        for key in ("mask_ratio", "pseudo_acc", "pseudo_acc_all"):
            values = [r["consistency"]["history"][i].get(key) for r in runs if len(r["consistency"]["history"]) > i]
            if values and None not in values:
                row[key] = sum(values) / len(values)
        curve.append(row)
    return curve


def _score(records: list[dict], pretrain_seed: int | None, finetune_seed: int) -> float:
    for r in records:
        if r["pretrain_seed"] == pretrain_seed and r["finetune_seed"] == finetune_seed:
            return r["mIoU"]
    return math.nan


def _difference(records: list[dict], arm: str, ref: str, fraction: str, arm_pre: bool, ref_pre: bool, study) -> dict:
    """The paired difference of ``arm`` to ``ref`` on one fraction (pairs share the split and fine-tune seed).

    When either arm pre-trains with several seeds, one pair is one pre-training
    seed: the mean over the fine-tune seeds of ``arm(p, f) - ref(p or -, f)``.
    That interval counts the pre-training seed's variation, which pairs of single
    runs would hide. The all-runs interval (each (p, f) a pair) is reported
    beside it as ``per_run``.
    """
    a = [r for r in records if r["arm"] == arm and r["fraction"] == fraction]
    r_ = [r for r in records if r["arm"] == ref and r["fraction"] == fraction]
    pre_seeds = list(study.pretrain_seeds) if (arm_pre or ref_pre) else [None]

    def pair(p, f):
        return _score(a, p if arm_pre else None, f), _score(r_, p if ref_pre else None, f)

    per_run = [pair(p, f) for p in pre_seeds for f in study.finetune_seeds]
    run_diff = paired_difference([x for x, _ in per_run], [y for _, y in per_run], "run pair")
    if len(pre_seeds) > 1:
        means = [(sum(pair(p, f)[0] for f in study.finetune_seeds) / len(study.finetune_seeds),
                  sum(pair(p, f)[1] for f in study.finetune_seeds) / len(study.finetune_seeds)) for p in pre_seeds]
        main = paired_difference([x for x, _ in means], [y for _, y in means], "pre-training seed")
    else:
        main = paired_difference([x for x, _ in per_run], [y for _, y in per_run], "fine-tune seed")
    entry = main.as_dict()
    entry["verdict"] = main.verdict(arm, ref)
    entry["per_run"] = run_diff.as_dict()
    return entry


def _fmt(entry: dict) -> str:
    ci = entry.get("ci95")
    sd = "" if entry.get("sd") is None else f" ± {entry['sd']:.2f}"
    return f"{entry['mean']:.2f}{sd}" + ("" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]")


def markdown(p: Plan, data: dict, figures: list[Path]) -> str:
    """``study.md``: per arm, the paired differences with verdicts, the sources of spread, flags, every run."""
    study = p.study
    pre = (f"pre-training seeds {list(study.pretrain_seeds)}" if any(a.pretrain for a in study.arms)
           else "no arm pre-trains")
    lines = ["# Study report", "",
             f"Base pipeline: `{study.pipeline}`; reference arm: **{study.reference}**; {pre}, fine-tune seeds "
             f"{list(study.finetune_seeds)}. mIoU (%) on the validation "
             "images. Intervals are 95% Student-t intervals (scipy.stats); docs/study.md says what each assumes.", ""]
    for fraction in p.fractions:
        lines += [f"## Labelled: {fraction}", ""] + _arm_table(data["arms"][fraction])
        lines += ["", "Paired differences to the reference (pairs share the labelled split and the fine-tune seed):", ""]
        for diff in data["differences"].get(fraction, {}).values():
            run = diff["per_run"]
            extra = ("" if run["ci95"] is None or diff["unit"] != "pre-training seed" else
                     f" (treating all {run['n']} run pairs as independent: [{run['ci95'][0]:+.2f}, {run['ci95'][1]:+.2f}])")
            lines.append(f"- {diff['verdict']}{extra}")
        comps = [(n, e["variance_components"]) for n, e in data["arms"][fraction].items() if e.get("variance_components")]
        if comps:
            lines += ["", "Where the spread comes from (share of the variance of one run):", "",
                      "| arm | pre-training seed | fine-tune seed | residual | sd of one run |", "|---|---|---|---|---|"]
            for name, c in comps:
                s, v = c["share"], c["variance"]
                lines.append(f"| {name} | {s['pretrain_seed']:.0%} | {s['finetune_seed']:.0%} | {s['residual']:.0%} | "
                             f"{math.sqrt(sum(v.values())):.2f} |")
        arms = data["arms"][fraction]
        lines += _per_class_table(arms) + _pmiou_order(arms) + _consistency_table(arms) + [""]
    flagged = [r for r in data["runs"] if r["flags"]]
    lines += ["## Unstable runs", ""]
    lines += [f"- {r['arm']} {r['fraction']}"
              + ("" if r["pretrain_seed"] is None else f" pre-seed {r['pretrain_seed']}") + f" seed {r['finetune_seed']}: "
              f"{'; '.join(r['flags'])} (`cells/{r['cell']}`)" for r in flagged] or ["None flagged."]
    lines += ["", "## Figures", ""] + [f"![{f.stem}]({f.parent.name}/{f.name})" for f in figures]
    lines += ["", "## Every run", "", "| arm | labelled | pre-training seed | fine-tune seed | mIoU | cell |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['arm']} | {r['fraction']} | {'-' if r['pretrain_seed'] is None else r['pretrain_seed']} | "
              f"{r['finetune_seed']} | {r['mIoU']:.2f} | `cells/{r['cell']}` |" for r in data["runs"]]
    lines += ["", "Each cell folder holds its `config.yaml`, its logs and checkpoints, and `step.json`; "
              "`auxseg finetune cells/<cell>/config.yaml` reruns one alone.", ""]
    return "\n".join(lines)


def _arm_table(arms: dict[str, dict]) -> list[str]:
    """Per arm: runs, mIoU with its interval, and where any arm has them, PmIoU of its labels and mIoU_r."""
    pm = any("pmiou" in e for e in arms.values())
    r_ = any("mIoU_r" in e for e in arms.values())
    head = ["arm", "runs", "mIoU mean ± sd [95% CI]"] + ["PmIoU of its labels"] * pm + ["mIoU_r"] * r_ + ["overrides"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in arms.items():
        over = ", ".join(f"`{o}`" for o in e["overrides"]) or ("fine-tune only" if not e["pretrains"] else "-")
        pmiou = e.get("pmiou", "-")
        cells = [name, str(e["n"]), _fmt(e)]
        cells += [f"{pmiou:.2f}" if isinstance(pmiou, float) else str(pmiou)] * pm
        cells += [_fmt(e["mIoU_r"]) if "mIoU_r" in e else "-"] * r_
        lines.append("| " + " | ".join(cells + [over]) + " |")
    return lines


def _per_class_table(arms: dict[str, dict]) -> list[str]:
    """IoU per class (mean over the arm's runs), one row per arm."""
    classes = next((list(e["per_class_iou"]) for e in arms.values() if e.get("per_class_iou")), [])
    if not classes:
        return []
    lines = ["", "IoU per class (%, mean over the arm's runs):", "",
             "| arm | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for name, e in arms.items():
        values = [e["per_class_iou"].get(c) for c in classes]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in values) + " |")
    return lines


def _consistency_table(arms: dict[str, dict]) -> list[str]:
    """Arms that fine-tune with consistency: the pseudo-labels over training (docs/consistency.md)."""
    rows = [(n, p) for n, e in arms.items() for p in e.get("consistency", [])]
    if not rows:
        return []

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    lines = ["", "Consistency fine-tunes, mean over the arm's runs per logged interval: the share of unlabelled "
             "pixels at or above the threshold (they are the only ones trained on), and the accuracy against the "
             "ground truth of those confident pseudo-labels and of all of them (scored, never trained on):", "",
             "| arm | up to iteration | above threshold | accuracy, confident | accuracy, all |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {p['iter']} | {pct(p.get('mask_ratio'))} | {pct(p.get('pseudo_acc'))} | "
              f"{pct(p.get('pseudo_acc_all'))} |" for n, p in rows]
    return lines


def _pmiou_order(arms: dict[str, dict]) -> list[str]:
    """Does label quality predict the gain? With three or more arms whose labels have a PmIoU: both orders and
    Spearman's rank correlation (scipy.stats.spearmanr) between PmIoU and mean mIoU."""
    from scipy.stats import spearmanr

    rated = [(n, e["pmiou"], e["mean"]) for n, e in arms.items() if isinstance(e.get("pmiou"), float)]
    if len(rated) < 3:
        return []
    rho = float(spearmanr([r[1] for r in rated], [r[2] for r in rated]).statistic)
    by = {i: " > ".join(n for n, *_ in sorted(rated, key=lambda r: -r[i])) for i in (1, 2)}
    return ["", f"Order by PmIoU of the labels: {by[1]}. Order by mean mIoU: {by[2]}. Spearman rank correlation over "
            f"{len(rated)} arms: " + ("undefined" if rho != rho else f"{rho:.2f}") + "."]


def figures(p: Plan, data: dict, folder: Path) -> list[Path]:
    """Every run's score per arm (a strip plot per fraction), and mIoU against the labelled fraction when
    there are several fractions (one band, the 95% interval, per arm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    names = [a.name for a in p.study.arms]
    fig, axes = plt.subplots(1, len(p.fractions), figsize=(1.6 + 1.3 * len(names) * len(p.fractions), 3.6),
                             squeeze=False)
    for ax, fraction in zip(axes[0], p.fractions):
        for i, name in enumerate(names):
            runs = [r for r in data["runs"] if r["arm"] == name and r["fraction"] == fraction]
            seeds = sorted({r["pretrain_seed"] for r in runs}, key=lambda s: -1 if s is None else s)
            for r in runs:
                dx = 0.25 * (seeds.index(r["pretrain_seed"]) - (len(seeds) - 1) / 2) / max(1, len(seeds))
                ax.plot(i + dx, r["mIoU"], "o", ms=5, alpha=0.8, color=f"C{seeds.index(r['pretrain_seed'])}")
            entry = data["arms"][fraction][name]
            ax.hlines(entry["mean"], i - 0.3, i + 0.3, color="k")
            if entry["ci95"]:
                ax.vlines(i + 0.22, *entry["ci95"], color="k", lw=1.5)
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_title(f"labelled {fraction}")
        ax.set_ylabel("mIoU (%) on val")
    fig.suptitle("every run (colour: pre-training seed), mean and 95% CI", fontsize=9)
    fig.tight_layout()
    path = folder / "runs.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append(path)
    if len(p.fractions) > 1 and p.study.fractions:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        xs = [100 * f for f in p.study.fractions]
        for i, name in enumerate(names):
            entries = [data["arms"][fr][name] for fr in p.fractions]
            ax.plot(xs, [e["mean"] for e in entries], "o-", color=f"C{i}", label=name)
            if all(e["ci95"] for e in entries):
                ax.fill_between(xs, [e["ci95"][0] for e in entries], [e["ci95"][1] for e in entries], color=f"C{i}",
                                alpha=0.2)
        ax.set_xlabel("labelled training images (%)")
        ax.set_ylabel("mIoU (%) on val")
        ax.legend()
        fig.tight_layout()
        path = folder / "label_efficiency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out


def write(p: Plan) -> Path:
    """Write ``<report>.json``, ``<report>.md`` and ``<report>_figures/`` (``report`` defaults to ``study``)
    under the study's work_dir; returns the .md path."""
    data = collect(p)
    name = p.study.report
    atomic_write_json(p.work_dir / f"{name}.json", data)
    figs = figures(p, data, p.work_dir / f"{name}_figures")
    path = p.work_dir / f"{name}.md"
    atomic_write_text(path, markdown(p, data, figs))
    return path
