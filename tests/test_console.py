"""The console a person reads (auxseg.console): one line per step, the logs in files, no debris in a pipe."""

from __future__ import annotations

import io
import json
import sys

import pytest
from tiny_runs import TINY_PIPELINE

from auxseg import console

TINY = TINY_PIPELINE
MAX_DEMO_LINES = 60


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(text: str) -> list[str]:
    """The lines a terminal shows at the end: a carriage return starts its line over."""
    return [line.split("\r")[-1].rstrip() for line in text.split("\n")]


def test_a_step_is_one_line_and_its_output_goes_to_its_log(tmp_path):
    out = io.StringIO()
    with console.session(out=out):
        with console.step("segmenter (seed 0)", tmp_path / "console.log") as step:
            print("mmengine - INFO - Config: ...")
            print("a warning", file=sys.stderr)
            with console.bar(total=4, desc="train") as bar:
                for _ in range(4):
                    bar.update(1)
                    bar.set_postfix(loss="0.50")
            step.done("mIoU 26.87  runs/demo/1_segmenter_seed0")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in out.getvalue()
    assert lines[0].startswith("segmenter (seed 0) ") and lines[0].endswith("  mIoU 26.87  runs/demo/1_segmenter_seed0")
    log = (tmp_path / "console.log").read_text()
    assert "mmengine - INFO - Config: ..." in log and "a warning" in log and "segmenter (seed 0)" in log


def test_a_pipe_gets_a_plain_progress_line_at_most_every_interval(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    with console.session(out=out):
        with console.step("pretrain", tmp_path / "console.log") as step:
            bar = console.bar(total=250, desc="pretrain")
            for i in range(250):
                clock[0] += 1.0  # one second per iteration: 250 s in all
                bar.update(1)
                bar.set_postfix(loss=f"{4 - i / 100:.2f}")
            bar.close()
            step.done("loss 1.51  runs/demo/3_pretrain")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # updates at 60, 120, 180 and 240 s, then the closing line
    assert [line.split(":")[1].split()[0] for line in lines[:-1]] == ["60/250", "120/250", "180/250", "240/250"]
    assert lines[0] == "  pretrain: 60/250 it [1 min 00 s, loss=3.42]"  # drawn at the update, before its postfix
    assert lines[-1] == console.done_line("pretrain", 250.0, "loss 1.51  runs/demo/3_pretrain")
    assert lines[-1].split() == ["pretrain", "4", "min", "10", "s", "loss", "1.51", "runs/demo/3_pretrain"]


def test_a_terminal_redraws_one_line_in_place(tmp_path):
    out = FakeTerminal()
    with console.session(out=out):
        for name in ("segmenter (seed 0)", "auxlabels"):
            with console.step(name, tmp_path / f"{name}.log") as step:
                with console.bar(total=3, desc="train") as bar:
                    for _ in range(3):
                        console.current().draw(console.current().current, force=True)
                        bar.update(1)
                step.done("done here")
    text = out.getvalue()
    assert text.count("\r") > 4 and "segmenter (seed 0): train:" in text  # the running line was drawn
    shown = [line for line in screen(text) if line]
    assert len(shown) == 2 and all(line.endswith("done here") for line in shown)


def test_a_failed_step_says_so_and_where_its_output_is(tmp_path):
    out = io.StringIO()
    with pytest.raises(RuntimeError), console.session(out=out), console.step("pretrain", tmp_path / "p.log"):
        print("the stage's last words")
        raise RuntimeError("boom")
    line = out.getvalue().strip()
    assert line.startswith("pretrain") and line.endswith(f"failed; its output is in {tmp_path / 'p.log'}")
    assert "the stage's last words" in (tmp_path / "p.log").read_text()


def test_native_writes_to_descriptor_2_reach_the_log_at_once(tmp_path):
    """What C code and child processes write to descriptor 2 (faiss's warnings, a crash report) is in the
    log while the step runs, not only when it ends; afterwards descriptor 2 is the terminal's again."""
    import os
    import subprocess

    log = tmp_path / "console.log"
    with console.session(out=io.StringIO()), console.step("auxlabels", log):
        os.write(2, b"WARNING clustering 320 points to 9 centroids\n")
        subprocess.run([sys.executable, "-c", "import os; os.write(2, b'from a child\\n')"], check=True)
        during = log.read_text()
    assert "WARNING clustering 320 points" in during and "from a child" in during
    assert os.fstat(2).st_ino != os.stat(log).st_ino


def test_native_writes_before_the_log_folder_exists_join_the_log_at_the_end(tmp_path):
    log = tmp_path / "out" / "console.log"
    with console.session(out=io.StringIO()), console.step("auxlabels", log):
        import os

        os.write(2, "written before the folder existed \u00e9\n".encode())
        log.parent.mkdir()  # the stage makes its folder after the step began
        print("the stage's own line")
    text = log.read_text()
    assert "written before the folder existed \u00e9" in text and "the stage's own line" in text


def test_no_log_folder_no_log_file(tmp_path):
    """A step refused before its output folder exists leaves no folder behind."""
    with console.session(out=io.StringIO()), console.step("finetune", tmp_path / "never" / "console.log"):
        print("refused early")
    assert not (tmp_path / "never").exists()


def test_outside_a_session_bars_are_tqdm_and_steps_capture_nothing(capsys):
    from tqdm import tqdm

    assert isinstance(console.bar(total=2, disable=True), tqdm)
    with console.step("x", None) as step:
        print("as always")
        step.done("nothing printed")
    assert capsys.readouterr().out == "as always\n"


def test_verbose_leaves_the_output_on_the_terminal(tmp_path):
    out = io.StringIO()
    with console.session(verbose=True, out=out), console.step("auxlabels", tmp_path / "log"):
        print("[auxlabels] K-means: K=9", file=out)
    assert "[auxlabels] K-means: K=9" in out.getvalue() and not (tmp_path / "log").exists()


def test_tiny_demo_through_the_cli_is_a_short_readable_console(tmp_path, capsys):
    """``auxseg demo`` into a pipe: one line per step, the closing table with the report, no carriage return."""
    from loop.cli import main

    assert main(["demo", f"work_dir={tmp_path / 'run'}", *TINY, "progress=true"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "\r" not in out and "\r" not in captured.err
    assert captured.err == ""  # the stages' own lines went to the steps' log files
    lines = out.splitlines()
    assert len(lines) <= MAX_DEMO_LINES
    steps = [line.split("  ")[0] for line in lines[:7]]
    assert steps == ["data", "segmenter (seed 0)", "auxlabels", "pretrain", "fine-tune (seed 0)", "report", ""]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    base, pre = summary["baseline_mIoU"]["0"], summary["pretrained_mIoU"]["0"]
    assert lines[1].endswith(f"  mIoU {base:.2f}  {run / '1_segmenter_seed0'}")
    assert lines[4].endswith(f"  mIoU {pre:.2f}  {run / '4_finetune_seed0'}")
    # the closing table: the headline numbers and where the report is
    assert lines[-5].split()[-1] == f"{base:.2f}" and lines[-4].split()[-1] == f"{pre:.2f}"
    assert lines[-3].split()[-1] == f"{pre - base:+.2f}"
    assert lines[-1].split() == ["report", str(run / "report.md")]
    assert len(lines) == 13  # six steps, a blank line, the table of six rows
    # mmengine's full log is in the step's folder, not on the terminal
    mm_logs = list((run / "1_segmenter_seed0").glob("*/*.log"))
    assert len(mm_logs) == 1 and "Iter(train)" in mm_logs[0].read_text() and "Iter(train)" not in out
    assert "K-means" in (run / "2_auxlabels" / "console.log").read_text()


def test_tiny_demo_on_a_terminal_fits_a_screen_and_ends_with_the_table(tmp_path, monkeypatch, capsys):
    """``auxseg demo`` on a terminal: the running line is redrawn in place, and the screen left at the end
    is one line per step, then the closing table with the report, in at most MAX_DEMO_LINES rows."""
    from loop.cli import main

    columns = 100
    monkeypatch.setenv("COLUMNS", str(columns))
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(["demo", f"work_dir={tmp_path / 'run'}", *TINY, "progress=true"]) == 0
    monkeypatch.undo()
    assert capsys.readouterr().err == ""
    text = terminal.getvalue()
    assert text.count("\r") > 6  # every step drew its running line at least once
    lines = screen(text)
    assert lines[-1] == ""  # the last line was finished (no running line left behind)
    lines = lines[:-1]
    rows = sum(max(1, -(-len(line) // columns)) for line in lines)  # a line longer than the terminal wraps
    assert len(lines) == 13 and rows <= MAX_DEMO_LINES
    assert [line.split("  ")[0] for line in lines[:7]] == [
        "data", "segmenter (seed 0)", "auxlabels", "pretrain", "fine-tune (seed 0)", "report", ""]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    base, pre = summary["baseline_mIoU"]["0"], summary["pretrained_mIoU"]["0"]
    assert lines[-6].split()[:3] == ["mIoU", "on", "val,"]
    assert lines[-5].split()[-1] == f"{base:.2f}" and lines[-4].split()[-1] == f"{pre:.2f}"
    assert lines[-3].split()[-1] == f"{pre - base:+.2f}"
    assert lines[-1].split() == ["report", str(run / "report.md")]


def test_the_demo_config_plans_a_console_that_fits_a_screen(tmp_path, monkeypatch):
    """``configs/pipeline/demo.yaml`` as shipped (three seeds): the steps the pipeline runs, one line each, and
    the closing table fit MAX_DEMO_LINES. The steps are those :func:`loop.pipeline.run` opens, found by running
    it with every step replaced by a stand-in that records its name (nothing is trained)."""
    from auxseg.config import load_config
    from auxseg.synthetic import CLASS_NAMES
    from loop import pipeline

    cfg = load_config(pipeline.PipelineConfig, pipeline.resolve_path("configs/pipeline/demo.yaml"),
                      [f"work_dir={tmp_path / 'run'}"])
    num_classes = cfg.data.synthetic.num_classes
    names: list[str] = []

    def prepare_data(cfg, work_dir):
        names.append("data")
        return pipeline.Dataset(tmp_path / "data", num_classes, list(CLASS_NAMES[:num_classes]), [255])

    def run_step(name, step_dir, stage_cfg, fn, upgrade=None):
        names.append(name)
        if name == "auxlabels":
            return {"num_labels": 9, "pmiou": {"pmiou": 50.0}, "images": []}
        if name == "pretrain":
            return str(tmp_path / "backbone_mmseg.pth")
        return {"mIoU": 40.0, "init": {"depth": 18, "backbone_type": "ResNetV1c"}}

    table: list[str] = []

    def finish(work_dir, data, manifest, baseline, pretrained, export):
        names.append("report")
        summary = {"baseline_mIoU": {str(s): r["mIoU"] for s, r in baseline.items()},
                   "pretrained_mIoU": {str(s): r["mIoU"] for s, r in pretrained.items()},
                   "report": str(work_dir / "report.md")}
        table.extend(pipeline.result_table(summary, manifest))
        return work_dir / "report.md"

    monkeypatch.setattr(pipeline, "prepare_data", prepare_data)
    monkeypatch.setattr(pipeline, "run_step", run_step)
    monkeypatch.setattr(pipeline, "last_checkpoint", lambda work_dir: work_dir / "iter_150.pth")
    monkeypatch.setattr(pipeline, "_finish", finish)
    pipeline.run(cfg)
    seeds = len(cfg.seeds)
    assert seeds == 3 and names == ["data", *[f"segmenter (seed {s})" for s in cfg.seeds], "auxlabels", "pretrain",
                                    *[f"fine-tune (seed {s})" for s in cfg.seeds], "report"]
    assert len(table) == 7 and table[-1].split()[0] == "report"
    assert len(names) + len(table) <= MAX_DEMO_LINES
