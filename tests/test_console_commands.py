"""The stage commands' console: ``auxseg finetune / pretrain / auxlabels / study`` print one line per step,
their own output (mmengine's iteration logs and config, the stages' lines) goes to the log files, and
``--verbose`` brings it back on stdout.

Each command runs once, quietly, as a process of its own (``python -m loop``): what reaches its stdout
and stderr, file descriptors included, is what a person would see, and warnings are not swallowed by an
earlier test of the same process. The ``--verbose`` runs are in-process (a second start of torch and
mmseg per stage would double the time). Tiny presets, two iterations: about a minute in all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset
from loop.cli import main as auxseg_main

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")

FINETUNE = [str(REPO / "configs/finetune/tiny.yaml"), "max_iters=2", "val_interval=2", "checkpoint_interval=2",
            "log_interval=1"]
PRETRAIN = [str(REPO / "configs/pretrain/tiny.yaml"), "train.max_iters=2", "train.checkpoint_every=2",
            "train.log_every=1"]
AUXLABELS = [str(REPO / "configs/auxlabels/tiny.yaml")]
STUDY = [str(REPO / "configs/study/tiny.yaml"), "arms=[{name: none, pretrain: false}]", "finetune_seeds=[0]"]

# What a run must not print anywhere (terminal or log files): warnings the project filters or fixes at source
# (finetune/run.py: mmengine's FileClient / HardDiskBackend; auxseg/mmseg_compat.py: mmseg's build_loss and
# avg_non_ignore; finetune/metrics.py: PerClassIoUMetric's default_prefix).
FILTERED = ('"FileClient" will be deprecated', '"HardDiskBackend" is the alias', "``build_loss`` would be deprecated",
            "Default ``avg_non_ignore`` is False", "The prefix is not set")
MMENGINE_NOISE = ("Iter(train)", "System environment:", "mmengine - INFO - Config:")


class Run:
    """One quiet command in its own process: exit code, stdout lines, stderr."""

    def __init__(self, out_dir: Path, *args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "loop", *args], cwd=REPO, env=ENV, capture_output=True,
                              text=True, timeout=600)
        self.out_dir, self.rc, self.stdout, self.stderr = out_dir, proc.returncode, proc.stdout, proc.stderr
        self.lines = proc.stdout.splitlines()

    def mmengine_logs(self) -> list[Path]:
        return sorted(self.out_dir.glob("**/20*_*/20*_*.log"))  # <work_dir>/<timestamp>/<timestamp>.log


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """6 train + 2 val synthetic scenes of 48x64 (6 classes, 255 = ignore), CamVid layout."""
    root = tmp_path_factory.mktemp("console_data")
    return make_synthetic_dataset(root, SyntheticSpec(num_train=6, num_val=2, height=48, width=64, seed=0))


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory, data) -> Run:
    work = tmp_path_factory.mktemp("console_finetune") / "work"
    return Run(work, "finetune", *FINETUNE, f"data_root={data}", f"work_dir={work}")


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory) -> Run:
    out = tmp_path_factory.mktemp("console_pretrain") / "out"
    return Run(out, "pretrain", *PRETRAIN, f"out_dir={out}")


@pytest.fixture(scope="module")
def auxlabels_run(tmp_path_factory, data) -> Run:
    out = tmp_path_factory.mktemp("console_auxlabels") / "out"
    return Run(out, "auxlabels", *AUXLABELS, f"image_dir={data / 'val'}", f"gt_dir={data / 'valannot'}",
               f"out_dir={out}")


@pytest.fixture(scope="module")
def study_run(tmp_path_factory) -> Run:
    work = tmp_path_factory.mktemp("console_study") / "work"
    return Run(work, "study", *STUDY, f"work_dir={work}")


def assert_quiet(run: Run, step: str, result: str) -> str:
    """One step line on stdout (the step's name, its wall time, its result), no mmengine log lines;
    returns console.log's text."""
    assert run.rc == 0, run.stderr
    assert len(run.lines) == 1 and run.lines[0].startswith(f"{step} ") and result in run.lines[0], run.lines
    assert not any(noise in run.stdout for noise in MMENGINE_NOISE)
    log = (run.out_dir / "console.log").read_text()
    assert f" {step} (auxseg; `--verbose` prints this on the terminal) ====" in log
    return log


# ----------------------------------------------------------------------------- finetune


def test_finetune_prints_one_line_and_logs_the_rest(finetune_run):
    work = finetune_run.out_dir
    assert_quiet(finetune_run, "finetune", f"after 2 iterations, 6 training images; results in {work}/results.json")
    assert "  mIoU " in finetune_run.lines[0] and finetune_run.stderr == ""
    [mm_log] = finetune_run.mmengine_logs()
    text = mm_log.read_text()
    assert all(noise in text for noise in MMENGINE_NOISE)  # the full log: environment, config, iterations
    assert text.count("Iter(train)") == 2


def test_no_filtered_warning_reaches_the_terminal_or_the_logs(finetune_run):
    texts = {"stdout": finetune_run.stdout, "stderr": finetune_run.stderr,
             "console.log": (finetune_run.out_dir / "console.log").read_text(),
             **{str(p): p.read_text() for p in finetune_run.mmengine_logs()}}
    assert len(texts) == 4  # stdout, stderr and both log files were read
    found = [(where, message) for where, text in texts.items() for message in FILTERED if message in text]
    assert found == []


def test_finetune_verbose_prints_mmengines_log(tmp_path, data, capsys):
    work = tmp_path / "work"
    assert auxseg_main(["finetune", *FINETUNE, f"data_root={data}", f"work_dir={work}", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"finetune: running (output also in {work})")
    assert out.count("Iter(train)") == 2 and "System environment:" in out
    assert out.splitlines()[-1].startswith("finetune ") and not (work / "console.log").exists()


# ----------------------------------------------------------------------------- pretrain


def test_pretrain_prints_one_line_and_logs_the_rest(pretrain_run):
    out = pretrain_run.out_dir
    last = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]
    # the closing line: the last logged loss (the per-iteration numbers stay in the stage's log) and the export
    log = assert_quiet(pretrain_run, "pretrain",
                       f"  loss {last['loss']:.3f} at iteration {last['iter']}, done: {out}/backbone_mmseg.pth")
    assert pretrain_run.stderr == ""
    assert "pretrain: 8 images, K=6" in log and "pretrain: 8 images" not in pretrain_run.stdout


def test_pretrain_verbose_prints_the_stage_and_its_bar(tmp_path, capsys):
    out = tmp_path / "out"
    assert auxseg_main(["pretrain", *PRETRAIN, f"out_dir={out}", "--verbose"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("pretrain: running") and "pretrain: 8 images, K=6" in captured.out
    assert "loss=" in captured.err  # the stage's own tqdm bar, as without a console


# ----------------------------------------------------------------------------- auxlabels


def test_auxlabels_prints_one_line_and_logs_the_rest(auxlabels_run):
    out = auxlabels_run.out_dir
    log = assert_quiet(auxlabels_run, "auxlabels", f"2 label PNGs in {out} (K=9, uint8); PmIoU ")
    assert "[auxlabels] K-means" in log and "PmIoU (Hungarian, one-to-one)" in log
    assert "[auxlabels]" not in auxlabels_run.stdout and "[auxlabels]" not in auxlabels_run.stderr


def test_auxlabels_prints_nothing_on_stderr(auxlabels_run):
    """faiss warns from C++ straight to file descriptor 2 ('WARNING clustering 320 points to 9 centroids'): the
    step catches that too, and the warning is in the step's log instead."""
    assert auxlabels_run.stderr == ""
    assert "WARNING clustering" in (auxlabels_run.out_dir / "console.log").read_text()


def test_auxlabels_verbose_prints_the_stage(tmp_path, data, capsys):
    out = tmp_path / "out"
    assert auxseg_main(["auxlabels", *AUXLABELS, f"image_dir={data / 'val'}", f"gt_dir={data / 'valannot'}",
                        f"out_dir={out}", "--verbose"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("auxlabels: running")
    # the stage writes its own lines to stderr, as it does without a console
    assert "[auxlabels] K-means" in captured.err and "PmIoU (Hungarian, one-to-one)" in captured.err


# ----------------------------------------------------------------------------- study


def test_study_prints_one_line_per_step_and_logs_the_rest(study_run):
    work = study_run.out_dir
    assert study_run.rc == 0 and study_run.stderr == ""
    assert [line.split("  ")[0] for line in study_run.lines] == ["data", "segmenter default seed 0", "",
                                                                 f"study report: {work / 'study.md'}"]
    assert "mIoU" in study_run.lines[1] and not any(noise in study_run.stdout for noise in MMENGINE_NOISE)
    [cell] = [p for p in (work / "cells").iterdir() if p.is_dir()]
    assert "==== " in (cell / "console.log").read_text() and "no problems" in study_run.lines[0]
    [mm_log] = study_run.mmengine_logs()
    assert "Iter(train) [2/2]" in mm_log.read_text()


def test_study_verbose_prints_mmengines_log(tmp_path, capsys):
    work = tmp_path / "work"
    assert auxseg_main(["study", *STUDY, f"work_dir={work}", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("data: running") and "segmenter default seed 0: running" in out
    assert "Iter(train) [2/2]" in out and out.splitlines()[-1] == f"study report: {work / 'study.md'}"
