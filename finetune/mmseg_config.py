"""Reading and querying mmseg configs: the one module that does it for the fine-tune and the loop.

mmengine executes a config file when it reads it (OpenMMLab's convention; docs/reliability.md,
"Files that are executed"), so :func:`load_mmseg_config` turns any failure into one line naming the
file (:func:`auxseg.mmseg_compat.read_mmengine_config`, which the auxiliary-label stage's mmseg extractor
uses too). The other functions read what the project needs from a loaded config: the dataset behind the
dataloader wrappers, a dataset class's defaults, the training image folder.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from auxseg.config import ConfigError
from auxseg.mmseg_compat import import_mmseg, read_mmengine_config
from auxseg.paths import resolve_path


def load_mmseg_config(path: str | Path):
    """Read the ``finetune.mmseg_config`` file as an ``mmengine.Config`` (``_base_`` inheritance, ``mmseg::``
    bases; a file that fails is one line, :func:`auxseg.mmseg_compat.read_mmengine_config`)."""
    import_mmseg()

    import finetune.datasets  # noqa: F401  (registers our dataset classes)
    import finetune.metrics  # noqa: F401  (registers PerClassIoUMetric)

    path = resolve_path(path)
    if not path.is_file():
        raise ConfigError(f"mmseg config not found: {path}")
    return read_mmengine_config(path, "finetune.mmseg_config")


def inner_dataset(loader_cfg) -> Any:
    """The dataset dict of a dataloader config, through wrappers like RepeatDataset."""
    ds = loader_cfg.dataset
    while "dataset" in ds and "data_prefix" not in ds:
        ds = ds.dataset
    return ds


def dataset_default(ds_cfg, name: str) -> Any:
    """A dataset-class constructor default (e.g. ``img_suffix``) when the config does not set it."""
    from mmseg.registry import DATASETS

    if name in ds_cfg:
        return ds_cfg[name]
    cls = DATASETS.get(ds_cfg.type)
    if cls is None:
        raise ConfigError(f"unknown dataset type {ds_cfg.type!r} in the mmseg config")
    return inspect.signature(cls.__init__).parameters[name].default


def train_image_dir(mmcfg) -> tuple[Path, str]:
    """The training image folder and image suffix of an mmseg config."""
    ds = inner_dataset(mmcfg.train_dataloader)
    root = Path(ds.get("data_root") or "")
    return root / ds.data_prefix.get("img_path", ""), dataset_default(ds, "img_suffix")
