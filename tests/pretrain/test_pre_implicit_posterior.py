"""QR / RQ (implicit posterior) as pre-training objectives: a tiny pre-training with each through the CLI.

The math itself (auxseg/methods/implicit_posterior.py) is tested by hand in tests/test_implicit_posterior.py."""

from __future__ import annotations

import json
import math

import pytest


@pytest.mark.parametrize("name", ["qr", "rq"])
def test_tiny_pretraining_with_each_objective(gt_label_folder, tmp_path, tiny_config, name):
    from auxseg.checkpoint_io import load_checkpoint
    from pretrain.cli import export_from_checkpoint
    from pretrain.train import run

    cfg = tiny_config(tmp_path / "run", gt_label_folder, f"loss.name={name}", "train.max_iters=4",
                      "train.log_every=1", "train.checkpoint_every=2", f"loss.{name}.warmup_iters=1",
                      f"loss.{name}.mass_momentum=0.5")
    run(cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in log)
    assert all(0.0 <= r["posterior_agreement"] <= 1.0 and r["pixels"] > 100 for r in log)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "iter_0000004.pth")
    assert ckpt["model"]["objective.head.weight"].shape[0] == 6  # one output per auxiliary label
    assert ckpt["model"]["objective.running_mass"].shape == (6,)
    paths = export_from_checkpoint(tmp_path / "run" / "checkpoints" / "iter_0000002.pth", tmp_path / "exp")
    assert load_checkpoint(paths["mmseg"])["meta"]["iteration"] == 2
