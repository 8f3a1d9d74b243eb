"""bf16 mixed precision for mmengine on a CPU: :class:`CPUBf16OptimWrapper`, registered in ``OPTIM_WRAPPERS``.

mmengine's ``AmpOptimWrapper`` asserts a CUDA, NPU or MLU device. bf16 has
fp32's exponent range, so it needs no loss scaling: on a CPU, mixed precision
is the plain ``OptimWrapper`` whose ``optim_context`` (the context in which
mmengine's ``BaseModel.train_step`` runs the data preprocessor, the forward and
the loss) also enters ``torch.autocast("cpu", dtype=torch.bfloat16)``.
``finetune.run`` selects it for ``amp=true`` with ``device=cpu``. It pays on
CPUs with native bf16 (``auxseg env``, ``cpu_bf16``); docs/finetune.md, "bf16".
Importing this module registers the class (as ``finetune.metrics`` does for its metrics).
"""

from __future__ import annotations

import contextlib

import torch

from auxseg.mmseg_compat import import_mmseg
from auxseg.precision import autocast

import_mmseg()

from mmengine.optim import OptimWrapper  # noqa: E402  (after the compatibility layer, as every finetune module)
from mmengine.registry import OPTIM_WRAPPERS  # noqa: E402

CPU_BF16_WRAPPER = "CPUBf16OptimWrapper"


@OPTIM_WRAPPERS.register_module(name=CPU_BF16_WRAPPER)
class CPUBf16OptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward and loss run under bf16 autocast on the CPU (no loss scaling)."""

    @contextlib.contextmanager
    def optim_context(self, model: torch.nn.Module):
        with super().optim_context(model), autocast("cpu", "bf16"):
            yield
