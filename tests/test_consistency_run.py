"""The consistency fine-tune end to end on CPU: a tiny UniMatch run through the command line, its exact
resume, two gloo processes, and the config errors (docs/consistency.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from independent import miou_by_inference

from auxseg.checkpoint_io import load_checkpoint
from auxseg.config import ConfigError, load_config, to_dict
from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset
from finetune.config import FinetuneConfig
from loop.cli import main as auxseg_main

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = REPO_ROOT / "configs/finetune/tiny.yaml"
# threshold 0: every unlabelled pixel is a target, so the unlabelled terms are not 0 within 4 iterations;
# batch 1: the cheapest step DeepLabV3's image-pooling BN accepts (UniMatch's passes hold 2 images)
UNIMATCH = ["consistency.method=unimatch", "consistency.threshold=0", "batch_size=1", "split.num_images=3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """6 train + 2 val synthetic scenes of 48 x 64: 3 labelled, 3 unlabelled."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"),
                                  SyntheticSpec(num_train=6, num_val=2, height=48, width=64, seed=0))


def _finetune(data: Path, work: Path, *extra: str) -> int:
    return auxseg_main(["finetune", str(TINY_YAML), f"data_root={data}", f"work_dir={work}", "max_iters=4",
                        "val_interval=2", "checkpoint_interval=2", *UNIMATCH, *extra])


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_unimatch_finetune_logs_its_terms_and_resumes_exactly(data, tmp_path, capsys):
    work = tmp_path / "straight"
    assert _finetune(data, work) == 0
    assert "mIoU" in capsys.readouterr().out
    results = json.loads((work / "results.json").read_text())
    c = results["consistency"]
    assert c["method"] == "unimatch" and c["num_strong"] == 2 and c["fp_share"] == 0.5 and c["threshold"] == 0.0
    assert c["unlabelled"]["num_images"] == 3 and c["unlabelled"]["scored_against_ground_truth"] is True
    labelled = set((work / "split.txt").read_text().split())
    unlabelled = set((work / "unlabelled.txt").read_text().split())
    assert len(labelled) == 3 and not labelled & unlabelled and len(labelled | unlabelled) == 6
    log = _lines(work / "consistency_log.jsonl")
    assert [r["iter"] for r in log] == [1, 2, 3, 4]
    for row in log:  # threshold 0: every valid pixel is confident, so both accuracies count the same pixels
        assert row["mask_ratio"] == 1.0 and row["pseudo_acc"] == row["pseudo_acc_all"]
        assert row["loss_u_strong"] > 0 and row["loss_u_fp"] > 0
        assert row["loss_unlabelled"] == pytest.approx(row["loss_u_strong"] + row["loss_u_fp"])
    history = c["train_history"]
    assert [h["iter"] for h in history] == [2, 4]
    assert history[1]["mask_ratio"] == 1.0
    assert history[0]["loss_labelled"] == pytest.approx((log[0]["loss_labelled"] + log[1]["loss_labelled"]) / 2, abs=1e-6)
    scalars = (next(work.glob("*/vis_data/scalars.json"))).read_text()  # what TensorBoard gets too
    assert '"mask_ratio"' in scalars and '"loss_u_fp"' in scalars and list(work.glob("*/vis_data/events.out.*"))
    # the checkpoint is a plain EncoderDecoder's, key for key, and mmseg's own inference gives the same mIoU
    assert results["mIoU"] == miou_by_inference(work, work / "iter_4.pth", num_classes=6)["mIoU"]

    # killed after iteration 2: the same command resumes there and ends where the straight run ended, bit for bit
    resumed = tmp_path / "resumed"
    shutil.copytree(work, resumed)
    (resumed / "iter_4.pth").unlink()
    (resumed / "last_checkpoint").write_text(str(resumed / "iter_2.pth"))
    assert _finetune(data, resumed) == 0
    a, b = load_checkpoint(work / "iter_4.pth"), load_checkpoint(resumed / "iter_4.pth")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for p, q in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(p["momentum_buffer"], q["momentum_buffer"])
    assert _lines(resumed / "consistency_log.jsonl") == log  # iterations 3 and 4 recomputed, equal to the last bit
    assert json.loads((resumed / "results.json").read_text())["mIoU"] == results["mIoU"]


def test_settings_are_typed_and_checked(data, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'consistency.threshold'"):
        load_config(FinetuneConfig, TINY_YAML, ["consistency.treshold=0.9"])
    with pytest.raises(ConfigError, match="'fixmatch'"):
        load_config(FinetuneConfig, TINY_YAML, ["consistency.method=fixmach"])
    with pytest.raises(ConfigError, match=r"consistency.threshold: must be in \[0, 1\]"):
        load_config(FinetuneConfig, TINY_YAML, ["consistency.threshold=1.5"])
    with pytest.raises(ConfigError, match=r"consistency.strong.blur_sigma: \[2.0, 0.1\] is not an interval"):
        load_config(FinetuneConfig, TINY_YAML, ["consistency.method=fixmatch", "consistency.strong.blur_sigma=[2, 0.1]"])
    with pytest.raises(ConfigError, match="does not combine with targets.kind=coarse"):
        load_config(FinetuneConfig, TINY_YAML, ["consistency.method=fixmatch", "targets.kind=coarse"])
    with pytest.raises(ConfigError, match="launcher=slurm needs device=cuda"):
        load_config(FinetuneConfig, TINY_YAML, ["launcher=slurm"])
    # off, the section is left out of the plain config: step records and study cell names made before stay valid
    assert "consistency" not in to_dict(load_config(FinetuneConfig, TINY_YAML))
    assert to_dict(load_config(FinetuneConfig, TINY_YAML, ["consistency.method=fixmatch"]))["consistency"]["threshold"] == 0.95
    # every training image labelled: nothing left to learn from, said before any training (exit 2: a config error)
    work = tmp_path / "all"
    assert auxseg_main(["finetune", str(TINY_YAML), f"data_root={data}", f"work_dir={work}",
                        "consistency.method=fixmatch"]) == 2
    assert not list(work.glob("iter_*.pth"))
    assert auxseg_main(["finetune", str(TINY_YAML), f"data_root={data}", f"work_dir={tmp_path / 'nofolder'}",
                        "consistency.method=fixmatch", f"consistency.unlabelled_folder={tmp_path / 'missing'}"]) == 2


def test_progress_line_shows_the_unlabelled_loss_and_pseudo_label_stats():
    from finetune.run import _progress_hook

    class Runner:
        max_iters, iter = 4, 0

    hook = _progress_hook()
    hook.before_train(Runner())
    hook.after_train_iter(Runner(), 0, outputs={"loss": torch.tensor(1.25), "loss_u_strong": torch.tensor(0.5),
                                                "mask_ratio": torch.tensor(0.375), "pseudo_acc": torch.tensor(0.875)})
    assert hook.train.postfix == "loss=1.250, loss_u=0.50, mask=0.38, pl_acc=0.88"
    hook.after_train(Runner())


# ----------------------------------------------------------------------------- two gloo processes


def _worker(rank: int, world: int, port: int, args: list[str], out: str) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from mmengine.runner import Runner

    from finetune.run import run

    train = Runner.train

    def train_and_keep(self):  # each process's weights after training, to compare the two
        model = train(self)
        torch.save({k: v.detach().clone() for k, v in model.module.state_dict().items()}, f"{out}.{rank}")
        return model

    Runner.train = train_and_keep
    run(load_config(FinetuneConfig, TINY_YAML, args))


def test_two_gloo_processes_train_one_model(data, tmp_path):
    import socket
    import time

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    work = tmp_path / "ddp"
    args = [f"data_root={data}", f"work_dir={work}", "max_iters=2", "val_interval=2", "checkpoint_interval=2",
            "launcher=pytorch", "tensorboard=false", *UNIMATCH]
    ctx = mp.start_processes(_worker, args=(2, port, args, str(tmp_path / "weights")), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 300
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("the two fine-tune processes still run after 300 s")
    first, second = torch.load(f"{tmp_path / 'weights'}.0"), torch.load(f"{tmp_path / 'weights'}.1")
    saved = load_checkpoint(work / "iter_2.pth")["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in first.items())  # rank 0 saved what it trained
    params = [k for k in first if "running_" not in k and "num_batches" not in k]
    # per-process BN statistics may differ (gloo: no SyncBN); every parameter is the same in both processes,
    # though each trained on its own images: the gradients were averaged
    assert all(torch.equal(first[k], second[k]) for k in params)
    assert any(not torch.equal(first[k], second[k]) for k in first if "running_mean" in k)
    results = json.loads((work / "results.json").read_text())
    assert results["iteration"] == 2 and results["consistency"]["method"] == "unimatch"
    assert [r["iter"] for r in _lines(work / "consistency_log.jsonl")] == [1, 2]
    assert "CPUDistributedDataParallel" in (work / "mmseg_config.py").read_text()  # finetune.ddp, gloo
