"""Distributed fine-tuning on CPUs (gloo): what mmengine's Runner needs besides its CUDA path.

mmengine's ``launcher=pytorch`` calls ``torch.cuda.set_device`` before it creates the process group,
and wraps the model in ``MMDistributedDataParallel(device_ids=[LOCAL_RANK])``, which torch refuses for
a CPU module. On ``device=cpu`` :func:`finetune.run.run` therefore joins torchrun's process group itself
(gloo, :func:`auxseg.distributed.init_process_group`; mmengine then skips its own initialisation) and
names :class:`CPUDistributedDataParallel` as ``model_wrapper_cfg``. BN stays per process (SyncBN
needs a GPU). Importing this module registers the wrapper.
"""

from __future__ import annotations

from auxseg.mmseg_compat import import_mmseg

import_mmseg()

from mmengine.model import MMDistributedDataParallel  # noqa: E402  (after the compatibility layer)
from mmengine.registry import MODEL_WRAPPERS  # noqa: E402

CPU_DDP_WRAPPER = "CPUDistributedDataParallel"


@MODEL_WRAPPERS.register_module(name=CPU_DDP_WRAPPER)
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's ``MMDistributedDataParallel`` without ``device_ids`` for a module on the CPU (torch's rule)."""

    def __init__(self, module, device_ids=None, **kwargs) -> None:
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        super().__init__(module=module, device_ids=None if on_cpu else device_ids, **kwargs)


def join_cpu_process_group() -> bool:
    """Join torchrun's process group over gloo (no-op in one process or when joined already)."""
    from auxseg.distributed import env_dist_info, init_process_group

    return init_process_group(env_dist_info(), "gloo")
