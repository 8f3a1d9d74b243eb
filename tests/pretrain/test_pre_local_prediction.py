"""The local_prediction objective: gradients, sampling, label-free training of the small models and of a
ResNet-18 through the CLI, resume, and the small-model export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from auxseg.checkpoint_io import CheckpointError, load_checkpoint, save_checkpoint
from auxseg.config import ConfigError, load_config
from auxseg.contracts.backbone import read_backbone_weights
from auxseg.contracts.small_model import SMALL_MODEL_FILENAME, read_small_model
from auxseg.images import read_label, write_rgb_png
from auxseg.methods.local_prediction import offsets
from auxseg.nets.small import build_small_model
from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset
from boundaries.learned import read_predicting_network
from loop.cli import main as auxseg_main
from pretrain.config import PretrainConfig
from pretrain.export import export_local_predictor
from pretrain.objectives import OBJECTIVES, StepBatch
from pretrain.objectives.local_prediction import LocalPrediction, LocalPredictionConfig
from pretrain.train import PretrainModel, run

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs/pretrain/tiny.yaml"
QUIET = ["train.progress=false", "train.tensorboard=false", "train.log_every=1"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """A plain folder of 6 synthetic images, no labels anywhere near it."""
    root = tmp_path_factory.mktemp("lp_images")
    make_synthetic_dataset(root / "dataset", SyntheticSpec(num_train=6, num_val=0, height=48, width=64, seed=5))
    return root / "dataset" / "train"


def _batch(n: int, seed: int = 0) -> StepBatch:
    """A batch without labels, coordinates or folder: the objective must not need them."""
    return StepBatch(label=None, coords=None, index=torch.arange(n), size=None, folder=None, iteration=0,
                     generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("loss", ["position", "factor"])
@pytest.mark.parametrize("arch", ["linear", "predseg1"])
def test_every_parameter_gets_a_gradient(arch, loss):
    torch.manual_seed(0)
    net = build_small_model(arch)
    obj = LocalPrediction(LocalPredictionConfig(neighbourhood=20, loss=loss, noise=0.1, repetitions=2,
                                                locations=16), net.out_channels)
    images = torch.randn(4, 3, 72, 72)  # predseg1: a 6x6 map, enough for the radius-2 neighbourhood
    value, stats = obj(net(images), _batch(2))
    value.backward()
    params = dict(net.named_parameters()) | {f"objective.{k}": p for k, p in obj.named_parameters()}
    assert set(params) >= {"objective.logit_p", "objective.log_var"}
    for name, p in params.items():
        assert p.grad is not None and bool((p.grad != 0).any()), name
    assert obj.logit_p.shape == (10,) and obj.log_var.shape == (10, net.out_channels)
    assert 0 < stats["connection_probability"] < 1 and 0 <= stats["posterior"] <= 1 and 0 <= stats["top1"] <= 1


def test_sampling_stays_inside_and_never_draws_the_centre_as_a_negative():
    obj = LocalPrediction(LocalPredictionConfig(neighbourhood=12, negatives=10, locations=500), 3)
    centre, neg = obj.sample(3, 7, 9, torch.Generator().manual_seed(1))
    ys, xs = centre // 9, centre % 9
    assert bool(((ys >= 2) & (ys < 5) & (xs >= 2) & (xs < 7)).all())  # radius 2: every neighbour exists
    assert neg.shape == (3, 500, 10) and bool((neg != centre[..., None]).all())
    assert int(neg.min()) >= 0 and int(neg.max()) <= 62 and len(torch.unique(neg)) == 63


def test_repetitions_average_the_losses_of_independent_draws():
    """Averaging in one graph = accumulating the gradients of loss / repetitions over the draws."""
    torch.manual_seed(0)
    feats = torch.randn(2, 5, 8, 8, requires_grad=True)
    obj = LocalPrediction(LocalPredictionConfig(repetitions=3, locations=8), 5)
    together, _ = obj(feats, _batch(1, seed=4))
    gen = torch.Generator().manual_seed(4)
    single = LocalPrediction(LocalPredictionConfig(repetitions=1, locations=8), 5)
    parts = [single(feats, StepBatch(**{**_batch(1).__dict__, "generator": gen}))[0] for _ in range(3)]
    assert float(together.detach()) == pytest.approx(float(sum(parts).detach() / 3), rel=1e-6)


def test_small_feature_maps_are_refused_with_a_clear_message():
    obj = LocalPrediction(LocalPredictionConfig(neighbourhood=12), 3)
    with pytest.raises(ValueError, match="too small for neighbourhood 12"):
        obj(torch.randn(2, 3, 4, 9), _batch(1))


def test_registry_and_config_section():
    assert OBJECTIVES["local_prediction"].needs_labels is False
    assert OBJECTIVES["infonce"].needs_labels is True
    with pytest.raises(ConfigError, match="neighbourhood must be one of"):
        load_config(PretrainConfig, TINY, ["loss.local_prediction.neighbourhood=6"])
    with pytest.raises(ConfigError, match="small model"):
        load_config(PretrainConfig, TINY, ["model.arch=linear", "model.decoder=aspp"])


def _cli(out: Path, *overrides: str) -> int:
    return auxseg_main(["pretrain", str(TINY), f"out_dir={out}", "loss.name=local_prediction",
                        "augment.crop=[40,48]", "augment.out_size=48", *QUIET, *overrides])


@pytest.mark.parametrize("arch", ["pixel", "linear"])
def test_small_models_train_without_labels_through_the_cli(image_folder, tmp_path, arch, capsys):
    out = tmp_path / arch
    code = _cli(out, "data.source=images", f"data.images={image_folder}", f"model.arch={arch}",
                "train.max_iters=3", "train.checkpoint_every=3", "loss.local_prediction.repetitions=2",
                "loss.local_prediction.locations=64", "loss.local_prediction.noise=0.2")
    assert code == 0
    assert capsys.readouterr().out.strip().endswith(f"done: {out / SMALL_MODEL_FILENAME}")
    assert not (out / "backbone_mmseg.pth").exists() and not (out / "backbone_torchvision.pth").exists()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [1, 2, 3]
    assert all(0 < r["connection_probability"] < 1 and 0 <= r["posterior"] <= 1 for r in log)
    export = read_small_model(out / SMALL_MODEL_FILENAME)
    assert export.meta["arch"] == arch and export.meta["iteration"] == 3 and export.meta["has_predictor"]
    ckpt = load_checkpoint(out / "checkpoints" / "iter_0000003.pth")
    torch.testing.assert_close(export.predictor["log_var"], ckpt["model"]["objective.log_var"])
    assert export.predictor["log_var"].shape == (4, export.model.out_channels) and export.predictor["neighbourhood"] == 8
    # the unlabelled folder is all ignore and names what it is
    manifest = json.loads((out / "unlabelled" / "manifest.json").read_text())
    assert manifest["num_labels"] == 1 and len(manifest["images"]) == 6 and manifest["extractor"].startswith("none")
    # --export of the training checkpoint writes the same small-model file, never an mmseg export
    assert auxseg_main(["pretrain", "--export", str(out / "checkpoints" / "iter_0000003.pth"),
                        "--out", str(tmp_path / "re")]) == 0
    again = read_small_model(tmp_path / "re" / SMALL_MODEL_FILENAME)
    for key, value in export.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key])
    # finetune's reader refuses it in one line instead of half-loading it
    with pytest.raises(CheckpointError, match=str(out / SMALL_MODEL_FILENAME)):
        read_backbone_weights(out / SMALL_MODEL_FILENAME)


def test_a_labelled_objective_refuses_a_plain_image_folder(image_folder, tmp_path, capsys):
    code = auxseg_main(["pretrain", str(TINY), f"out_dir={tmp_path}", "data.source=images",
                        f"data.images={image_folder}", *QUIET])
    assert code == 2
    assert "objective 'infonce' needs auxiliary labels" in capsys.readouterr().err


def test_resnet18_on_a_label_folder_trains_and_resumes(gt_label_folder, tmp_path, tiny_config):
    """The labels of the folder are ignored (the objective never reads them: see _batch, label=None).

    With one intra-op thread the resumed run is bit-identical to the straight one (checked by hand:
    OMP_NUM_THREADS=1 and torch.set_num_threads(1)); the tests run with two threads, where the matrix
    products of the loss may round differently from run to run, so the comparison allows float noise
    that a wrong resume (another iteration, batch or optimizer state) would exceed by orders of magnitude.
    """
    common = ["loss.name=local_prediction", "train.max_iters=4", "train.checkpoint_every=2", "optim.warmup_iters=1",
              "optim.lr=0.001", "loss.local_prediction.repetitions=2", "loss.local_prediction.locations=32"]
    straight = run(tiny_config(tmp_path / "a", gt_label_folder, *common))
    stopped = run(tiny_config(tmp_path / "b", gt_label_folder, *common, "train.stop_at=2"))
    assert stopped.name == "iter_0000002.pth"
    resumed = run(tiny_config(tmp_path / "b", gt_label_folder, *common))
    assert straight.name == resumed.name == "backbone_mmseg.pth"  # a ResNet exports as a normal backbone
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "iter_0000004.pth")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "iter_0000004.pth")
    assert {k for k in a["model"] if k.startswith("objective.")} == {"objective.logit_p", "objective.log_var"}
    first = load_checkpoint(tmp_path / "b" / "checkpoints" / "iter_0000002.pth")
    moved = max(float((v.float() - first["model"][k].float()).abs().max()) for k, v in a["model"].items())
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], rtol=1e-4, atol=1e-6, msg=key)
    assert moved > 1e-4  # iterations 3-4 changed the weights far more than the tolerance
    losses = [[json.loads(x)["loss"] for x in (tmp_path / r / "log.jsonl").read_text().splitlines()] for r in "ab"]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4) and len(losses[0]) == 2

    # the ResNet's predictor goes beside its backbone export, and boundaries run from the folder
    export = read_predicting_network(tmp_path / "a")
    assert export.path.name == "local_predictor.pth" and export.meta["backbone"] == "backbone_mmseg.pth"
    torch.testing.assert_close(export.predictor["log_var"], a["model"]["objective.log_var"])
    feats = export.model(torch.zeros(1, 3, 40, 48))
    assert feats.shape == (1, 512, 5, 6)  # dilated, output stride 8, as trained
    write_rgb_png(tmp_path / "img" / "x.png", np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8))
    assert auxseg_main(["boundaries", "predict", str(tmp_path / "a"), str(tmp_path / "img"), str(tmp_path / "bd"),
                        "--no-progress"]) == 0
    assert read_label(tmp_path / "bd" / "x.png").shape == (40, 48)
    saved = load_checkpoint(tmp_path / "a" / "local_predictor.pth")
    shutil.copytree(tmp_path / "a", tmp_path / "t", ignore=shutil.ignore_patterns("checkpoints"))
    for change, message in [({"iteration": 2}, "at iteration 2, but backbone_mmseg.pth at 4: they come from different"),
                            ({"backbone": "../a/backbone_mmseg.pth"}, "meta.backbone must name the backbone export"),
                            ({"stride": 32}, r"meta.stride must be one of \(8, 16\), got 32")]:
        save_checkpoint({**saved, "meta": {**saved["meta"], **change}}, tmp_path / "t" / "local_predictor.pth")
        with pytest.raises(CheckpointError, match=message):
            read_predicting_network(tmp_path / "t")
    # a later export without a predictor for the backbone (here: one with a decoder) removes the stale file
    model = PretrainModel(tiny_config(tmp_path / "a", gt_label_folder, *common))
    assert export_local_predictor(model.net.backbone, model.objective, tmp_path / "t", iteration=4,
                                  backbone_file="backbone_mmseg.pth", decoder=nn.Identity()) is None
    assert not (tmp_path / "t" / "local_predictor.pth").exists()
    (tmp_path / "a" / "backbone_mmseg.pth").unlink()
    with pytest.raises(CheckpointError, match="backbone_mmseg.pth is not beside it"):
        read_predicting_network(tmp_path / "a" / "local_predictor.pth")


def test_offsets_of_the_objective_are_the_neighbourhood():
    obj = LocalPrediction(LocalPredictionConfig(neighbourhood=4), 2)
    assert obj.rows.tolist() == [0, 1, 0, 1] and offsets(4)[2] == (0, -1)
    assert isinstance(obj.logit_p, nn.Parameter)
