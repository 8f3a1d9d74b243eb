"""A small stand-in for ``mmcv.ops`` when mmcv's compiled operators are absent.

mmsegmentation 1.2.2 imports ``mmcv.ops`` at import time (``point_sample`` in
its utils, ``sigmoid_focal_loss`` in its losses, a few optional heads), but
pip-installable mmcv builds (mmcv-lite) ship no compiled ``mmcv._ext``, so
``import mmseg.models`` fails. :func:`install` registers this module's light
replacement as ``mmcv.ops`` *only* when ``mmcv._ext`` cannot be imported:

- ``point_sample`` and ``sigmoid_focal_loss`` in pure PyTorch;
- any other op raises :class:`ModuleNotFoundError` naming the op (mmseg
  guards its optional heads with ``except ModuleNotFoundError``; a plain
  ``ImportError`` would break them), so asking for e.g. ``DeformConv2d`` gives
  a clear message instead of a crash deep inside mmseg.

With compiled mmcv installed, :func:`install` does nothing.

A second gap: mmengine 0.10.7 resolves ``_base_ = 'mmseg::...'`` config paths
through ``pkg_resources``, which setuptools >= 81 no longer ships.
:func:`patch_package_lookup` gives mmengine's config loader equivalents built
on ``importlib.metadata`` when (and only when) ``pkg_resources`` is missing.
:func:`import_mmseg` applies both.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from auxseg.config import ConfigError

PROVIDED_OPS = ("point_sample", "sigmoid_focal_loss")


def point_sample(
    input: torch.Tensor, points: torch.Tensor, align_corners: bool = False, **kwargs
) -> torch.Tensor:
    """Bilinearly sample ``input`` at normalised points.

    Args:
        input: feature map ``[N, C, H, W]``.
        points: ``[N, P, 2]`` or ``[N, Hp, Wp, 2]``, (x, y) in [0, 1] image coordinates.
        align_corners: as in :func:`torch.nn.functional.grid_sample`.

    Returns:
        ``[N, C, P]`` (or ``[N, C, Hp, Wp]`` for 4-D points).
    """
    flat = points.dim() == 3
    grid = points.unsqueeze(2) if flat else points  # [N, P, 1, 2]
    out = F.grid_sample(input, 2.0 * grid - 1.0, align_corners=align_corners, **kwargs)
    return out.squeeze(3) if flat else out


def sigmoid_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: float = 0.25,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017) with mmcv's compiled-op signature.

    Args:
        input: logits ``[N, C]``.
        target: class indices ``[N]`` int64; the value ``C`` means "no class" (all negatives).
        weight: optional per-class weight ``[C]``, applied by each sample's target class.
        reduction: ``"none"`` (``[N, C]``), ``"mean"`` (sum / N, as mmcv) or ``"sum"``.
    """
    if input.dim() != 2 or target.dim() != 1 or input.size(0) != target.size(0):
        raise ValueError(f"expected input [N, C] and target [N], got {tuple(input.shape)} and {tuple(target.shape)}")
    num_classes = input.size(1)
    onehot = F.one_hot(target.long(), num_classes + 1)[:, :num_classes].to(input.dtype)  # [N, C]
    prob = input.sigmoid()
    # log(p) and log(1-p) from logits, numerically stable
    log_p = F.logsigmoid(input)
    log_not_p = F.logsigmoid(-input)
    loss = -(
        alpha * onehot * (1 - prob).pow(gamma) * log_p
        + (1 - alpha) * (1 - onehot) * prob.pow(gamma) * log_not_p
    )
    if weight is not None:
        if weight.dim() != 1 or weight.numel() != num_classes:
            raise ValueError(f"weight must have shape [{num_classes}], got {tuple(weight.shape)}")
        padded = torch.cat([weight, weight.new_ones(1)])
        loss = loss * padded[target.long()].unsqueeze(1)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / input.size(0)
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def has_compiled_ops() -> bool:
    """True when mmcv's compiled extension ``mmcv._ext`` imports."""
    try:
        importlib.import_module("mmcv._ext")
    except ImportError:
        return False
    return True


def _missing_op(name: str):
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    raise ModuleNotFoundError(
        f"mmcv.ops.{name} needs mmcv's compiled operators, which are not installed. "
        f"This project's mmcv compatibility layer provides only {', '.join(PROVIDED_OPS)}. "
        "Use a model without this op, or install full mmcv 2.1.0 compiled for your torch "
        "(see docs/install.md).",
        name=f"mmcv.ops.{name}",
    )


def _build_module() -> types.ModuleType:
    module = types.ModuleType("mmcv.ops", doc=__doc__)
    module.point_sample = point_sample
    module.sigmoid_focal_loss = sigmoid_focal_loss
    module.__getattr__ = _missing_op
    module.__all__ = list(PROVIDED_OPS)
    module.AUXSEG_COMPAT = True
    return module


def is_installed() -> bool:
    """True when ``mmcv.ops`` is this project's compatibility module."""
    return getattr(sys.modules.get("mmcv.ops"), "AUXSEG_COMPAT", False)


def install() -> bool:
    """Register the compatibility ``mmcv.ops`` if compiled ops are absent.

    Must run before the first ``import mmseg``. Idempotent. Returns True when
    the compatibility module is (now) the active ``mmcv.ops``.
    """
    if is_installed():
        return True
    if has_compiled_ops():
        return False
    import mmcv

    module = _build_module()
    sys.modules["mmcv.ops"] = module
    mmcv.ops = module
    return True


def is_package_installed(package: str) -> bool:
    """Like mmengine's ``is_installed`` (distribution or importable module), without ``pkg_resources``."""
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        return spec is not None and spec.origin is not None


def installed_package_path(package: str) -> str:
    """Like mmengine's ``get_installed_path``: the folder of a distribution's top-level module.

    ``mmsegmentation`` -> ``.../site-packages/mmseg`` (from ``top_level.txt``).
    """
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"package {package!r} is not installed", name=package) from None
        return str(Path(spec.origin).parent)
    candidates = [package, package.replace("-", "_")]
    top_level = dist.read_text("top_level.txt")
    if top_level:
        candidates = [line.strip() for line in top_level.splitlines() if line.strip()] + candidates
    for name in candidates:
        path = Path(str(dist.locate_file(name)))
        if path.is_dir():
            return str(path)
    raise ModuleNotFoundError(f"cannot find the module folder of installed package {package!r}", name=package)


def patch_package_lookup() -> bool:
    """Let mmengine's config loader resolve ``mmseg::`` paths without ``pkg_resources``.

    Returns True when the patch was applied (``pkg_resources`` is missing), False when not needed.
    """
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        pass
    else:
        return False
    import mmengine.config.config as mmengine_config

    mmengine_config.is_installed = is_package_installed
    mmengine_config.get_installed_path = installed_package_path
    return True


def memoise_config_formatting() -> None:
    """Format each distinct config text with yapf once per process.

    mmengine formats the whole config with yapf every time it needs
    ``Config.pretty_text`` (the log, the dumped config, every checkpoint's meta):
    about 0.6 s a call on a 2-core CPU and 7 calls per fine-tune of a tiny model.
    The memo returns the very string yapf returned for the same input and style.
    """
    import mmengine.config.config as mmengine_config

    format_code = mmengine_config.FormatCode
    if getattr(format_code, "_auxseg_memo", False):
        return
    memo: dict[tuple[str, str], tuple[str, bool]] = {}

    def memoised(text, style_config=None, **kwargs):
        key = (text, repr(style_config) + repr(sorted(kwargs.items())))
        if key not in memo:
            if len(memo) > 64:  # configs of one process; bound it all the same
                memo.clear()
            memo[key] = format_code(text, style_config=style_config, **kwargs)
        return memo[key]

    memoised._auxseg_memo = True
    mmengine_config.FormatCode = memoised


def import_mmseg():
    """Install the compatibility layer if needed, then import and return ``mmseg``.

    Also registers mmseg's modules in mmengine's registries and lets mmengine
    configs name ``mmseg::`` bases (see :func:`patch_package_lookup`).
    """
    compat = install()
    patch_package_lookup()
    memoise_config_formatting()
    with warnings.catch_warnings():
        if compat:
            # mmcv's transformer module warns on import that its deformable-attention op needs
            # compiled mmcv; the compatibility layer already explains missing ops when one is asked for
            warnings.filterwarnings("ignore", message=".*MultiScaleDeformableAttention.*", category=UserWarning)
        import mmseg
        from mmseg.utils import register_all_modules

        register_all_modules(init_default_scope=False)
    ignore_mmseg_own_warnings()
    return mmseg


def read_mmengine_config(path: str | Path, key: str):
    """Read an mmengine config file (``_base_`` inheritance, ``mmseg::`` bases) as an ``mmengine.Config``.

    mmengine executes the file (OpenMMLab's convention; docs/reliability.md, "Files that are executed"), so
    any failure is the file's: it becomes one :class:`~auxseg.config.ConfigError` line naming the config
    ``key`` that named the file (``finetune.mmseg_config``, ``extractor.config``) and the file.
    """
    import_mmseg()
    from mmengine.config import Config

    try:
        return Config.fromfile(str(path))
    except Exception as err:
        raise ConfigError(f"{key}: {path}: not a valid mmengine config "
                          f"({type(err).__name__}: {' '.join(str(err).split())})") from err


def ignore_mmseg_own_warnings() -> None:
    """Filter the two warnings mmseg 1.2.2 (its last release) gives whenever it builds a model, about its own code."""
    # mmseg's BaseDecodeHead.__init__ calls its own deprecated build_loss (mmseg/models/decode_heads/decode_head.py)
    warnings.filterwarnings("ignore", message=r"``build_loss`` would be deprecated", category=UserWarning)
    # announces a default we keep on purpose: the loss averages over all pixels as in mmseg's published
    # recipes (avg_non_ignore=True would change every number); an explicit False warns all the same
    warnings.filterwarnings("ignore", message=r"Default ``avg_non_ignore`` is False", category=UserWarning)


def build_in_mmseg_scope(registry, cfg: dict):
    """Build from mmseg's registry with 'mmseg' as the default scope (nested types such as
    SegDataPreProcessor are then found), without changing the process-wide scope."""
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope("mmseg"):
        return registry.build(cfg)
