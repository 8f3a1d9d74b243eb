"""The semi-supervised loop, from a folder of images and a few labels to a better segmenter.

Supplement Table 7 ("semi-supervised"): train a segmenter on the labelled few,
use it as the frozen feature extractor for auxiliary labels on all training
images, pre-train with those labels, fine-tune on the same labelled few. It
needs no outside weights. :func:`run` does it from one config:

1. ``segmenter``: fine-tune on the labelled subset from ``baseline_init``
   (one run per seed). With the same schedule and seed this *is* the
   baseline "fine-tune without pre-training", so it is reused as such.
2. ``auxlabels``: auxiliary labels for every training image from the seed-0
   segmenter's decoder features; PmIoU on the validation images.
3. ``pretrain``: contrastive pre-training on the training images and their
   auxiliary labels, from the same initialisation as the baseline.
4. ``finetune``: fine-tune the pre-trained backbone on the same labelled
   subset, with the same schedule (one run per seed).
5. ``report``: ``report.md`` with the numbers and PNG figures.

Each step writes into ``<work_dir>/<step>/`` and records ``step.json`` when
it finishes; a rerun reuses finished steps whose config is unchanged and
resumes unfinished ones through the stages' own resume.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from auxlabels.config import AuxLabelsConfig
from auxseg import console
from auxseg.config import (
    ConfigError,
    PositiveInt,
    added_section,
    dump_config,
    given_keys,
    ranged,
    to_dict,
    without_keys,
)
from auxseg.contracts.backbone import DECODER_FILENAME
from auxseg.files import atomic_write_json, atomic_write_text, read_json_object
from auxseg.paths import check_separate, resolve_path
from auxseg.synthetic import CLASS_NAMES, IGNORE_INDEX, SyntheticSpec, make_synthetic_dataset
from finetune.config import FinetuneConfig, InitConfig, SplitConfig
from pretrain.config import PretrainConfig, objective_section
from pretrain.objectives import check_plugins

STEP_FORMAT = "loop.pipeline-step/1"


@dataclass
class DataConfig:
    """A dataset in the CamVid layout: train/, trainannot/, val/, valannot/ (same file names)."""

    root: str | None = None  # the dataset folder; ignored when `synthetic` is set
    synthetic: SyntheticSpec | None = None  # generate the built-in dataset (auxseg.synthetic) into <work_dir>/data
    num_classes: PositiveInt | None = None  # M (taken from the synthetic spec when synthetic)
    class_names: list[str] = field(default_factory=list)
    ignore_values: ranged(list[int], ge=0, le=65535) = field(default_factory=lambda: [IGNORE_INDEX])  # label values to ignore (CamVid: [11])


@dataclass
class ConsistencyArmsConfig:
    """Which fine-tunes of the loop learn from the unlabelled images too (docs/consistency.md); the settings
    are ``finetune.consistency``'s. null: ``finetune.consistency.method`` as the template says."""

    baseline: Literal["none", "fixmatch", "unimatch"] | None = None  # step 1: the segmenter = the baseline
    pretrained: Literal["none", "fixmatch", "unimatch"] | None = None  # step 4: after pre-training


@dataclass
class PipelineConfig:
    """The whole loop. The stage sections are templates: the pipeline fills in paths, inits and splits."""

    work_dir: str = "runs/pipeline"
    data: DataConfig = field(default_factory=DataConfig)
    labelled: SplitConfig = field(default_factory=lambda: SplitConfig(fraction=0.1))  # the labelled few
    baseline_init: InitConfig = field(default_factory=InitConfig)  # init of the segmenter / baseline and of pre-training
    seeds: ranged(list[int], ge=0) = field(default_factory=lambda: [0])  # fine-tune seeds, for the spread of mIoU
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # steps 1 and 4 (same schedule)
    auxlabels: AuxLabelsConfig = field(default_factory=AuxLabelsConfig)  # step 2
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # step 3
    consistency: ConsistencyArmsConfig = added_section(ConsistencyArmsConfig)  # steps 1 and 4
    progress: bool = True


# ----------------------------------------------------------------------------- step bookkeeping


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """The dotted key of the first difference between two plain-data trees (None if equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            diff = _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if diff:
                return diff
        return None
    return None if a == b else (where or "<root>")


def run_step(name: str, step_dir: Path, stage_cfg: Any, fn: Callable[[], Any],
             upgrade: Callable[[Any], Any] = lambda recorded: recorded) -> Any:
    """Run one step unless ``step_dir/step.json`` says it finished with the same config.

    ``upgrade`` fills in keys that a step recorded by an older version lacks (their old meaning).
    Returns the step's result (a JSON-compatible value), fresh or recorded.
    """
    record_path = step_dir / "step.json"
    config = to_dict(stage_cfg)
    if record_path.is_file():
        record = read_json_object(record_path)
        diff = _first_difference(upgrade(record.get("config")), config)
        if diff is None:
            console.say(console.done_line(name, None, f"finished earlier, reusing {shown_path(step_dir)}"))
            return record["result"]
        raise ConfigError(
            f"{record_path}: step {name!r} finished with another config (first difference: {diff}). "
            f"Use a new work_dir, or delete {step_dir} to redo this step and the ones after it."
        )
    start = time.time()
    with console.step(name, step_dir / "console.log") as step:  # one line on the terminal, the rest in the log
        result = fn()
        step.done(f"{step_headline(step_dir, result)}  {shown_path(step_dir)}")
    atomic_write_json(
        record_path,
        {"format": STEP_FORMAT, "step": name, "config": config, "result": result,
         "elapsed_s": round(time.time() - start, 1)},
    )
    return result


def shown_path(path: Path) -> str:
    """A path as the console shows it: relative to the current folder when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def step_headline(step_dir: Path, result: Any) -> str:
    """The number a step's closing line shows: mIoU of a fine-tune, PmIoU of the labels, the last pre-training loss."""
    if isinstance(result, dict) and result.get("mIoU") is not None:
        return f"mIoU {result['mIoU']:.2f}"
    if isinstance(result, dict) and "num_labels" in result:  # the label folder's manifest
        pm = (result.get("pmiou") or {}).get("pmiou")
        return (f"PmIoU {pm:.2f}, " if pm is not None else "") + f"K={result['num_labels']}, {len(result['images'])} images"
    from pretrain.train import final_loss_line

    return final_loss_line(step_dir) or "done"  # pre-training's own log


# ----------------------------------------------------------------------------- the loop


@dataclass
class Dataset:
    root: Path
    num_classes: int
    class_names: list[str]
    ignore_values: list[int]


def prepare_data(cfg: PipelineConfig, work_dir: Path) -> Dataset:
    """Generate the synthetic dataset if asked, then check every file of the folder before the first step
    (:mod:`finetune.dataset_check`, as ``auxseg data check --dataset folder``); a problem stops the run."""
    with console.step("data", work_dir / "data.log") as step:
        data = _dataset(cfg, work_dir)
        step.done(check_data(cfg, data))
    return data


def check_data(cfg: PipelineConfig, data: Dataset) -> str:
    """Check ``data`` (layout, pairing, label values against the classes and ignore values, sizes, the
    labelled split file); raise naming the first problem, else return a one-line description."""
    from finetune.dataset_check import check_dataset, folder_layout
    from finetune.mmseg_config import load_mmseg_config, train_image_dir

    suffix = train_image_dir(load_mmseg_config(cfg.finetune.mmseg_config))[1]  # what the fine-tune will look for
    report = check_dataset(data.root, folder_layout(data.num_classes, data.ignore_values, suffix),
                           split_files=[resolve_path(cfg.labelled.file)] if cfg.labelled.file else [])
    report.raise_if_problems(f"data.root: {data.root}")
    count = {sp.name: sp.images for sp in report.splits}
    return (f"{count['train']} train / {count['val']} val images, {data.num_classes} classes, no problems  "
            f"{shown_path(data.root)}")


def _dataset(cfg: PipelineConfig, work_dir: Path) -> Dataset:
    """Generate the synthetic dataset if asked, and check the folder layout."""
    data = cfg.data
    if data.synthetic is not None:
        root = work_dir / "data"
        spec = data.synthetic
        marker = root / "dataset.json"
        if not marker.is_file() or read_json_object(marker).get("spec") != dataclasses.asdict(spec):
            print(f"[pipeline] generating the built-in dataset in {root}")
            make_synthetic_dataset(root, spec)
        names = list(CLASS_NAMES[: spec.num_classes])
        return Dataset(root, spec.num_classes, names, [IGNORE_INDEX])
    if not data.root:
        raise ConfigError("data.root: required (a CamVid-layout folder), or set data.synthetic")
    root = resolve_path(data.root)
    for sub in ("train", "trainannot", "val", "valannot"):
        if not (root / sub).is_dir():
            raise ConfigError(f"data.root: {root} has no {sub}/ folder (expected the CamVid layout)")
    if data.num_classes is None:
        raise ConfigError("data.num_classes: required for a dataset folder")
    if data.class_names and len(data.class_names) != data.num_classes:
        raise ConfigError(f"data.class_names: {len(data.class_names)} names for num_classes={data.num_classes}")
    names = data.class_names or [f"class{i}" for i in range(data.num_classes)]
    return Dataset(root, data.num_classes, names, list(data.ignore_values))


def check_head_classes(cfg: PipelineConfig, data: Dataset) -> None:
    """The fine-tune model's heads must predict the dataset's classes; say so before any training."""
    from finetune.mmseg_config import load_mmseg_config

    model = load_mmseg_config(cfg.finetune.mmseg_config).get("model", {})
    for head in ("decode_head", "auxiliary_head"):
        heads = model.get(head) or []
        for one in heads if isinstance(heads, list) else [heads]:
            found = one.get("num_classes")
            if found is not None and found != data.num_classes:
                raise ConfigError(
                    f"finetune.mmseg_config: {cfg.finetune.mmseg_config} has model.{head}.num_classes={found}, "
                    f"but the dataset has {data.num_classes} classes (data.num_classes)")


# Stage-template keys the pipeline sets itself (besides paths and progress bars, which it always
# fills in): a template that sets one to another value would be silently overruled, so it is an
# error that says where the setting belongs instead.
OWNED_KEYS: dict[str, str] = {
    "finetune.split": "set `labelled` (the labelled subset every fine-tune uses)",
    "finetune.init": "set `baseline_init` (the segmenter starts from it; step 4 from the pre-trained export)",
    "finetune.seed": "set `seeds`",
    "auxlabels.num_classes": "set `data.num_classes`",
    "auxlabels.class_names": "set `data.class_names`",
    "auxlabels.gt_ignore_values": "set `data.ignore_values`",
    "auxlabels.extractor.name": "the pipeline's extractor is always the seed-0 segmenter (mmseg)",
    "auxlabels.extractor.checkpoint": "the pipeline's extractor is always the seed-0 segmenter's checkpoint",
    "auxlabels.extractor.random_init": "the pipeline's extractor is always the trained segmenter",
    "auxlabels.extractor.config": "the segmenter's own mmseg_config.py is used",
    "pretrain.model.arch": "the backbone follows `finetune.mmseg_config` (choose an r18 or r50 config there)",
    "pretrain.model.stem": "the stem follows `finetune.mmseg_config` (ResNetV1c = deep, ResNet = plain)",
    "pretrain.model.output_stride": "the output stride follows the backbone strides of `finetune.mmseg_config` "
                                    "(-d8 configs: 8, -d16: 16)",
    "pretrain.model.init": "set `baseline_init`",
}


def _value(cfg: Any, dotted: str) -> Any:
    """The plain-data value of a dotted key of a config dataclass."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg


def _is_given(cfg: Any, dotted: str) -> bool:
    """Whether the config files or overrides set this dotted key (rather than leaving its default)."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        if part not in given_keys(cfg):
            return False
        cfg = getattr(cfg, part)
    return leaf in given_keys(cfg)


def check_owned_keys(cfg: PipelineConfig, filled: dict[str, Any]) -> None:
    """Refuse a stage template that sets a key of :data:`OWNED_KEYS` to a value the pipeline would overrule.

    ``filled`` maps each section name ("finetune", "auxlabels", "pretrain") to the
    stage config the pipeline builds from it. A key conflicts when the template
    sets it (in the pipeline config, a stage preset it inherits, or an override)
    to something other than the pipeline's value.
    """
    for key, instead in OWNED_KEYS.items():
        section, rest = key.split(".", 1)
        given, used = _value(getattr(cfg, section), rest), _value(filled[section], rest)
        if _is_given(cfg, key) and given != used:
            raise ConfigError(f"{key}: the pipeline sets this key itself (to {used!r}), so {given!r} would be "
                              f"ignored; {instead}, and remove it from the {section} section")


def check_priors(cfg: PipelineConfig) -> None:
    """Refuse a pre-training objective that reads soft priors when the auxlabels step will write none.

    Checked before any training: otherwise the run would stop only at the
    pre-training step, after the segmenter and the labelling.
    """
    loss = cfg.pretrain.loss
    if getattr(objective_section(loss), "use_priors", False) and not cfg.auxlabels.soft_labels.enabled:
        raise ConfigError(f"pretrain.loss.{loss.name}.use_priors: true needs soft priors from the auxlabels step; "
                          "set auxlabels.soft_labels.enabled=true (docs/pipeline.md, 'Other objectives')")


def shown_config(cfg: PipelineConfig) -> str:
    """The resolved pipeline config as YAML, without the stage keys the pipeline sets itself.

    What ``--print-config`` prints and ``<work_dir>/config.yaml`` holds: run
    again as a config, it gives the same run (the owned keys are left out, so
    their defaults never conflict with the pipeline's values).
    """
    data = without_keys(to_dict(cfg), OWNED_KEYS)
    return "# stage keys that the pipeline sets itself are left out (docs/pipeline.md)\n" + dump_config(data)


def planned_backbone(cfg: PipelineConfig) -> tuple[int | None, str | None]:
    """(depth, mmseg backbone type) the segmenter will have, read before any training.

    The depth is the mmseg config's; the type is the config's for a random
    init, else the one the init checkpoint's stem implies (as ``finetune`` sets it).
    """
    from auxseg.contracts.backbone import read_backbone_weights

    backbone = _mmseg_backbone(cfg.finetune.mmseg_config)
    depth, backbone_type = backbone.get("depth"), backbone.get("type")
    if cfg.baseline_init.type != "random" and cfg.baseline_init.checkpoint:
        backbone_type = read_backbone_weights(resolve_path(cfg.baseline_init.checkpoint), cfg.baseline_init.type).mmseg_type
    return depth, backbone_type


def planned_output_stride(cfg: PipelineConfig) -> int:
    """The output stride of the segmenter's backbone (``model.backbone`` strides and dilations of
    ``finetune.mmseg_config``), which pre-training must share: 8 or 16."""
    from auxseg.nets.dilated_resnet import MMSEG_LAYOUTS

    backbone = _mmseg_backbone(cfg.finetune.mmseg_config)
    layout = (tuple(backbone.get("strides", (1, 2, 2, 2))), tuple(backbone.get("dilations", (1, 1, 1, 1))))
    contract = bool(backbone.get("contract_dilation", False))  # defaults: mmseg ResNet's
    for output_stride, expected in MMSEG_LAYOUTS.items():
        if layout == expected and contract:
            return output_stride
    raise ConfigError(f"finetune.mmseg_config: {cfg.finetune.mmseg_config} has backbone strides {layout[0]}, "
                      f"dilations {layout[1]}, contract_dilation={contract}; pre-training builds output stride 8 "
                      f"(strides {MMSEG_LAYOUTS[8][0]}, dilations {MMSEG_LAYOUTS[8][1]}) or 16 (strides {MMSEG_LAYOUTS[16][0]}, "
                      f"dilations {MMSEG_LAYOUTS[16][1]}), both with contract_dilation=True")


@functools.lru_cache(maxsize=8)
def _mmseg_backbone(mmseg_config: str) -> dict:
    """``model.backbone`` of an mmseg config file (read once per process and path; callers only read it)."""
    from finetune.mmseg_config import load_mmseg_config

    return dict(load_mmseg_config(mmseg_config).get("model", {}).get("backbone", {}))


def finetune_config(cfg: PipelineConfig, data: Dataset, work_dir: Path, init: InitConfig, seed: int) -> FinetuneConfig:
    """A fine-tune of the loop. One from ``baseline_init`` is the baseline arm's, any other (a pre-training
    export) the pre-trained arm's: ``consistency.baseline`` / ``consistency.pretrained`` pick its method."""
    ft = copy.deepcopy(cfg.finetune)
    ft.data_root = str(data.root)
    ft.work_dir = str(work_dir)
    ft.split = copy.deepcopy(cfg.labelled)
    ft.init = copy.deepcopy(init)
    ft.seed = seed
    method = cfg.consistency.baseline if init == cfg.baseline_init else cfg.consistency.pretrained
    if method is not None:
        ft.consistency.method = method
    return ft


def last_checkpoint(work_dir: Path) -> Path:
    """The newest mmengine checkpoint of a fine-tune run (named in its ``last_checkpoint`` file)."""
    marker = work_dir / "last_checkpoint"
    if not marker.is_file():
        raise FileNotFoundError(f"{work_dir}: no last_checkpoint file; did the fine-tune run finish?")
    path = Path(marker.read_text().strip())
    return path if path.is_absolute() else work_dir / path.name


def auxlabels_config(cfg: PipelineConfig, data: Dataset, out_dir: Path, segmenter_ckpt: Path) -> AuxLabelsConfig:
    aux = copy.deepcopy(cfg.auxlabels)
    aux.image_dir = str(data.root / "train")
    aux.image_list = None
    aux.gt_dir = None  # ground truth of training images is never looked at
    aux.eval_image_dir = str(data.root / "val")
    aux.eval_gt_dir = str(data.root / "valannot")
    aux.num_classes = data.num_classes
    aux.class_names = list(data.class_names)
    aux.gt_ignore_values = list(data.ignore_values)
    aux.out_dir = str(out_dir)
    aux.extractor.name = "mmseg"
    aux.extractor.checkpoint = str(segmenter_ckpt)
    aux.extractor.random_init = False
    aux.extractor.config = str(segmenter_ckpt.parent / "mmseg_config.py")  # written by the segmenter's fine-tune
    aux.progress = cfg.progress
    return aux


def pretrain_config(cfg: PipelineConfig, out_dir: Path, labels_dir: Path, depth: int | None,
                    backbone_type: str | None) -> PretrainConfig:
    """The pre-training step's config; the backbone is the fine-tuned one: same depth and stem as the baseline."""
    pre = copy.deepcopy(cfg.pretrain)
    pre.out_dir = str(out_dir)
    pre.data.source = "folder"
    pre.data.labels = str(labels_dir)
    if depth is not None:
        pre.model.arch = f"resnet{depth}"
    if backbone_type is not None:
        pre.model.stem = "deep" if backbone_type == "ResNetV1c" else "plain"
    pre.model.output_stride = planned_output_stride(cfg)
    pre.model.init = cfg.baseline_init.checkpoint if cfg.baseline_init.type != "random" else "random"
    pre.train.progress = cfg.progress
    return pre


def export_init(export: str) -> InitConfig:
    """The fine-tune initialisation from a pre-training export: its backbone, and the pre-trained decoder
    next to it when there is one (written with ``pretrain.model.decoder=aspp``)."""
    decoder = Path(export).parent / DECODER_FILENAME
    return InitConfig(type="export", checkpoint=export, decoder=str(decoder) if decoder.is_file() else None)


def run(cfg: PipelineConfig) -> Path:
    """Run the whole loop; returns the path of the report."""
    from auxlabels.pipeline import run as run_auxlabels
    from finetune.run import run as run_finetune
    from pretrain.checkpoint import with_added_defaults
    from pretrain.train import run as run_pretrain

    work_dir, data = _checked_start(cfg)
    seed0 = cfg.seeds[0]
    labels_dir, pre_dir = work_dir / "2_auxlabels", work_dir / "3_pretrain"
    segmenter0 = work_dir / f"1_segmenter_seed{seed0}"

    baseline = {}
    for seed in cfg.seeds:
        step_dir = work_dir / f"1_segmenter_seed{seed}"
        ft = finetune_config(cfg, data, step_dir, cfg.baseline_init, seed)
        baseline[seed] = run_step(f"segmenter (seed {seed})", step_dir, ft, lambda ft=ft: run_finetune(ft))

    segmenter_ckpt = last_checkpoint(segmenter0)
    aux = auxlabels_config(cfg, data, labels_dir, segmenter_ckpt)
    init = baseline[seed0]["init"]
    pre = pretrain_config(cfg, pre_dir, labels_dir, init.get("depth"), init.get("backbone_type"))
    manifest = run_step("auxlabels", labels_dir, aux, lambda: run_auxlabels(aux))

    export = run_step("pretrain", pre_dir, pre, lambda: str(run_pretrain(pre)), upgrade=with_added_defaults)

    pretrained = {}
    for seed in cfg.seeds:
        step_dir = work_dir / f"4_finetune_seed{seed}"
        ft = finetune_config(cfg, data, step_dir, export_init(export), seed)
        pretrained[seed] = run_step(f"fine-tune (seed {seed})", step_dir, ft, lambda ft=ft: run_finetune(ft))

    return _finish(work_dir, data, manifest, baseline, pretrained, export)


def _checked_start(cfg: PipelineConfig) -> tuple[Path, Dataset]:
    """Every check before any training (plug-ins, folders, data, head classes, template keys the pipeline owns,
    priors); then the work_dir with the shown ``config.yaml`` and the prepared data."""
    if not cfg.seeds:
        raise ConfigError("seeds: give at least one seed")
    check_plugins()  # pre-training needs the objectives: refuse before the first step, not after an hour
    work_dir = resolve_path(cfg.work_dir)
    check_separate(work_dir, "work_dir", {"data.root": cfg.data.root})
    work_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg, work_dir)
    check_head_classes(cfg, data)
    seed0, labels_dir = cfg.seeds[0], work_dir / "2_auxlabels"
    segmenter0 = work_dir / f"1_segmenter_seed{seed0}"
    check_owned_keys(cfg, {  # before any training: a template key that would be overruled is an error
        "finetune": finetune_config(cfg, data, segmenter0, cfg.baseline_init, seed0),
        "auxlabels": auxlabels_config(cfg, data, labels_dir, segmenter0 / "iter.pth"),
        "pretrain": pretrain_config(cfg, work_dir / "3_pretrain", labels_dir, *planned_backbone(cfg)),
    })
    check_priors(cfg)
    atomic_write_text(work_dir / "config.yaml", shown_config(cfg))  # after the checks: a refused config leaves none
    return work_dir, data


def _finish(work_dir: Path, data: Dataset, manifest: dict, baseline: dict, pretrained: dict, export: str) -> Path:
    """The report, ``summary.json`` and the closing lines on the console; returns the report's path."""
    from loop.report import consistency_method, write_report

    with console.step("report", work_dir / "report.log") as step:
        report = write_report(work_dir, data_root=data.root, class_names=data.class_names,
                              manifest=manifest, baseline=baseline, pretrained=pretrained, export=export)
        step.done(f"{len(list((work_dir / 'figures').glob('*.png')))} figures  {shown_path(report)}")
    summary = {
        "baseline_mIoU": {str(s): r["mIoU"] for s, r in baseline.items()},
        "pretrained_mIoU": {str(s): r["mIoU"] for s, r in pretrained.items()},
        "pmiou": (manifest.get("pmiou") or {}),
        "report": str(report),
    }
    methods = {arm: consistency_method(runs.values()) for arm, runs in (("baseline", baseline), ("pretrained", pretrained))}
    if any(methods.values()):
        summary["consistency"] = methods
    atomic_write_json(work_dir / "summary.json", summary)
    for line in result_table(summary, manifest):
        console.say(line)
    return report


def result_table(summary: dict, manifest: dict) -> list[str]:
    """The few lines that end a run: mIoU of both models over the seeds, their difference, PmIoU, the report."""
    import statistics

    def spread(values: list[float]) -> str:
        return f"{values[0]:.2f}" if len(values) == 1 else f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"

    from loop.report import arm_name

    base, pre = list(summary["baseline_mIoU"].values()), list(summary["pretrained_mIoU"].values())
    pm = (manifest.get("pmiou") or {}).get("pmiou")
    methods = summary.get("consistency") or {}
    rows = [("", f"mIoU on val, {len(base)} seed{'s' if len(base) > 1 else ''}"),
            (arm_name("fine-tune only (baseline)", methods.get("baseline")), spread(base)),
            (arm_name("pre-train with auxiliary labels + fine-tune", methods.get("pretrained")), spread(pre)),
            ("difference", f"{statistics.mean(pre) - statistics.mean(base):+.2f}"),
            ("auxiliary labels", (f"PmIoU {pm:.2f}, " if pm is not None else "") + f"K={manifest.get('num_labels')}"),
            ("report", shown_path(Path(summary["report"])))]
    width = max(len(name) for name, _ in rows)
    return [""] + [f"{name:<{width}}   {value}" for name, value in rows]
