"""Benchmark of the supervised pixel InfoNCE: the lean formulation against the former dense one.

``pretrain.losses.supervised_infonce`` (per-id feature sums for the positives, a hand-written
logsumexp backward: at most two ``[N, N]`` fp32 buffers, forward or backward) against ``pretrain.losses._infonce_dense_reference`` (the
previous code: about five ``[N, N]`` intermediates). For each embedding dim D and number of sampled
pixels N, with L2-normalised float32 embeddings ``[N, D]`` and ids like a balanced batch
(``--labels`` ids, N // labels pixels each, shuffled), temperature 0.1:

1. time: one subprocess runs forward + backward of both formulations alternately (``--reps``
   rounds after one warm-up round), so both see the same load; min and median are reported;
2. peak memory: one fresh subprocess per formulation runs a small warm-up step, resets the
   kernel's resident-set high-water mark (``echo 5 > /proc/self/clear_refs``), reads VmRSS as the
   baseline, runs forward, reads VmHWM (forward peak), runs backward, reads VmHWM again (forward +
   backward peak). The figures are those high-water marks minus the baseline. PyTorch's CPU
   allocator does not cache and glibc's mmap threshold is pinned at 128 KiB
   (``MALLOC_MMAP_THRESHOLD_``), so every large tensor is its own mapping and is returned when
   freed: the mark counts the tensors live at the worst moment.

Usage:
  python tools/bench_infonce.py --n 1024 2048 4096 8192 --dim 128 256 --reps 5 --out bench/results/infonce.md
Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pretrain.losses import PixelTargets, _infonce_dense_reference, supervised_infonce  # noqa: E402

IMPLS = {"new": supervised_infonce, "old": _infonce_dense_reference}
MIB = 1 << 20


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _inputs(n: int, dim: int, labels: int, seed: int = 0) -> tuple[torch.Tensor, PixelTargets]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1).requires_grad_(True)
    ids = (torch.arange(n) % labels)[torch.randperm(n, generator=g)]  # balanced: N // labels (+1) each
    return feats, PixelTargets(ids)


def _step(fn, feats: torch.Tensor, targets: PixelTargets) -> None:
    feats.grad = None
    loss, _ = fn(feats, targets, temperature=0.1)
    loss.backward()


def memory_worker(impl: str, n: int, dim: int, labels: int) -> dict:
    """Peak resident memory of one forward + backward of one formulation, in this (fresh) process."""
    fn = IMPLS[impl]
    _step(fn, *_inputs(256, dim, labels))  # warm-up: thread pool, kernels, lazy init
    feats, targets = _inputs(n, dim, labels)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current VmRSS
    base = _proc_status_kib("VmRSS")
    loss, _ = fn(feats, targets, temperature=0.1)
    fwd = _proc_status_kib("VmHWM")
    loss.backward()
    total = _proc_status_kib("VmHWM")
    return {"fwd_mib": (fwd - base) / 1024, "peak_mib": (total - base) / 1024}


def time_worker(n: int, dim: int, labels: int, reps: int) -> dict:
    """Forward + backward times (s) of both formulations, alternated so that both see the same load."""
    feats, targets = _inputs(n, dim, labels)
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for rep in range(reps + 1):  # the first round is a warm-up
        for impl, fn in IMPLS.items():
            t0 = time.perf_counter()
            _step(fn, feats, targets)
            if rep:
                times[impl].append(time.perf_counter() - t0)
    return times


def _subprocess(*args: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(threads), *args]
    # a fixed mmap threshold: every large buffer is its own mapping, returned to the kernel when freed,
    # so the high-water mark counts live tensors rather than what glibc's heap kept from earlier ones
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_case(n: int, dim: int, labels: int, reps: int, threads: int) -> list[dict]:
    common = ["--n", str(n), "--dim", str(dim), "--labels", str(labels)]
    times = _subprocess("--worker", "time", *common, "--reps", str(reps), threads=threads)
    rows = []
    for impl in IMPLS:
        mem = _subprocess("--worker", impl, *common, threads=threads)
        ms = [1000 * t for t in times[impl]]
        rows.append({"impl": impl, "n": n, "dim": dim, **mem, "ms": statistics.median(ms), "ms_min": min(ms),
                     "times_ms": [round(t, 1) for t in ms]})
    return rows


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{platform.machine()}, {os.cpu_count()} cores ({model}), torch {torch.__version__}"


def table(rows: list[dict]) -> str:
    lines = ["| D | N | old ms (min / median) | new ms (min / median) | time old/new (min / median) "
             "| fwd MiB old / new | peak MiB old / new | peak old/new | peak B/pair old / new |",
             "|---|---|---|---|---|---|---|---|---|"]
    by = {(r["impl"], r["dim"], r["n"]): r for r in rows}
    for dim, n in sorted({(r["dim"], r["n"]) for r in rows}):
        o, w = by[("old", dim, n)], by[("new", dim, n)]
        lines.append(
            f"| {dim} | {n} | {o['ms_min']:.1f} / {o['ms']:.1f} | {w['ms_min']:.1f} / {w['ms']:.1f} "
            f"| **{o['ms_min'] / w['ms_min']:.2f}** / {o['ms'] / w['ms']:.2f} "
            f"| {o['fwd_mib']:.1f} / {w['fwd_mib']:.1f} | {o['peak_mib']:.1f} / {w['peak_mib']:.1f} "
            f"| **{o['peak_mib'] / w['peak_mib']:.2f}** "
            f"| {o['peak_mib'] * MIB / n ** 2:.1f} / {w['peak_mib'] * MIB / n ** 2:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[1024, 2048, 4096, 8192], help="sampled pixels")
    p.add_argument("--dim", type=int, nargs="+", default=[128], help="embedding dims")
    p.add_argument("--labels", type=int, default=17, help="distinct ids, balanced")
    p.add_argument("--reps", type=int, default=5, help="timed forward + backward steps per case")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    p.add_argument("--out", type=Path, help="write the results markdown here")
    p.add_argument("--worker", choices=[*IMPLS, "time"], help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker == "time":
        print(json.dumps(time_worker(args.n[0], args.dim[0], args.labels, args.reps)))
        return
    if args.worker:
        print(json.dumps(memory_worker(args.worker, args.n[0], args.dim[0], args.labels)))
        return

    load_before = os.getloadavg()
    rows = []
    for dim in args.dim:
        for n in args.n:
            for r in run_case(n, dim, args.labels, args.reps, args.threads):
                rows.append(r)
                print(f"D={dim} N={n} {r['impl']}: median {r['ms']:.1f} ms, min {r['ms_min']:.1f} ms, "
                      f"fwd {r['fwd_mib']:.1f} MiB, peak {r['peak_mib']:.1f} MiB, reps {r['times_ms']}", flush=True)
    load_after = os.getloadavg()
    tab = table(rows)
    print(tab)
    if args.out is None:
        return
    cmd = "python tools/bench_infonce.py " + " ".join(sys.argv[1:])
    reps = "\n".join(f"- D={r['dim']} N={r['n']} {r['impl']}: {r['times_ms']}" for r in rows)
    text = f"""# Supervised pixel InfoNCE: lean vs dense formulation (CPU)

Machine: {machine()}, {args.threads} intra-op threads; no GPU.
Load average (1, 5, 15 min) at the start: {", ".join(f"{x:.2f}" for x in load_before)}; at the end:
{", ".join(f"{x:.2f}" for x in load_after)}. Other jobs may have shared the CPU during the run, so the
times carry their noise; the memory figures do not depend on load.
Command: `{cmd}`

Inputs: N L2-normalised float32 embeddings of dim D (requiring grad), {args.labels} ids balanced over
the N pixels (N // {args.labels} or one more each, as `sample_balanced` gives a real batch),
temperature 0.1.
"old" is the former dense code (`pretrain.losses._infonce_dense_reference`), "new" is
`pretrain.losses.supervised_infonce`; both give the same loss, stats and gradients
(`tests/pretrain/test_pre_losses.py`, 1e-9 in float64).

Method (details in the script's docstring). Time: per (D, N) one subprocess alternates forward +
backward of old and new, {args.reps} rounds after a warm-up round, so both see the same load; the
minimum over rounds is the least disturbed estimate and its ratio is the headline figure, the
median is beside it. Memory: per (D, N, formulation) a fresh subprocess, after a small warm-up
step, resets the kernel's resident-set high-water mark (`echo 5 > /proc/self/clear_refs`) and
reads the resident set as baseline; "fwd" is the high-water mark after the forward, "peak" after
forward + backward, both minus the baseline. PyTorch's CPU allocator does not cache and glibc's
mmap threshold is pinned (`MALLOC_MMAP_THRESHOLD_=131072`), so each large tensor is its own
mapping, returned when freed, and the mark counts the tensors live at the worst moment. The inputs
exist before the baseline and are not counted; their gradient and everything else is. "B/pair" is
the peak in bytes per pixel pair (N^2): the new code's pairwise work is two fp32 buffers (8 B/pair)
at most (the logits plus logsumexp's temporary in the forward, the saved logits plus the softmax
in the backward); the old one peaks at about 21 B/pair.

{tab}

Per-repetition times (ms):

{reps}
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
