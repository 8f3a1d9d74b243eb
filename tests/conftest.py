"""Shared pytest setup: markers for gpu / realdata, small CPU thread counts, fixtures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CAMVID_DEFAULT = REPO_ROOT.parent / "shared" / "data" / "camvid"


def camvid_root() -> Path:
    """Where the real CamVid copy lives: $AUXSEG_CAMVID or ../shared/data/camvid."""
    return Path(os.environ.get("AUXSEG_CAMVID", CAMVID_DEFAULT))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_configure(config):
    import torch

    # Tests run on small CPUs; one intra-op thread keeps timings stable when
    # several pytest workers or background jobs share the cores.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible")
    root = camvid_root()
    skip_data = pytest.mark.skip(
        reason=f"CamVid not found at {root} (set AUXSEG_CAMVID to its folder to run real-data tests)"
    )
    has_cuda = None
    has_data = (root / "val").is_dir() and (root / "valannot").is_dir()
    for item in items:
        if "gpu" in item.keywords:
            if has_cuda is None:
                has_cuda = _cuda_available()
            if not has_cuda:
                item.add_marker(skip_gpu)
        if "realdata" in item.keywords and not has_data:
            item.add_marker(skip_data)


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory) -> Path:
    """A folder for session-scoped fixtures' files, kept until the session ends (see ``_free_module_tmp``)."""
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="module", autouse=True)
def _free_module_tmp(request, tmp_path_factory, session_tmp):
    """Delete what a test module wrote under pytest's base temp folder once the module is done, unless one of
    its tests failed. Several tests write checkpoints of full-size networks (about 100 MB each); kept to the
    end, the suite's files outgrow a small CI disk. Function-level ``tmp_path`` folders of passing tests go
    at once (``tmp_path_retention_policy = "failed"`` in pyproject.toml); this covers module fixtures."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def camvid() -> Path:
    return camvid_root()


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
