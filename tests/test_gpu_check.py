"""tools/gpu_check.py: on a CPU machine it exits 0, says there is no CUDA and lists every step; the
commands carry the GPU overrides, and every override is a valid key of the stage's config schema."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loop.cli import main as auxseg_main

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "gpu_check.py"
STEPS = ["data", "faiss_kmeans", "auxlabels_amp", "auxlabels_ddp", "pretrain_bf16", "pretrain_fp16", "pretrain_r50",
         "pretrain_r50_bf16", "ddp_syncbn", "finetune_cuda", "finetune_amp"]


def _tool():
    spec = importlib.util.spec_from_file_location("gpu_check", TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


gpu_check = _tool()


def _stage_args(step) -> list[str]:
    """The auxseg argv a child step runs (after ``--child --``)."""
    return step.argv[step.argv.index("--") + 1:]


def test_cpu_machine_prints_the_plan_and_exits_0(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU even where one exists
    res = subprocess.run([sys.executable, str(TOOL), "--out", str(tmp_path / "out")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "no CUDA device is visible" in res.stdout and "nothing was run" in res.stdout
    for name in STEPS:
        assert f". {name}: " in res.stdout, name
    assert res.stdout.count("tools/gpu_check.py --child -- ") == 9  # the stage commands, printed in full
    assert "torch.distributed.run --standalone --nnodes 1 --nproc-per-node 1" in res.stdout
    assert not (tmp_path / "out").exists()  # nothing written


def test_dry_run_and_only(tmp_path):
    res = subprocess.run([sys.executable, str(TOOL), "--dry-run", "--only", "finetune_amp"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert " 1. data: " in res.stdout and " 2. finetune_amp: " in res.stdout and "pretrain" not in res.stdout
    res = subprocess.run([sys.executable, str(TOOL), "--dry-run", "--only", "pretrain_bf17"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unknown step pretrain_bf17" in res.stderr


def test_commands_carry_the_gpu_overrides(tmp_path):
    steps = {s.name: s for s in gpu_check.build_steps(tmp_path, n_gpus=2, faiss_gpu=True, python="py")}
    assert list(steps) == STEPS
    aux = _stage_args(steps["auxlabels_amp"])
    assert aux[:2] == ["auxlabels", "configs/auxlabels/tiny.yaml"]
    assert {"extractor.device=cuda", "extractor.amp=true", "extractor.channels_last=true", "kmeans.gpu=true",
            f"image_dir={tmp_path}/data/train"} <= set(aux)
    assert steps["auxlabels_amp"].needs == ("data",)
    for name, amp in (("pretrain_bf16", "bf16"), ("pretrain_fp16", "fp16"), ("pretrain_r50", "none"),
                      ("pretrain_r50_bf16", "bf16")):
        args = _stage_args(steps[name])
        assert args[0] == "pretrain" and "train.device=cuda" in args and args.count(f"train.amp={amp}") == 1
        assert f"out_dir={tmp_path}/{name}" in args
    assert _stage_args(steps["pretrain_r50"])[1] == "configs/pretrain/default.yaml"
    ddp = steps["ddp_syncbn"]
    assert ddp.argv[:8] == ["py", "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node",
                            "2"]
    assert {"model.norm=sync", "train.backend=nccl", "train.device=cuda"} <= set(_stage_args(ddp)) and not ddp.note
    assert steps["auxlabels_ddp"].argv[7] == "2"
    for name in ("finetune_cuda", "finetune_amp"):
        args = _stage_args(steps[name])
        assert args[:2] == ["finetune", "configs/finetune/tiny.yaml"] and "device=cuda" in args
        assert f"data_root={tmp_path}/data" in args
    assert "amp=true" in _stage_args(steps["finetune_amp"]) and "amp=true" not in _stage_args(steps["finetune_cuda"])
    assert steps["faiss_kmeans"].skip is None


def test_one_gpu_and_no_faiss_gpu(tmp_path):
    steps = {s.name: s for s in gpu_check.build_steps(tmp_path, n_gpus=1, faiss_gpu=False)}
    assert steps["ddp_syncbn"].argv[7] == "1" and "SyncBN are not exercised" in steps["ddp_syncbn"].note
    assert steps["faiss_kmeans"].skip.startswith("faiss-gpu not installed")
    assert "kmeans.gpu=false" in _stage_args(steps["auxlabels_amp"])
    assert [s.name for s in gpu_check.select(list(steps.values()), ["pretrain_fp16,finetune_cuda"])] == \
        ["data", "pretrain_fp16", "finetune_cuda"]


def test_every_stage_command_is_a_valid_config(tmp_path, capsys):
    """The overrides the GPU check passes are keys and values the schemas accept (caught here, on the CPU,
    rather than in the few minutes a GPU is available)."""
    for step in gpu_check.build_steps(tmp_path, n_gpus=2, faiss_gpu=True):
        if "--child" not in step.argv:
            continue
        cwd = os.getcwd()
        os.chdir(REPO)  # the commands name configs relative to the repository root
        try:
            rc = auxseg_main([*_stage_args(step), "--print-config"])
        finally:
            os.chdir(cwd)
        assert rc == 0, (step.name, capsys.readouterr().err)


def test_run_step_parses_the_child_result_and_errors(tmp_path):
    record = {"rank": 0, "rc": 0, "wall_s": 1.0, "it_per_s": 10.0, "peak_allocated_mib": 512.0, "iterations": 5}
    ok = gpu_check.Step("ok", "fake", [sys.executable, "-c", f"print({gpu_check.RESULT_MARK!r} + {json.dumps(record)!r})"],
                        60, images_per_iter=4)
    r = gpu_check.run_step(ok, tmp_path)
    assert r.status == "passed" and r.it_per_s == 10.0 and r.images_per_s == 40.0 and r.peak_allocated_mib == 512.0
    assert r.detail["iterations"] == 5 and (tmp_path / "ok.log").is_file()
    bad = gpu_check.Step("bad", "fake", [sys.executable, "-c", "raise RuntimeError('CUDA error: out of memory')"], 60)
    r = gpu_check.run_step(bad, tmp_path)
    assert r.status == "failed" and r.error == "exit 1: RuntimeError: CUDA error: out of memory"
    slow = gpu_check.Step("slow", "fake", [sys.executable, "-c", "import time; print('started', flush=True); "
                                           "time.sleep(30)"], 2)
    r = gpu_check.run_step(slow, tmp_path)
    assert r.status == "timeout" and "killed after 2 s" in r.error
    env = {"created": "now", "gpus": "H200", "n_gpus": 1, "torch": "2", "cuda": "13", "faiss": "1", "faiss_gpu": False,
           "command": "python tools/gpu_check.py"}
    table = gpu_check.markdown_table([gpu_check.run_step(ok, tmp_path), r], env)
    assert "| ok | passed | " in table and "| slow | timeout | " in table


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_check_on_a_gpu(tmp_path):
    """The whole check on a CUDA machine: every step passes or is skipped with its reason."""
    res = subprocess.run([sys.executable, str(TOOL), "--out", str(tmp_path)], cwd=REPO, capture_output=True,
                         text=True, timeout=900)
    results = json.loads((tmp_path / "gpu_check.json").read_text())["results"]
    assert res.returncode == 0, [(r["name"], r["error"]) for r in results if r["status"] != "passed"]
    assert {r["status"] for r in results} <= {"passed", "skipped"}
    assert all(r["peak_allocated_mib"] for r in results if r["status"] == "passed" and r["name"] not in
               ("data", "faiss_kmeans"))


def test_faiss_timings_on_the_cpu():
    t = gpu_check.faiss_timings(gpu=False, n_fit=2000, n_assign=5000, dim=16, k=5, niter=3)
    assert set(t) == {"fit_s", "assign_s", "assign_rows_per_s"} and t["assign_rows_per_s"] > 0


def test_saved_activation_bytes_counts_inputs_not_parameters():
    """A linear layer saves its input for the weight gradient: 4 x 8 float32 = 128 bytes; the weight
    itself is a parameter and does not count. A ReLU after it saves its output (4 x 3 x 4 = 48)."""
    import torch

    lin = torch.nn.Linear(8, 3)
    x = torch.randn(4, 8)
    assert gpu_check.saved_activation_bytes(lin, lambda: lin(x)) == 128
    assert gpu_check.saved_activation_bytes(lin, lambda: torch.relu(lin(x))) == 128 + 48
