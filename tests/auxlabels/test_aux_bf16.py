"""bf16 extraction on the CPU (``extractor.amp_cpu``): the forward runs under CPU autocast, the features
come back as float32 close to the fp32 ones, labels follow, and the switch is fingerprinted only when on."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from independent import matched_label_agreement

from auxlabels import resume
from auxlabels.config import AuxLabelsConfig
from auxlabels.extraction import Features
from auxlabels.pipeline import run
from auxseg.config import load_config, to_dict
from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "auxlabels" / "tiny.yaml"
# bf16 features round differently, so K-means moves a few pixels. On this test's data bf16 keeps 99.7% of
# pixels in their (matched) cluster; other changes score lower: K-means seed 1 keeps 85%, another random
# network (extractor.seed=1) 88%, layer3 instead of layer2 50%. 97% leaves room for another CPU's rounding
# and still fails if the bf16 path changed anything but the rounding.
AGREEMENT = 0.97


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), SyntheticSpec(num_train=4, num_val=6, height=48, width=64, seed=3)
    )


def tiny(data: Path, out: Path, *overrides: str) -> AuxLabelsConfig:
    return load_config(AuxLabelsConfig, TINY, [f"image_dir={data / 'val'}", f"gt_dir={data / 'valannot'}",
                                               f"out_dir={out}", *overrides])


def test_bf16_forward_gives_float32_features_close_to_fp32(data, tmp_path):
    images = [np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2)]
    out = {}
    for amp in (False, True):
        feats = Features(tiny(data, tmp_path, f"extractor.amp_cpu={str(amp).lower()}"), tmp_path / "cache", {}, None)
        dtypes: list[torch.dtype] = []

        def record(module, args, output, dtypes=dtypes):
            dtypes.append(output[0].dtype if isinstance(output, list | tuple) else output.dtype)

        feats.model.register_forward_hook(record)
        out[amp] = feats.native(images)
        assert dtypes == [torch.bfloat16 if amp else torch.float32]
    for f32, f16 in zip(out[False], out[True], strict=True):
        assert f16.dtype == np.float32 and f16.shape == f32.shape
        cos = (f32 * f16).sum(0) / (np.linalg.norm(f32, axis=0) * np.linalg.norm(f16, axis=0) + 1e-12)
        assert np.median(cos) > 0.99


def test_bf16_labels_and_fingerprint(data, tmp_path, monkeypatch):
    fp32 = run(tiny(data, tmp_path / "fp32", "superpixels.enabled=false", "outliers.enabled=false"))
    bf16 = run(tiny(data, tmp_path / "bf16", "superpixels.enabled=false", "outliers.enabled=false",
                    "extractor.amp_cpu=true"))
    assert bf16["complete"] and bf16["num_labels"] == fp32["num_labels"]
    agreement = matched_label_agreement(tmp_path / "fp32", tmp_path / "bf16", fp32["num_labels"])
    print(f"bf16 vs fp32: {agreement:.4f} of pixels in matched clusters")
    assert agreement >= AGREEMENT
    assert bf16["fingerprint"] != fp32["fingerprint"]  # bf16 labels never resume an fp32 folder
    # off, the switch leaves the fingerprint of a config without it: folders made before it existed resume
    cfg = tiny(data, tmp_path / "fp32", "superpixels.enabled=false", "outliers.enabled=false")
    before = to_dict(cfg)
    del before["extractor"]["amp_cpu"]
    items = []
    with_switch = resume.fingerprint(cfg, items, None)
    monkeypatch.setattr(resume, "to_dict", lambda _: copy.deepcopy(before))
    assert resume.fingerprint(cfg, items, None) == with_switch
