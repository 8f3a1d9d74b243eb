"""Safe checkpoint loading: real mmengine checkpoints load with weights_only=True; code in a pickle never runs."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from auxseg.checkpoint_io import CheckpointError, allow_mmengine_checkpoints, load_checkpoint


@pytest.fixture
def runner_checkpoint(trained_deeplab):
    """A checkpoint written by mmengine's Runner (tiny mmseg model, 2 iterations): message hub, optimizer, ..."""
    return trained_deeplab.work_dir / "iter_2.pth"


def test_plain_weights_only_load_refuses_mmengine_checkpoint(runner_checkpoint):
    # why the allow-list exists: torch's default refuses mmengine's own checkpoints
    before = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()  # as in a fresh process (other tests allowed mmengine's types)
    try:
        with pytest.raises(pickle.UnpicklingError, match="HistoryBuffer|getattr|numpy"):
            torch.load(runner_checkpoint, weights_only=True)
    finally:
        torch.serialization.add_safe_globals(before)


def test_load_checkpoint_reads_runner_checkpoint(runner_checkpoint):
    from mmengine.logging.history_buffer import HistoryBuffer

    ckpt = load_checkpoint(runner_checkpoint)
    assert set(ckpt) >= {"meta", "state_dict", "message_hub", "optimizer", "param_schedulers"}
    assert ckpt["meta"]["iter"] == 2
    assert any(k.startswith("backbone.") for k in ckpt["state_dict"])
    buffers = ckpt["message_hub"]["log_scalars"]
    loss = buffers["train/loss"]
    values, counts = loss.data
    assert isinstance(loss, HistoryBuffer) and len(values) == 2
    # the statistics methods came back through the restricted getattr
    assert loss.statistics("mean") == pytest.approx(float(values.sum() / counts.sum()))
    assert loss.statistics("max") == pytest.approx(float(values.max()))
    # the process-wide allow-list survives load_checkpoint (torch's context manager would drop it)
    allow_mmengine_checkpoints()
    load_checkpoint(runner_checkpoint)
    assert torch.load(runner_checkpoint, weights_only=True)["meta"]["iter"] == 2


class _RunsCode:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Getattr:
    """Unpickling this calls builtins.getattr(target, name)."""

    def __init__(self, target, name):
        self.target, self.name = target, name

    def __reduce__(self):
        return (getattr, (self.target, self.name))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_checkpoint(path)
    assert not marker.exists()
    allow_mmengine_checkpoints()  # the process-wide allow-list does not open the door either
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not marker.exists()


def test_getattr_is_only_allowed_for_history_buffer_methods(tmp_path):
    from mmengine.logging.history_buffer import HistoryBuffer

    ok = tmp_path / "ok.pth"
    torch.save({"m": _Getattr(HistoryBuffer, "min")}, ok)
    assert load_checkpoint(ok)["m"] is HistoryBuffer.min
    for target, name in ((HistoryBuffer, "__init__"), (HistoryBuffer, "__class__"), (torch.Tensor, "add_")):
        bad = tmp_path / f"bad_{name}.pth"
        torch.save({"m": _Getattr(target, name)}, bad)
        with pytest.raises(CheckpointError, match=f"bad_{name}.pth"):
            load_checkpoint(bad)


def test_missing_and_truncated_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.pth"):
        load_checkpoint(tmp_path / "nothing.pth")
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.arange(1000.0)}}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cut.pth"):
        load_checkpoint(cut)
