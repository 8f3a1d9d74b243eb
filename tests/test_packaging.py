"""The wheel ships every preset, and they resolve through the package from outside the clone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import json, sys
from pathlib import Path
import auxseg, loop
from auxseg.config import load_config
from auxseg.paths import resolve_path
from auxseg.presets import ROOT, list_presets
from auxlabels.config import AuxLabelsConfig
from finetune.config import FinetuneConfig
from finetune.mmseg_config import load_mmseg_config
from loop.pipeline import PipelineConfig
from loop.study import StudyConfig, load_study
from pretrain.config import PretrainConfig

schemas = {"auxlabels": AuxLabelsConfig, "pretrain": PretrainConfig, "finetune": FinetuneConfig,
           "pipeline": PipelineConfig, "study": StudyConfig}
checked = []
for rel in list_presets("configs/"):
    parts = Path(rel).parts
    if rel.endswith(".yaml"):
        cfg = load_config(schemas[parts[1]], rel)          # relative path, not in the current folder
        if parts[1] == "finetune":
            assert resolve_path(cfg.mmseg_config).is_file(), (rel, cfg.mmseg_config)
            if cfg.split.file:
                assert resolve_path(cfg.split.file).is_file(), (rel, cfg.split.file)
        if parts[1] == "pipeline":
            assert resolve_path(cfg.finetune.mmseg_config).is_file(), rel
        if parts[1] == "study":
            study = load_study(rel)
            for arm in study.arms:  # every arm's pipeline config loads from the installed presets
                load_config(PipelineConfig, resolve_path(study.pipeline), [*study.overrides, *arm.overrides])
    elif rel.endswith(".py") and "_base_" not in parts:
        assert "model" in load_mmseg_config(rel), rel
    checked.append(rel)
print(json.dumps({"auxseg": auxseg.__file__, "loop": loop.__file__, "root": str(ROOT), "checked": checked}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout, unpacked into a folder outside the clone."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy, so the build leaves nothing (build/, *.egg-info) in the checkout
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in ("auxseg", "auxlabels", "pretrain", "finetune", "loop"):
        shutil.copytree(REPO / package, src / package, ignore=ignore)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            str(src), "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp / "dist").glob("auxseg-*.whl"))
    site = tmp / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target",
                           str(site), str(wheel)], capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-2000:]
    return wheel, site, tmp / "elsewhere"


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    cwd.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_holds_every_preset(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(REPO / "auxseg/presets").as_posix()
               for top in ("configs", "splits") for p in (REPO / "auxseg/presets" / top).rglob("*") if p.is_file()}
    assert shipped and {f"auxseg/presets/{rel}" for rel in shipped} <= names


def test_every_shipped_preset_resolves_outside_the_clone(installed):
    _, site, elsewhere = installed
    proc = _run(site, elsewhere, "-c", CHECK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["auxseg"].startswith(str(site)) and out["loop"].startswith(str(site))  # not the checkout
    assert out["root"].startswith(str(site))
    assert "configs/pipeline/demo.yaml" in out["checked"] and len(out["checked"]) >= 20


def test_configs_command_and_demo_config_work_after_install(installed, tmp_path):
    _, site, elsewhere = installed
    listing = _run(site, elsewhere, "-m", "loop", "configs", "list", "pretrain")
    assert listing.returncode == 0 and "configs/pretrain/tiny.yaml" in listing.stdout.split()
    copied = _run(site, elsewhere, "-m", "loop", "configs", "copy", "pretrain/tiny.yaml", str(tmp_path))
    assert copied.returncode == 0 and (tmp_path / "tiny.yaml").is_file()
    demo = _run(site, elsewhere, "-m", "loop", "demo", "--print-config")
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "work_dir: runs/demo" in demo.stdout and "mmseg_config: configs/finetune/mmseg/" in demo.stdout
    missing = _run(site, elsewhere, "-m", "loop", "configs", "show", "pretrain/nope.yaml")
    assert missing.returncode == 1 and "no shipped preset" in missing.stderr
