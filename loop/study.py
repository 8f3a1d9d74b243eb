"""``auxseg study CONFIG``: one comparison run over seeds, with paired differences and intervals.

A study is a base pipeline config plus *arms* (a name and the pipeline
overrides that define it; ``pretrain: false`` for fine-tuning alone), one of
them the reference, *pre-training seeds*, *fine-tune seeds* and labelled
fractions. It plans every step of every (arm, labelled fraction, pre-training
seed, fine-tune seed) cell as the pipeline would run it (docs/pipeline.md):

    segmenter (fraction, fine-tune seed)            fine-tuned from baseline_init; the "none" arm's runs
      -> auxiliary labels (fraction, arm's labelling settings)   from the segmenter of the first fine-tune seed
      -> pre-training (fraction, arm, pre-training seed)
      -> fine-tune (fraction, arm, pre-training seed, fine-tune seed)   backbone and decoder from the export

A step is identified by the config it runs (a hash of it and of the steps it
reads), so steps whose inputs are equal are shared between arms, and every arm
is initialised by the same rule (:func:`loop.pipeline.export_init`). A step
records ``step.json`` when it finishes (:func:`loop.pipeline.run_step`): a
rerun reuses finished steps and redoes a half-written one from scratch. Steps
of one level are independent; several workers (``--workers N``, or the tasks of
a SLURM array running the same command) share the work through a lock per step.
The report (``study.md``, ``study.json``, figures) is :mod:`loop.study_report`.
"""

from __future__ import annotations

import copy
import fcntl
import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auxseg.config import (
    ConfigError,
    Seed,
    apply_overrides,
    from_dict,
    load_config,
    ranged,
    to_dict,
    without_keys,
)
from auxseg.files import atomic_write_json, read_json_object, sha256_file
from auxseg.paths import check_separate, resolve_path
from loop.pipeline import (
    Dataset,
    PipelineConfig,
    auxlabels_config,
    check_head_classes,
    check_owned_keys,
    check_priors,
    export_init,
    finetune_config,
    last_checkpoint,
    planned_backbone,
    prepare_data,
    pretrain_config,
    run_step,
)

STUDY_FORMAT = "auxseg.study/1"
KINDS = ("segmenter", "auxlabels", "pretrain", "finetune")
# Seconds per iteration (per image for auxlabels) of the CamVid CPU protocol on the 2-core development
# machine (docs/benchmarks.md); --plan uses them until cells of this study have finished and measured their own.
DEFAULT_SECONDS = {"segmenter": 1.7, "finetune": 1.7, "pretrain": 2.7, "auxlabels": 1.0}
# A consistency fine-tune's step against a labels-only one on the same protocol (docs/consistency.md, "Cost")
CONSISTENCY_FACTOR = {"fixmatch": 3.6, "unimatch": 4.8}


@dataclass
class ArmConfig:
    """One arm: pipeline overrides that define it, and whether it pre-trains."""

    name: str = ""
    overrides: list[str] = field(default_factory=list)  # pipeline keys, e.g. pretrain.loss.name=metric_l2
    pretrain: bool = True  # false: fine-tune alone from baseline_init (the overrides may change the fine-tune)
    # stage keys applied after the pipeline filled in its own (paths, extractor, inits), for what the
    # pipeline owns: e.g. {auxlabels: [extractor.name=resnet18, extractor.random_init=true]}
    stage_overrides: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class StudyConfig:
    pipeline: str = "configs/pipeline/demo.yaml"  # the base pipeline config every arm starts from
    overrides: list[str] = field(default_factory=list)  # pipeline overrides for every arm
    work_dir: str = "runs/study"
    arms: list[ArmConfig] = field(default_factory=lambda: [ArmConfig("none", [], False), ArmConfig("infonce")])
    reference: str = "none"  # the arm every other is compared with
    pretrain_seeds: ranged(list[int], ge=0) = field(default_factory=lambda: [0])
    finetune_seeds: ranged(list[int], ge=0) = field(default_factory=lambda: [0])
    # labelled fractions of the training images (each a seeded split, labelled.seed); null: the pipeline's own
    fractions: ranged(list[float], gt=0, le=1) | None = None
    split_seed: Seed | None = None  # labelled.seed for every fraction; null: the pipeline's
    # the report's name: <work_dir>/<report>.md, .json and <report>_figures/ (studies sharing a work_dir share
    # their steps and keep their own reports)
    report: str = "study"


@dataclass
class Cell:
    """One step of the study: what it runs, where, and which steps it reads."""

    kind: str
    key: str  # folder name under <work_dir>/cells, unique for the config it runs
    label: str  # what the console and the report call it
    deps: tuple[str, ...]
    fraction: str  # the labelled fraction's name ("10%", or "default")
    arm: str | None = None  # finetune cells: the arm
    pretrain_seed: int | None = None
    finetune_seed: int | None = None
    iterations: int = 0  # for the time estimate (images for auxlabels)
    run: Any = None  # (study, cells) -> result; filled by the planner
    config: dict = field(default_factory=dict)  # the config that identifies it (paths left out)


def _digest(kind: str, config: dict, deps: tuple[str, ...]) -> str:
    text = json.dumps({"kind": kind, "config": config, "deps": list(deps)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _identity(cfg: Any, drop: tuple[str, ...], data_root: Path) -> dict:
    """A stage config as plain data without the keys that only name where things are written, and with the
    dataset's folder written as ``$DATA``, so a step's name does not depend on where the study lives (two
    studies at different paths name equal steps alike). Moving a study folder after it made auxiliary
    labels is not supported: the label folder records the absolute image root (docs/study.md)."""
    root = str(data_root)

    def relative(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: relative(v) for k, v in value.items()}
        if isinstance(value, list):
            return [relative(v) for v in value]
        if isinstance(value, str) and (value == root or value.startswith(root + os.sep)):
            return "$DATA" + value[len(root):]
        return value

    return relative(without_keys(to_dict(cfg), drop))


def load_study(path: str | Path | None, overrides: list[str] | None = None) -> StudyConfig:
    """A study config from YAML plus ``key=value`` overrides, checked (arm names, the reference, seeds)."""
    study = load_config(StudyConfig, path, overrides)
    names = [a.name for a in study.arms]
    if not study.arms or not all(names) or len(set(names)) != len(names):
        raise ConfigError(f"arms: give each arm a unique, non-empty name (got {names})")
    if not study.report or "/" in study.report or study.report.startswith("."):
        raise ConfigError(f"report: {study.report!r} must be a plain file name (no folder)")
    if study.reference not in names:
        raise ConfigError(f"reference: {study.reference!r} is not one of the arms {names}")
    if not study.finetune_seeds or len(set(study.finetune_seeds)) != len(study.finetune_seeds):
        raise ConfigError(f"finetune_seeds: give distinct seeds, got {study.finetune_seeds}")
    if any(a.pretrain for a in study.arms) and (not study.pretrain_seeds
                                                or len(set(study.pretrain_seeds)) != len(study.pretrain_seeds)):
        raise ConfigError(f"pretrain_seeds: give distinct seeds, got {study.pretrain_seeds}")
    for arm in study.arms:
        unknown = sorted(set(arm.stage_overrides) - {"auxlabels", "pretrain", "finetune"})
        if unknown:
            raise ConfigError(f"arms.{arm.name}.stage_overrides: {unknown[0]!r} is not auxlabels, pretrain or finetune")
        bad = [o for o in arm.overrides if o.split("=", 1)[0].split(".")[0] in ("work_dir", "data", "seeds", "labelled")]
        if bad:
            raise ConfigError(f"arms.{arm.name}.overrides: {bad[0]!r}: an arm may not change the data, the labelled "
                              "split, the seeds or the work_dir (they are the study's, shared by every arm)")
    return study


@dataclass
class Plan:
    """The study's cells in run order, the per-fraction pipeline configs and the data."""

    study: StudyConfig
    work_dir: Path
    data: Dataset
    cells: dict[str, Cell]
    runs: list[Cell]  # the finetune cells that are the study's results (segmenter cells for non-pretraining arms)
    fractions: list[str]


def _fraction_overrides(study: StudyConfig) -> list[tuple[str, list[str]]]:
    seed = [f"labelled.seed={study.split_seed}"] if study.split_seed is not None else []
    if study.fractions is None:
        return [("default", seed)]
    return [(f"{100 * f:g}%", [f"labelled.fraction={f}", "labelled.num_images=null", "labelled.file=null", *seed])
            for f in study.fractions]


def _arm_config(study: StudyConfig, base: Path, arm: ArmConfig, fraction: list[str], work_dir: Path) -> PipelineConfig:
    return load_config(PipelineConfig, base, [*study.overrides, *arm.overrides, *fraction, f"work_dir={work_dir}"])


def plan(study: StudyConfig) -> Plan:
    """Every cell of the study with its dependencies. The data is generated (the built-in set) and checked
    first, as the pipeline does: the steps' configs name its folders and classes."""
    work_dir = resolve_path(study.work_dir)
    base = resolve_path(study.pipeline)
    cells: dict[str, Cell] = {}
    runs: list[Cell] = []
    data = None
    ft_seeds = list(study.finetune_seeds)

    def add(cell: Cell) -> Cell:
        return cells.setdefault(cell.key, cell)  # a step with equal inputs is shared, not planned twice

    fraction_names = []
    for name, fraction in _fraction_overrides(study):
        fraction_names.append(name)
        base_cfg = _arm_config(study, base, BASE_ARM, fraction, work_dir)
        if data is None:
            # the study's own files (report, figures, locks) are written here, beside the cells' folders
            check_separate(work_dir, "work_dir", {"data.root": base_cfg.data.root})
            work_dir.mkdir(parents=True, exist_ok=True)
            data = prepare_data(base_cfg, work_dir)
        # the baseline fine-tunes: the base schedule, no arm overrides; the first seed's labels every arm
        segmenters = {f: add(_finetune_cell(base_cfg, BASE_ARM, data, name, f, label=f"segmenter {name} seed {f}"))
                      for f in ft_seeds}
        for arm in study.arms:
            cfg = _arm_config(study, base, arm, fraction, work_dir)
            _check_arm(cfg, data, work_dir, ft_seeds[0])
            if not arm.pretrain:
                for f in ft_seeds:  # equal to the baseline's segmenter when the arm changes nothing
                    cell = add(_finetune_cell(cfg, arm, data, name, f, label=f"fine-tune {arm.name} {name} seed {f}"))
                    runs.append(_as_run(cell, arm.name, None, f))
                continue
            seg0 = segmenters[ft_seeds[0]]
            aux_cell = add(_auxlabels_cell(cfg, arm, data, name, seg0))
            for p in study.pretrain_seeds:
                pre_cell = add(_pretrain_cell(cfg, arm, data, name, p, aux_cell, seg0))
                for f in ft_seeds:
                    cell = add(_finetune_cell(cfg, arm, data, name, f, pre_cell,
                                              label=f"fine-tune {arm.name} {name} pre-seed {p} seed {f}"))
                    runs.append(_as_run(cell, arm.name, p, f))
    order = sorted(cells.values(), key=lambda c: KINDS.index(c.kind))
    return Plan(study, work_dir, data, {c.key: c for c in order}, runs, fraction_names)


BASE_ARM = ArmConfig("base")  # the pipeline config as the study gives it: the segmenters' config


def _check_arm(cfg: PipelineConfig, data: Dataset, work_dir: Path, seed: int) -> None:
    """The pipeline's checks before any training: head classes, priors, template keys it would overrule."""
    check_head_classes(cfg, data)
    check_priors(cfg)
    check_owned_keys(cfg, {
        "finetune": finetune_config(cfg, data, work_dir / "segmenter", cfg.baseline_init, seed),
        "auxlabels": auxlabels_config(cfg, data, work_dir / "labels", work_dir / "segmenter" / "iter.pth"),
        "pretrain": pretrain_config(cfg, work_dir / "pretrain", work_dir / "labels", *planned_backbone(cfg)),
    })


def _finetune_cell(cfg: PipelineConfig, arm: ArmConfig, data: Dataset, fraction: str, seed: int,
                   pre_cell: Cell | None = None, *, label: str) -> Cell:
    """A fine-tune: from ``baseline_init`` (a ``segmenter`` cell) or from ``pre_cell``'s export (``finetune``)."""
    from finetune.run import run as run_finetune

    init = cfg.baseline_init if pre_cell is None else export_init("export.pth")
    ft = _staged(arm, "finetune", finetune_config(cfg, data, Path("."), init, seed))
    paths = ("work_dir", "data_root") + (() if pre_cell is None else ("init.checkpoint", "init.decoder"))
    ident = _identity(ft, paths, data.root)
    kind, deps = ("segmenter", ()) if pre_cell is None else ("finetune", (pre_cell.key,))
    return Cell(kind, f"{kind}_{_digest(kind, ident, deps)}", label, deps, fraction,
                None if pre_cell is None else arm.name, None if pre_cell is None else pre_cell.pretrain_seed, seed,
                _iterations(ft), _finetune_runner(cfg, arm, data, deps[0] if deps else None, seed, run_finetune),
                ident)


def _auxlabels_cell(cfg: PipelineConfig, arm: ArmConfig, data: Dataset, fraction: str, seg0: Cell) -> Cell:
    """The auxiliary labels of ``arm``'s labelling settings, from the segmenter ``seg0``."""
    from auxlabels.pipeline import run as run_auxlabels

    template = auxlabels_config(cfg, data, Path("."), Path("segmenter.pth"))
    aux = _staged(arm, "auxlabels", template)
    # the pipeline's extractor is the segmenter, a dependency; a file the arm puts in its place (a DINOv2
    # checkpoint, however the override is written) is identified by its content, so arms with different
    # files label apart
    own = [name for name in ("checkpoint", "config") if getattr(aux.extractor, name) != getattr(template.extractor, name)]
    ident = _identity(aux, ("out_dir", "progress") + tuple(
        f"extractor.{name}" for name in ("checkpoint", "config") if name not in own), data.root)
    for name in own:
        ident["extractor"][name] = _file_identity(getattr(aux.extractor, name))
    return Cell("auxlabels", f"auxlabels_{_digest('auxlabels', ident, (seg0.key,))}",
                f"auxiliary labels {fraction} ({arm.name})", (seg0.key,), fraction,
                iterations=_count_images(data), run=_auxlabels_runner(cfg, arm, data, seg0.key, run_auxlabels),
                config=ident)


def _pretrain_cell(cfg: PipelineConfig, arm: ArmConfig, data: Dataset, fraction: str, seed: int, aux_cell: Cell,
                   seg0: Cell) -> Cell:
    """One pre-training of ``arm`` with ``train.seed = seed`` on ``aux_cell``'s labels."""
    from pretrain.checkpoint import with_added_defaults
    from pretrain.train import run as run_pretrain

    pre = _staged(arm, "pretrain", pretrain_config(cfg, Path("."), Path("."), *planned_backbone(cfg)))
    pre.train.seed = seed
    ident = _identity(pre, ("out_dir", "data.labels", "train.progress"), data.root)
    deps = (aux_cell.key, seg0.key)
    return Cell("pretrain", f"pretrain_{_digest('pretrain', ident, deps)}", f"pre-train {arm.name} {fraction} seed {seed}",
                deps, fraction, arm.name, seed, None, pre.train.max_iters,
                _pretrain_runner(cfg, arm, aux_cell.key, seg0.key, seed, run_pretrain, with_added_defaults), ident)


def _file_identity(path: str | None) -> str | None:
    """A file an arm names, by content (SHA-256) where it exists; by its path until it does."""
    if path is None or not Path(path).is_file():
        return path
    stat = Path(path).stat()
    return _content_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _content_digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, computed once per process for each (path, size, modification time): a plan hashes
    each arm's checkpoint for every fraction, and a ViT-g file is 4 GB."""
    return "sha256:" + sha256_file(Path(path))


def _staged(arm: ArmConfig, kind: str, cfg: Any) -> Any:
    """``cfg`` with the arm's stage overrides for ``kind`` (``auxlabels``, ``pretrain``, ``finetune``) applied."""
    overrides = arm.stage_overrides.get(kind, [])
    return from_dict(type(cfg), apply_overrides(to_dict(cfg), overrides), kind) if overrides else cfg


_SCHEDULES: dict[str, int] = {}


def _iterations(ft: Any) -> int:
    """A fine-tune's iterations: ``max_iters``, else its mmseg config's schedule (for the time estimate)."""
    if ft.max_iters:
        return ft.max_iters
    if ft.mmseg_config not in _SCHEDULES:
        from finetune.mmseg_config import load_mmseg_config

        _SCHEDULES[ft.mmseg_config] = int(load_mmseg_config(ft.mmseg_config).train_cfg.get("max_iters", 0))
    return _SCHEDULES[ft.mmseg_config]


def _count_images(data: Dataset) -> int:
    """Training plus validation images: what the auxiliary-label step reads."""
    from auxseg.images import list_images

    return sum(len(list_images(data.root / sub)) for sub in ("train", "val") if (data.root / sub).is_dir())


def _as_run(cell: Cell, arm: str, pretrain_seed: int | None, finetune_seed: int) -> Cell:
    """The view of a (maybe shared) cell as one run of ``arm``."""
    view = copy.copy(cell)
    view.arm, view.pretrain_seed, view.finetune_seed = arm, pretrain_seed, finetune_seed
    return view


def cell_dir(work_dir: Path, key: str) -> Path:
    return work_dir / "cells" / key


def _result(work_dir: Path, key: str) -> Any:
    return read_json_object(cell_dir(work_dir, key) / "step.json")["result"]


def _finetune_runner(cfg: PipelineConfig, arm: ArmConfig, data: Dataset, pre_key: str | None, seed: int,
                     run_finetune):
    def go(work_dir: Path, key: str):
        init = cfg.baseline_init if pre_key is None else export_init(_result(work_dir, pre_key))
        ft = _staged(arm, "finetune", finetune_config(cfg, data, cell_dir(work_dir, key), init, seed))
        return ft, lambda: run_finetune(ft), None
    return go


def _auxlabels_runner(cfg: PipelineConfig, arm: ArmConfig, data: Dataset, seg_key: str, run_auxlabels):
    def go(work_dir: Path, key: str):
        ckpt = last_checkpoint(cell_dir(work_dir, seg_key))
        aux = _staged(arm, "auxlabels", auxlabels_config(cfg, data, cell_dir(work_dir, key), ckpt))
        return aux, lambda: run_auxlabels(aux), None
    return go


def _pretrain_runner(cfg: PipelineConfig, arm: ArmConfig, aux_key: str, seg_key: str, seed: int, run_pretrain,
                     upgrade):
    def go(work_dir: Path, key: str):
        init = _result(work_dir, seg_key)["init"]  # the pipeline's rule: the segmenter's backbone depth and stem
        pre = _staged(arm, "pretrain", pretrain_config(cfg, cell_dir(work_dir, key), cell_dir(work_dir, aux_key),
                                                       init.get("depth"), init.get("backbone_type")))
        pre.train.seed = seed
        return pre, lambda: str(run_pretrain(pre)), upgrade
    return go


def is_done(work_dir: Path, key: str) -> bool:
    return (cell_dir(work_dir, key) / "step.json").is_file()


@contextmanager
def cell_lock(folder: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on ``folder/.lock``: yields False when another worker holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder.parent / f".{folder.name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def run_cell(p: Plan, cell: Cell) -> bool:
    """Run one cell unless it is finished; False when another worker holds it. A folder without
    ``step.json`` (a killed run) is cleared first, so every finished cell ran from scratch."""
    folder = cell_dir(p.work_dir, cell.key)
    with cell_lock(folder) as mine:
        if not mine:
            return False
        if is_done(p.work_dir, cell.key):
            return True
        if any(folder.iterdir()):
            shutil.rmtree(folder)  # half-written by a killed worker: redo from scratch (inside work_dir/cells)
            folder.mkdir()
        stage_cfg, fn, upgrade = cell.run(p.work_dir, cell.key)
        atomic_write_json(folder / "cell.json", {"kind": cell.kind, "label": cell.label, "deps": list(cell.deps),
                                           "config": cell.config})
        run_step(cell.label, folder, stage_cfg, fn, **({"upgrade": upgrade} if upgrade else {}))
    return True


def run_all(p: Plan, poll_s: float = 5.0) -> None:
    """Run every unfinished cell in dependency order; cells another worker holds are waited for."""
    pending = [c for c in p.cells.values() if not is_done(p.work_dir, c.key)]
    while pending:
        progressed = False
        for cell in list(pending):
            if all(is_done(p.work_dir, d) for d in cell.deps) and run_cell(p, cell) and is_done(p.work_dir, cell.key):
                pending.remove(cell)
                progressed = True
        if pending and not progressed:
            time.sleep(poll_s)  # the rest is held by other workers, or waits for cells they hold
            pending = [c for c in pending if not is_done(p.work_dir, c.key)]


def _rate_key(cell: Cell) -> str:
    """Cells that cost alike per iteration: the kind, and for fine-tunes the consistency method if any."""
    method = (cell.config.get("consistency") or {}).get("method", "none")
    return cell.kind if method == "none" else f"{cell.kind}+{method}"


def _default_rate(key: str) -> float:
    kind, _, method = key.partition("+")
    return DEFAULT_SECONDS[kind] * CONSISTENCY_FACTOR.get(method, 1.0)


def estimate(p: Plan) -> list[dict]:
    """Per cell: done or not, and the estimated CPU seconds (measured rates of finished cells of the same cost
    kind, else defaults)."""
    rates: dict[str, list[float]] = {}
    for cell in p.cells.values():
        path = cell_dir(p.work_dir, cell.key) / "step.json"
        if path.is_file() and cell.iterations:
            rates.setdefault(_rate_key(cell), []).append(read_json_object(path).get("elapsed_s", 0.0) / cell.iterations)
    rows = []
    for cell in p.cells.values():
        done, key = is_done(p.work_dir, cell.key), _rate_key(cell)
        rate = sum(rates[key]) / len(rates[key]) if rates.get(key) else _default_rate(key)
        units = cell.iterations or 1
        rows.append({"key": cell.key, "kind": cell.kind, "label": cell.label, "done": done,
                     "estimate_s": 0.0 if done else rate * units, "measured": bool(rates.get(key))})
    return rows
