"""``auxseg env``: what is installed and which fast paths are available.

Prints versions and whether CUDA, faiss GPU, fast-slic AVX2, native bf16 on the
CPU (for bf16 autocast) and compiled mmcv ops are available, the way mmsegmentation's ``collect_env`` does. Paste its
output into bug reports.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from collections.abc import Callable
from importlib import metadata

PACKAGES = (
    "auxseg", "torch", "torchvision", "timm", "safetensors", "numpy", "faiss-cpu", "faiss-gpu", "fast-slic",
    "scikit-learn", "scikit-image", "scipy", "mmengine", "mmcv", "mmcv-lite", "mmsegmentation",
    "opencv-python", "pillow",
    "transformers",  # dev extra: the independent DINOv2 the tests compare the extractor with
)
"""Distributions whose versions the report lists; one that is not installed is left out."""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _probe(fn: Callable[[], object]) -> object:
    """Run a capability check; a failure becomes a short 'no (reason)' string."""
    try:
        return fn()
    except Exception as err:  # a report must never crash on a broken install
        return f"no ({type(err).__name__}: {err})"


def _cuda() -> dict:
    import torch

    info: dict = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if info["available"]:
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info


def _faiss_gpu() -> object:
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return {"gpus": get()} if get else "no (faiss built without GPU support)"


def _fast_slic_avx2() -> object:
    import fast_slic.avx2  # noqa: F401  (import fails when the CPU or build lacks AVX2)

    return True


def _cpu_has_avx2() -> bool | None:
    try:
        with open("/proc/cpuinfo") as f:
            return " avx2" in f.read()
    except OSError:
        return None


def _cpu_bf16() -> dict:
    from auxseg.precision import precision_report

    return precision_report()


def _mmcv_ops() -> dict:
    from auxseg import mmseg_compat as mmcv_compat

    return {
        "compiled": mmcv_compat.has_compiled_ops(),
        "compat_layer": "not needed" if mmcv_compat.has_compiled_ops() else
        f"active, provides {', '.join(mmcv_compat.PROVIDED_OPS)}",
    }


def _mmseg_import() -> object:
    from auxseg.mmseg_compat import import_mmseg

    import_mmseg()
    importlib.import_module("mmseg.models")
    return True


def machine_line() -> str:
    """One line naming this machine for a benchmark's results file: CPU model, cores, memory, Python."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}"


def collect_env() -> dict:
    """Environment facts as a JSON-serialisable dict."""
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES if _version(name)},
        "torch_threads": torch.get_num_threads(),
        "cuda": _probe(_cuda),
        "faiss_gpu": _probe(_faiss_gpu),
        "cpu_avx2": _cpu_has_avx2(),
        "cpu_bf16": _probe(_cpu_bf16),
        "fast_slic_avx2": _probe(_fast_slic_avx2),
        "mmcv_ops": _probe(_mmcv_ops),
        "import mmseg.models": _probe(_mmseg_import),
    }


def format_env(env: dict) -> str:
    lines = []
    for key, value in env.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines.extend(f"  {k}: {v}" for k, v in value.items())
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    env = collect_env()
    print(json.dumps(env, indent=2, default=str) if args.json else format_env(env))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "env",
        help="print versions and available fast paths (CUDA, faiss GPU, fast-slic AVX2, CPU bf16, mmcv ops)",
        description="Print the environment: package versions and whether CUDA, faiss GPU, "
        "fast-slic AVX2, native bf16 on the CPU and compiled mmcv ops are available. Include it in bug reports.",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=main)
