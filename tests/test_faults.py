"""kill -9 at several points of `auxseg auxlabels` and `auxseg pretrain`, then a rerun: the outputs are
byte-identical to an uninterrupted run and no process of the killed run is left (docs/reliability.md)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find child processes")]


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, their children, ...), from /proc."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# every run of a comparison uses the same thread count: a different intra-op thread count changes the
# order of float reductions, and so the last bits of the weights
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, cwd=REPO, env=ENV, check=True, capture_output=True)


def _kill_when(cmd: list[str], ready, timeout: float = 300) -> set[int]:
    """Start ``cmd``; kill -9 the main process as soon as ``ready()``; return the processes it had started."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: set[int] = set()
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            children |= _descendants(proc.pid)
            if ready():
                children |= _descendants(proc.pid)
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "the run ended before the kill point"
    finally:
        proc.kill()
    return children


def _assert_no_orphans(children: set[int]) -> None:
    deadline = time.time() + 30
    while any(_alive(p) for p in children) and time.time() < deadline:
        time.sleep(0.1)
    left = sorted(p for p in children if _alive(p))
    for p in left:  # do not leave them running when the test fails
        os.kill(p, signal.SIGKILL)
    assert left == [], f"processes of the killed run still alive: {left}"


def _tree_digest(root: Path, pattern: str) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.glob(pattern)) if p.is_file()}


# ----------------------------------------------------------------------------- auxlabels


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("faults"),
                                  SyntheticSpec(num_train=0, num_val=24, height=64, width=96, seed=4))


def _auxlabels_cmd(images: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "loop", "auxlabels", str(REPO / "configs/auxlabels/tiny.yaml"),
            f"image_dir={images / 'val'}", f"gt_dir={images / 'valannot'}", f"out_dir={out}", "num_workers=2",
            "progress=false"]


def _journal_lines(out: Path) -> int:
    return sum(p.read_text().count("\n") for p in out.glob("progress*.jsonl"))


def _comparable_manifest(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    drop = {"timings", "created", "started", "finished", "resumed_from", "out_dir", "config"}
    return {k: v for k, v in m.items() if k not in drop and "time" not in k}


@pytest.fixture(scope="module")
def auxlabels_reference(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("aux_ref") / "out"
    _run(_auxlabels_cmd(images, out))
    return out


@pytest.mark.parametrize("point", ["started", "fitted", "first_image", "almost_done"])
def test_auxlabels_killed_and_rerun_gives_identical_labels(images, auxlabels_reference, tmp_path, point):
    out = tmp_path / "out"
    ready = {
        "started": lambda: (out / "manifest.json").is_file(),
        "fitted": lambda: (out / "fit_state.npz").is_file(),
        "first_image": lambda: _journal_lines(out) >= 1,
        "almost_done": lambda: _journal_lines(out) >= 20,
    }[point]
    children = _kill_when(_auxlabels_cmd(images, out), ready)
    _assert_no_orphans(children)
    assert json.loads((out / "manifest.json").read_text())["complete"] is False  # never claimed done
    _run(_auxlabels_cmd(images, out))
    assert _tree_digest(out, "labels/**/*.png") == _tree_digest(auxlabels_reference, "labels/**/*.png")
    assert _tree_digest(out, "centroids.npy") == _tree_digest(auxlabels_reference, "centroids.npy")
    assert _comparable_manifest(out) == _comparable_manifest(auxlabels_reference)


# ----------------------------------------------------------------------------- pretrain


def _pretrain_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "loop", "pretrain", str(REPO / "configs/pretrain/tiny.yaml"), f"out_dir={out}",
            "train.max_iters=8", "train.checkpoint_every=2", "train.log_every=1", "train.progress=false",
            "train.tensorboard=false", "data.num_workers=2"]


@pytest.fixture(scope="module")
def pretrain_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pre_ref") / "out"
    _run(_pretrain_cmd(out))
    return out


def _log(out: Path) -> list[str]:
    return [json.dumps({k: v for k, v in json.loads(line).items() if k != "data_time"})
            for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("point", ["first_step", "first_checkpoint", "last_checkpoint_but_one"])
def test_pretrain_killed_and_rerun_gives_identical_weights(pretrain_reference, tmp_path, point):
    import torch

    from auxseg.checkpoint_io import load_checkpoint

    out = tmp_path / "out"
    log = out / "log.jsonl"
    ready = {
        "first_step": lambda: log.is_file() and log.read_text().count("\n") >= 1,
        "first_checkpoint": lambda: (out / "checkpoints" / "iter_0000002.pth").is_file(),
        "last_checkpoint_but_one": lambda: (out / "checkpoints" / "iter_0000006.pth").is_file(),
    }[point]
    children = _kill_when(_pretrain_cmd(out), ready)
    _assert_no_orphans(children)
    assert not (out / "backbone_mmseg.pth").exists()  # nothing claimed done
    _run(_pretrain_cmd(out))
    ref = load_checkpoint(pretrain_reference / "checkpoints" / "iter_0000008.pth")
    got = load_checkpoint(out / "checkpoints" / "iter_0000008.pth")
    assert ref["model"].keys() == got["model"].keys()
    assert all(torch.equal(ref["model"][k], got["model"][k]) for k in ref["model"])
    assert _log(out) == _log(pretrain_reference)
    ref_export = load_checkpoint(pretrain_reference / "backbone_mmseg.pth")["state_dict"]
    got_export = load_checkpoint(out / "backbone_mmseg.pth")["state_dict"]
    assert all(torch.equal(ref_export[k], got_export[k]) for k in ref_export)
