"""One export path: the end of a run and ``auxseg pretrain --export CHECKPOINT`` write the same files.

For every architecture / objective pair the project trains, a 2-iteration run's own export and the
export written afterwards from its last training checkpoint must hold the same files with the same
tensors and the same meta. (Before they were one function, ``--export`` of a ResNet trained with
``local_prediction`` wrote no ``local_predictor.pth``.)
"""

from __future__ import annotations

import pytest
import torch

from auxseg.checkpoint_io import load_checkpoint
from pretrain.cli import export_from_checkpoint
from pretrain.train import run

PAIRS = [
    ("resnet18", "infonce", []),
    ("resnet18", "infonce", ["model.decoder=aspp", "model.decoder_channels=8"]),
    ("resnet18", "qr", []),
    ("resnet18", "metric_l2", ["loss.metric_l2.pixels_per_label=10", "loss.metric_l2.repeats=1"]),
    ("resnet18", "local_prediction", ["loss.local_prediction.locations=16", "loss.local_prediction.repetitions=1"]),
    ("pixel", "local_prediction", ["loss.local_prediction.locations=16", "loss.local_prediction.repetitions=1"]),
    ("linear", "local_prediction", ["loss.local_prediction.locations=16", "loss.local_prediction.repetitions=1"]),
    ("predseg1", "local_prediction", ["loss.local_prediction.locations=16", "loss.local_prediction.repetitions=1"]),
]


def _same(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(set(a) ^ set(b)))
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    else:
        assert a == b, (where, a, b)


@pytest.mark.parametrize("arch, objective, extra", PAIRS, ids=[f"{a}-{o}{'-aspp' if e and 'aspp' in e[0] else ''}"
                                                               for a, o, e in PAIRS])
def test_run_export_equals_export_from_checkpoint(gt_label_folder, tmp_path, tiny_config, arch, objective, extra):
    out = tmp_path / "run"
    cfg = tiny_config(out, gt_label_folder, f"model.arch={arch}", f"loss.name={objective}", "train.max_iters=2",
                      "train.checkpoint_every=2", "data.batch_size=2", *extra)
    run(cfg)
    written = {p.name: p for p in out.glob("*.pth")}
    again = export_from_checkpoint(out / "checkpoints" / "iter_0000002.pth", tmp_path / "again")
    assert sorted(p.name for p in again.values()) == sorted(written), (sorted(written), again)
    if arch == "resnet18" and objective == "local_prediction":
        assert "local_predictor.pth" in written  # --export used to leave it out
    for name, path in written.items():
        _same(load_checkpoint(path), load_checkpoint(tmp_path / "again" / name), name)


def test_output_stride_is_a_field_of_the_export(gt_label_folder, tmp_path, tiny_config):
    """Readers take the stride from the contract (meta.output_stride), not from the writer's training config."""
    from auxseg.contracts.backbone import export_output_stride, load_backbone_export

    cfg = tiny_config(tmp_path / "run", gt_label_folder, "train.max_iters=1", "model.output_stride=16",
                      "data.batch_size=2")
    meta = load_backbone_export(run(cfg))[1]
    assert meta["output_stride"] == 16 and export_output_stride(meta) == 16
    older = {k: v for k, v in meta.items() if k != "output_stride"}  # written before the field existed
    assert export_output_stride(older) == 16
    assert export_output_stride({"config": {"model": {}}}) == 8  # the oldest exports: all trained at 8
