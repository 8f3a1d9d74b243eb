"""Mixed precision on any device: does the hardware compute bf16 natively, and the autocast context for it.

Every stage keeps fp32 by default; bf16 is opt-in per stage (``pretrain``:
``train.amp=bf16``; ``finetune``: ``amp=true``; ``auxlabels``:
``extractor.amp`` on CUDA, ``extractor.amp_cpu`` on the CPU). On a CPU, bf16
pays only where the instruction set has it: AVX512-BF16 (``avx512_bf16`` in
``/proc/cpuinfo``; Cooper Lake, Zen 4 and later) or AMX (``amx_bf16``;
Sapphire Rapids and later). Elsewhere torch emulates it, usually slower than
fp32, and :func:`autocast` says so once. ``auxseg env`` reports what this
machine has (:func:`precision_report`).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["none", "bf16", "fp16"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of the first processor in ``cpuinfo`` (empty where the file is missing)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """Which of :data:`BF16_CPU_FLAGS` the CPU has, e.g. ``["avx512_bf16"]``."""
    flags = cpu_flags(cpuinfo)
    return [f for f in BF16_CPU_FLAGS if f in flags]


@functools.cache
def cpu_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), as torch's own probe or cpuinfo says."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)  # private probes of torch's CPU dispatch; absent in older torch
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:
            pass
    return bool(cpu_bf16_flags())


def native_bf16(device: str | torch.device) -> bool:
    """True when ``device`` (``cpu``, ``cuda[:i]``) computes bf16 natively."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        return cpu_native_bf16()
    return False


def autocast(device: str | torch.device, precision: Precision = "none") -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device``: ``torch.autocast(device.type, dtype)``, or a
    context that does nothing for ``"none"``.

    bf16 on a CPU without native bf16 runs (torch emulates it) but is usually
    slower than fp32: a warning says so once per process.
    """
    dev = torch.device(device)
    if precision == "none":
        return contextlib.nullcontext()
    if precision not in DTYPES:
        raise ValueError(f"precision: {precision!r} is not 'none', 'bf16' or 'fp16'")
    if dev.type == "cpu" and precision == "bf16" and not cpu_native_bf16():
        _warn_emulated()
    return torch.autocast(dev.type, dtype=DTYPES[precision])


@functools.cache
def _warn_emulated() -> None:
    warnings.warn("bf16 autocast on a CPU without native bf16 (no avx512_bf16 / amx_bf16): torch emulates it, "
                  "usually slower than fp32", UserWarning, stacklevel=3)


def precision_report() -> dict:
    """What ``auxseg env`` prints about bf16 on this machine's CPU."""
    return {
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_flags": cpu_bf16_flags() or "none",
        "native_bf16": cpu_native_bf16(),
    }
