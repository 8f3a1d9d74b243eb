"""The mmcv.ops stand-in: reference formulas for its two ops, clear errors for the rest, mmseg imports."""

from __future__ import annotations

import sys

import pytest
import torch

from auxseg import mmseg_compat as mmcv_compat
from auxseg.mmseg_compat import import_mmseg, point_sample, sigmoid_focal_loss


def reference_bilinear(feat: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Sample ``feat [C, H, W]`` at normalised (x, y), align_corners=False, zero outside: by hand."""
    C, H, W = feat.shape
    px, py = x * W - 0.5, y * H - 0.5  # pixel centres sit at i + 0.5
    x0, y0 = int(torch.floor(torch.tensor(px))), int(torch.floor(torch.tensor(py)))
    out = torch.zeros(C, dtype=feat.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < H and 0 <= xx < W:
                out += wx * wy * feat[:, yy, xx]
    return out


def test_point_sample_matches_hand_bilinear():
    torch.manual_seed(0)
    feat = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    points = torch.rand(2, 4, 2, dtype=torch.float64)  # [N, P, 2], (x, y) in [0, 1]
    points[0, 0] = torch.tensor([0.0, 0.0])  # a corner: half the taps fall outside
    out = point_sample(feat, points)  # [N, C, P]
    assert out.shape == (2, 3, 4)
    for n in range(2):
        for p in range(4):
            x, y = points[n, p].tolist()
            torch.testing.assert_close(out[n, :, p], reference_bilinear(feat[n], x, y))


def test_point_sample_4d_points_and_exact_pixel_centres():
    feat = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    # the centre of pixel (row 1, col 2) is x = 2.5/4, y = 1.5/3: bilinear returns the pixel itself
    points = torch.tensor([[[[2.5 / 4, 1.5 / 3], [0.5 / 4, 0.5 / 3]]]])  # [1, 1, 2, 2]
    out = point_sample(feat, points)
    assert out.shape == (1, 1, 1, 2)
    torch.testing.assert_close(out.flatten(), torch.tensor([6.0, 0.0]))


def reference_focal(logits, target, gamma, alpha):
    """Lin et al. 2017, element-wise: -alpha_t (1 - p_t)^gamma log(p_t) over one-vs-all targets."""
    N, C = logits.shape
    loss = torch.zeros(N, C, dtype=logits.dtype)
    for i in range(N):
        for c in range(C):
            p = torch.sigmoid(logits[i, c])
            positive = int(target[i]) == c
            p_t = p if positive else 1 - p
            a_t = alpha if positive else 1 - alpha
            loss[i, c] = -a_t * (1 - p_t) ** gamma * torch.log(p_t)
    return loss


def test_sigmoid_focal_loss_matches_formula():
    torch.manual_seed(1)
    logits = torch.randn(6, 4, dtype=torch.float64)
    target = torch.tensor([0, 3, 1, 4, 2, 2])  # 4 = C: "no class", all four are negatives
    ref = reference_focal(logits, target, gamma=2.0, alpha=0.25)
    torch.testing.assert_close(sigmoid_focal_loss(logits, target, 2.0, 0.25, None, "none"), ref)
    torch.testing.assert_close(sigmoid_focal_loss(logits, target, 2.0, 0.25, None, "sum"), ref.sum())
    # mmcv's "mean" divides the sum by N (not N*C)
    torch.testing.assert_close(sigmoid_focal_loss(logits, target, 2.0, 0.25, None, "mean"), ref.sum() / 6)
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    per_sample = torch.cat([weight, torch.ones(1, dtype=torch.float64)])[target].unsqueeze(1)
    torch.testing.assert_close(sigmoid_focal_loss(logits, target, 2.0, 0.25, weight, "none"), ref * per_sample)


def test_sigmoid_focal_loss_gradient_and_bad_input():
    logits = torch.zeros(3, 2, requires_grad=True)
    sigmoid_focal_loss(logits, torch.tensor([0, 1, 2])).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(logits, torch.tensor([0, 1, 2]), reduction="avg")
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        sigmoid_focal_loss(torch.zeros(3), torch.tensor([0, 1, 2]))


def test_install_registers_stand_in_and_mmseg_imports():
    assert not mmcv_compat.has_compiled_ops()  # this environment has mmcv-lite
    import_mmseg()
    assert mmcv_compat.is_installed()
    from mmcv.ops import point_sample as ps
    from mmcv.ops import sigmoid_focal_loss as sfl

    assert ps is point_sample and sfl is sigmoid_focal_loss
    import mmseg.models  # noqa: F401  (fails without the stand-in)

    assert mmcv_compat.install() is True  # idempotent


def test_missing_op_raises_clear_module_not_found():
    import_mmseg()
    ops = sys.modules["mmcv.ops"]
    with pytest.raises(ModuleNotFoundError, match=r"mmcv\.ops\.DeformConv2d needs mmcv's compiled operators"):
        ops.DeformConv2d  # noqa: B018
    with pytest.raises(ImportError, match="CrissCrossAttention"):
        from mmcv.ops import CrissCrossAttention  # noqa: F401
    assert not hasattr(ops, "__path__")  # dunder lookups stay AttributeError, so introspection works


def test_mmseg_focal_loss_wrapper_uses_stand_in():
    import_mmseg()
    from mmseg.models.losses import focal_loss

    assert focal_loss._sigmoid_focal_loss is sigmoid_focal_loss  # mmseg bound our op at import time
    torch.manual_seed(2)
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 2, 1, 1, 0])
    one_hot = torch.nn.functional.one_hot(target, 3).to(logits.dtype)
    value = focal_loss.sigmoid_focal_loss(logits, target, one_hot, gamma=2.0, alpha=0.25, reduction="sum")
    torch.testing.assert_close(value, reference_focal(logits.detach(), target, 2.0, 0.25).sum())
    value.backward()
    assert logits.grad.abs().sum() > 0


def test_mmseg_config_bases_resolve_without_pkg_resources(tmp_path):
    import_mmseg()
    path = mmcv_compat.installed_package_path("mmsegmentation")
    assert path.endswith("mmseg")
    assert mmcv_compat.is_package_installed("mmsegmentation")
    assert not mmcv_compat.is_package_installed("no_such_package_xyz")
    from mmengine.config import Config

    cfg_file = tmp_path / "c.py"
    cfg_file.write_text("_base_ = 'mmseg::_base_/models/pspnet_r50-d8.py'\nmodel = dict(pretrained=None)\n")
    cfg = Config.fromfile(str(cfg_file))
    assert cfg.model.decode_head.type == "PSPHead" and cfg.model.pretrained is None


def test_config_text_is_formatted_once_and_exactly_as_yapf_formats_it():
    import mmengine.config.config as mmengine_config
    from mmengine.config import Config
    from yapf.yapflib.yapf_api import FormatCode

    import_mmseg()
    memoised = mmengine_config.FormatCode
    memo = next(c.cell_contents for c in memoised.__closure__ if isinstance(c.cell_contents, dict))
    cfg = Config(dict(model=dict(type="EncoderDecoder", backbone=dict(depth=18)), crop_size=(64, 64), n=len(memo)))
    first = cfg.pretty_text
    size = len(memo)
    assert cfg.pretty_text == first and Config(cfg.to_dict()).pretty_text == first
    assert len(memo) == size  # the same text again: served from the memo, yapf not called
    unformatted = Config(cfg.to_dict(), format_python_code=False).pretty_text
    assert first == FormatCode(unformatted, style_config=dict(
        based_on_style="pep8", blank_line_before_nested_class_or_def=True,
        split_before_expression_after_opening_paren=True))[0]  # exactly what yapf itself returns
