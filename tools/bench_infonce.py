"""Benchmark of the supervised pixel InfoNCE formulations: time and peak memory of forward + backward.

Formulations (``--impls``; every one gives the same loss):

- ``dense``: ``pretrain.losses._infonce_dense_reference``, the former code (about five ``[N, N]``
  intermediates);
- ``lean``: ``pretrain.losses.supervised_infonce`` (per-id feature sums for the positives, a
  hand-written logsumexp backward: at most two ``[N, N]`` fp32 buffers, forward or backward);
- ``blockwise``: ``pretrain.losses.blockwise_supervised_infonce`` with the objective's auto block size
  (``infonce_block_rows``: one ``[rows, N]`` fp32 block of at most 64 MiB; ``--block`` fixes it):
  logits recomputed per block in the backward, memory O(N (D + block));
- ``supcon``: pytorch-metric-learning's ``SupConLoss`` (the same loss, checked; it normalises the
  embeddings itself), installed by this script with ``pip install --no-deps --target --pml-dir``
  (not a project dependency); skipped with a message when it cannot be installed.

For each embedding dim D and number of pixels N, with L2-normalised float32 embeddings ``[N, D]``
and ids like a balanced batch (``--labels`` ids, N // labels pixels each, shuffled), temperature 0.1:

1. time: one subprocess runs forward + backward of the formulations alternately (``--reps`` rounds
   after a warm-up round), so all see the same load; min and median are reported. Above
   ``--time-max-n`` pixels no such subprocess runs (minutes per step): the time is the one step
   of the memory run below;
2. peak memory: one fresh subprocess per formulation runs a small warm-up step, resets the
   kernel's resident-set high-water mark (``echo 5 > /proc/self/clear_refs``), reads VmRSS as the
   baseline, runs forward, reads VmHWM (forward peak), runs backward, reads VmHWM again (forward +
   backward peak). The figures are those high-water marks minus the baseline. PyTorch's CPU
   allocator does not cache and glibc's mmap threshold is pinned at 128 KiB
   (``MALLOC_MMAP_THRESHOLD_``), so every large tensor is its own mapping and is returned when
   freed: the mark counts the tensors live at the worst moment.

A point is not run when its predicted peak exceeds ``--mem-limit-gib`` (default 8) or half the
memory available at that moment: the prediction scales the formulation's peak at the previous N
by (N / N_prev)^2, the growth of the N x N forms (it overestimates the blockwise one); the
first point of each formulation is N <= 1024 and always runs. The table says which points were
left out and why.

Usage:
  python tools/bench_infonce.py --impls blockwise lean supcon --n 1024 2048 4096 8192 16384 32768 65536 \\
      --dim 128 256 --reps 5 --out bench/results/infonce.md
  python tools/bench_infonce.py --impls dense lean --n 1024 2048 4096 8192 --dim 128 256 --reps 7 --out ...
``--out`` rewrites the file's section of that comparison (dense vs lean: the top of the file;
blockwise: the section under ``SECTION_MARK``) and keeps the other one; ``--rows`` saves the measured
rows, which ``--render ROWS --out FILE`` writes again without measuring. Linux only (reads /proc).
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

from pretrain.losses import (  # noqa: E402
    PixelTargets,
    _infonce_dense_reference,
    blockwise_supervised_infonce,
    infonce_block_rows,
    supervised_infonce,
)

MIB = 1 << 20
GIB = 1 << 30
PML_VERSION = "2.9.0"
SECTION_MARK = "<!-- section written by tools/bench_infonce.py with --impls blockwise ...; the part above by --impls dense lean -->"


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _impl(name: str, block: int, pml_dir: str):
    """The loss function ``fn(feats, targets, temperature) -> (loss, stats)`` of one formulation."""
    if name == "dense":
        return _infonce_dense_reference
    if name == "lean":
        return supervised_infonce
    if name == "blockwise":
        def blockwise(feats, targets, temperature):
            rows = min(infonce_block_rows(feats.shape[0], block), feats.shape[0])
            return blockwise_supervised_infonce(feats, targets, temperature, block_size=rows)
        return blockwise
    if name == "supcon":
        sys.path.insert(0, pml_dir)
        from pytorch_metric_learning.losses import SupConLoss

        def supcon(feats, targets, temperature):
            return SupConLoss(temperature=temperature)(feats, targets.ids), {}
        return supcon
    raise ValueError(name)


def ensure_pml(pml_dir: Path) -> str | None:
    """Install pytorch-metric-learning into ``pml_dir`` unless there; None when it works, else the reason."""
    probe = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
             "from pytorch_metric_learning.losses import SupConLoss", str(pml_dir)]
    if subprocess.run(probe, capture_output=True).returncode == 0:
        return None
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(pml_dir),
           f"pytorch-metric-learning=={PML_VERSION}"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "pip install timed out"
    if res.returncode != 0 or subprocess.run(probe, capture_output=True).returncode != 0:
        return "pip install failed: " + (res.stderr.strip().splitlines() or ["no message"])[-1]
    return None


def _inputs(n: int, dim: int, labels: int, seed: int = 0) -> tuple[torch.Tensor, PixelTargets]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1).requires_grad_(True)
    ids = (torch.arange(n) % labels)[torch.randperm(n, generator=g)]  # balanced: N // labels (+1) each
    return feats, PixelTargets(ids)


def _step(fn, feats: torch.Tensor, targets: PixelTargets) -> None:
    feats.grad = None
    loss, _ = fn(feats, targets, temperature=0.1)
    loss.backward()


def memory_worker(fn, n: int, dim: int, labels: int) -> dict:
    """Peak resident memory (and the time) of one forward + backward, in this (fresh) process."""
    _step(fn, *_inputs(256, dim, labels))  # warm-up: thread pool, kernels, lazy init
    feats, targets = _inputs(n, dim, labels)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current VmRSS
    base = _proc_status_kib("VmRSS")
    t0 = time.perf_counter()
    loss, _ = fn(feats, targets, temperature=0.1)
    fwd = _proc_status_kib("VmHWM")
    loss.backward()
    seconds = time.perf_counter() - t0
    total = _proc_status_kib("VmHWM")
    return {"fwd_mib": (fwd - base) / 1024, "peak_mib": (total - base) / 1024, "step_ms": 1000 * seconds}


def time_worker(fns: dict, n: int, dim: int, labels: int, reps: int) -> dict:
    """Forward + backward times (s) of the formulations, alternated so that all see the same load."""
    feats, targets = _inputs(n, dim, labels)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(reps + 1):  # the first round is a warm-up
        for name, fn in fns.items():
            t0 = time.perf_counter()
            _step(fn, feats, targets)
            if rep:
                times[name].append(time.perf_counter() - t0)
    return times


def _subprocess(args: argparse.Namespace, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--labels", str(args.labels),
           "--block", str(args.block), "--pml-dir", str(args.pml_dir), *extra]
    # a fixed mmap threshold: every large buffer is its own mapping, returned to the kernel when freed,
    # so the high-water mark counts live tensors rather than what glibc's heap kept from earlier ones
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_point(args: argparse.Namespace, impls: list[str], n: int, dim: int, last: dict) -> list[dict]:
    """Every formulation at one (D, N): memory (fresh process each), then time (one process, alternated)."""
    rows, ok = [], []
    limit = min(args.mem_limit_gib * GIB, _available_bytes() / 2)
    for impl in impls:
        prev = last.get((impl, dim))
        predicted = None if prev is None else prev[1] * MIB * (n / prev[0]) ** 2
        if predicted is not None and predicted > limit:
            rows.append({"impl": impl, "n": n, "dim": dim, "skipped": f"predicted peak {predicted / GIB:.1f} GiB "
                         f"> limit {limit / GIB:.1f} GiB"})
            continue
        mem = _subprocess(args, "--worker", "memory", "--impls", impl, "--n", str(n), "--dim", str(dim))
        last[(impl, dim)] = (n, mem["peak_mib"])
        rows.append({"impl": impl, "n": n, "dim": dim, **mem})
        ok.append(impl)
    if ok and n <= args.time_max_n:
        times = _subprocess(args, "--worker", "time", "--impls", *ok, "--n", str(n), "--dim", str(dim),
                            "--reps", str(args.reps))
        for r in rows:
            if r["impl"] in times:
                ms = [1000 * t for t in times[r["impl"]]]
                r.update(ms=statistics.median(ms), ms_min=min(ms), times_ms=[round(t, 1) for t in ms])
    else:
        for r in rows:
            if "step_ms" in r:
                r.update(ms=r["step_ms"], ms_min=r["step_ms"], times_ms=[round(r["step_ms"], 1)])
    return rows


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return f"{platform.machine()}, {os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM, torch {torch.__version__}"


# ----------------------------------------------------------------------------- results: dense vs lean


def table_dense(rows: list[dict]) -> str:
    lines = ["| D | N | old ms (min / median) | new ms (min / median) | time old/new (min / median) "
             "| fwd MiB old / new | peak MiB old / new | peak old/new | peak B/pair old / new |",
             "|---|---|---|---|---|---|---|---|---|"]
    by = {(r["impl"], r["dim"], r["n"]): r for r in rows}
    for dim, n in sorted({(r["dim"], r["n"]) for r in rows}):
        o, w = by[("dense", dim, n)], by[("lean", dim, n)]
        lines.append(
            f"| {dim} | {n} | {o['ms_min']:.1f} / {o['ms']:.1f} | {w['ms_min']:.1f} / {w['ms']:.1f} "
            f"| **{o['ms_min'] / w['ms_min']:.2f}** / {o['ms'] / w['ms']:.2f} "
            f"| {o['fwd_mib']:.1f} / {w['fwd_mib']:.1f} | {o['peak_mib']:.1f} / {w['peak_mib']:.1f} "
            f"| **{o['peak_mib'] / w['peak_mib']:.2f}** "
            f"| {o['peak_mib'] * MIB / n ** 2:.1f} / {w['peak_mib'] * MIB / n ** 2:.1f} |")
    return "\n".join(lines)


def text_dense(args, rows, load_before, load_after, cmd) -> str:
    reps = "\n".join(f"- D={r['dim']} N={r['n']} {'new' if r['impl'] == 'lean' else 'old'}: {r['times_ms']}"
                     for r in rows)
    return f"""# Supervised pixel InfoNCE: lean vs dense formulation (CPU)

Machine: {machine()}, {args.threads} intra-op threads; no GPU.
Load average (1, 5, 15 min) at the start: {", ".join(f"{x:.2f}" for x in load_before)}; at the end:
{", ".join(f"{x:.2f}" for x in load_after)}. Other jobs during the run: {args.others}; if any, the
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

{table_dense(rows)}

Per-repetition times (ms):

{reps}
"""


# ----------------------------------------------------------------------------- results: blockwise section


def table_blockwise(rows: list[dict], impls: list[str]) -> str:
    others = [i for i in impls if i != "blockwise"]
    head = ["D", "N", "block rows"] + [f"{i} ms (min / median)" for i in impls] + \
        [f"time blockwise/{i} (min / median)" for i in others] + [f"peak MiB {i}" for i in impls] + \
        ["blockwise B/pixel"] + [f"{i} B/pair" for i in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(r["impl"], r["dim"], r["n"]): r for r in rows}
    for dim, n in sorted({(r["dim"], r["n"]) for r in rows}):
        cells = [str(dim), str(n)]
        bw = by.get(("blockwise", dim, n), {})
        cells.append(str(min(infonce_block_rows(n), n)) if "blockwise" in impls else "")

        for i in impls:
            r = by.get((i, dim, n), {})
            cells.append(f"{r['ms_min']:.0f} / {r['ms']:.0f}" if "ms" in r else
                         ("n/a" if "skipped" not in r else "left out"))
        for i in others:
            r = by.get((i, dim, n), {})
            cells.append(f"**{bw['ms_min'] / r['ms_min']:.2f}** / {bw['ms'] / r['ms']:.2f}"
                         if "ms" in r and "ms" in bw else "")
        for i in impls:
            r = by.get((i, dim, n), {})
            cells.append(f"{r['peak_mib']:.0f}" if "peak_mib" in r else f"left out: {r.get('skipped', 'n/a')}")
        cells.append(f"{bw['peak_mib'] * MIB / n:.0f}" if "peak_mib" in bw else "")
        for i in others:
            p = by.get((i, dim, n), {}).get("peak_mib")
            cells.append(f"{p * MIB / n ** 2:.1f}" if p else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def text_blockwise(args, rows, load_before, load_after, cmd, pml_note) -> str:
    reps = "\n".join(f"- D={r['dim']} N={r['n']} {r['impl']}: {r['times_ms']}" for r in rows if "times_ms" in r)
    block = "auto (`infonce_block_rows`)" if args.block == 0 else str(args.block)
    return f"""{SECTION_MARK}

## Blockwise vs lean vs pytorch-metric-learning's SupConLoss (CPU)

Machine: {machine()}, {args.threads} intra-op threads; no GPU.
Load average (1, 5, 15 min) at the start: {", ".join(f"{x:.2f}" for x in load_before)}; at the end:
{", ".join(f"{x:.2f}" for x in load_after)}. Other jobs during the run: {args.others}; if any, the times carry their noise; the memory figures do not depend
on load.
Command: `{cmd}`

Inputs as above (N L2-normalised float32 embeddings of dim D, {args.labels} balanced ids,
temperature 0.1). "blockwise" is `pretrain.losses.blockwise_supervised_infonce` with block rows
{block} (the objective's rule: one `[rows, N]` fp32 block of at most 64 MiB; at N <= 4096 that is
one block of all N rows), "lean" is `pretrain.losses.supervised_infonce`, "supcon" is
pytorch-metric-learning {PML_VERSION}'s `SupConLoss(temperature=0.1)` ({pml_note}); all three give the
same loss (blockwise = lean: `tests/pretrain/test_pre_blockwise.py`, 1e-9 in float64, 1e-5 in float32;
SupConLoss: the same value, its gradient differs by the normalisation it applies inside).
Time: up to N = {args.time_max_n}, one subprocess per (D, N) alternates the formulations, {args.reps}
rounds after a warm-up round (min / median); above it, the single step of the memory run. Memory:
a fresh subprocess per point, high-water mark of the resident set over forward + backward minus
the baseline after a small warm-up (method above), inputs not counted, their gradient counted.
A point is left out when its predicted peak (the previous N's peak x (N / N_prev)^2) exceeds
{args.mem_limit_gib} GiB or half the available memory: this machine has 24 GiB shared with other jobs.
"B/pixel" is the blockwise peak per pixel (flat when the memory is linear in N); "B/pair" the others'
peak per pixel pair.

{table_blockwise(rows, args.impls)}

Per-repetition times (ms):

{reps}
"""


def write_results(path: Path, text: str, blockwise: bool) -> None:
    """Rewrite this comparison's part of ``path`` and keep the other part."""
    old = path.read_text() if path.is_file() else ""
    top, mark, section = old.partition(SECTION_MARK)
    if blockwise:
        new = (top.rstrip() + "\n\n" if top.strip() else "") + text
    else:
        new = text + ("\n" + mark + section if mark else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impls", nargs="+", default=["blockwise", "lean", "supcon"],
                   choices=["dense", "lean", "blockwise", "supcon"], help="formulations to compare")
    p.add_argument("--n", type=int, nargs="+", default=[1024, 2048, 4096, 8192], help="pixels")
    p.add_argument("--dim", type=int, nargs="+", default=[128], help="embedding dims")
    p.add_argument("--labels", type=int, default=17, help="distinct ids, balanced")
    p.add_argument("--reps", type=int, default=5, help="timed forward + backward steps per case")
    p.add_argument("--block", type=int, default=0, help="blockwise anchor rows per block; 0 = the objective's auto")
    p.add_argument("--time-max-n", type=int, default=16384, help="above this N the time is one step of the memory run")
    p.add_argument("--mem-limit-gib", type=float, default=8.0, help="leave out points predicted to need more")
    p.add_argument("--pml-dir", type=Path, default=Path("/tmp/auxseg_bench_pml"),
                   help="where pytorch-metric-learning is installed (pip --target) for supcon")
    p.add_argument("--others", default="not stated",
                   help="what else ran on the machine during the measurement, for the results file")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    p.add_argument("--out", type=Path, help="write the results markdown here")
    p.add_argument("--rows", type=Path, help="also write the measured rows (JSON) here")
    p.add_argument("--render", type=Path, help="no measuring: write --out from rows a run saved with --rows")
    p.add_argument("--worker", choices=["memory", "time"], help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        fns = {i: _impl(i, args.block, str(args.pml_dir)) for i in args.impls}
        if args.worker == "time":
            print(json.dumps(time_worker(fns, args.n[0], args.dim[0], args.labels, args.reps)))
        else:
            print(json.dumps(memory_worker(fns[args.impls[0]], args.n[0], args.dim[0], args.labels)))
        return

    if args.render:
        saved = json.loads(args.render.read_text())
        for key in ("impls", "reps", "labels", "block", "time_max_n", "mem_limit_gib", "threads", "pml_dir"):
            setattr(args, key, type(getattr(args, key))(saved["args"][key]) if key == "pml_dir" else saved["args"][key])
        dense = sorted(args.impls) == ["dense", "lean"]
        text = (text_dense(args, saved["rows"], saved["load"][0], saved["load"][1], saved["command"]) if dense else
                text_blockwise(args, saved["rows"], saved["load"][0], saved["load"][1], saved["command"],
                               saved["pml_note"]))
        write_results(args.out, text, blockwise=not dense)
        print(f"wrote {args.out} from {args.render}")
        return
    pml_note = "not requested"
    if "supcon" in args.impls:
        reason = ensure_pml(args.pml_dir)
        pml_note = f"installed with `pip install --no-deps --target {args.pml_dir}`, not a project dependency"
        if reason:
            print(f"supcon skipped: pytorch-metric-learning unavailable ({reason})", flush=True)
            args.impls = [i for i in args.impls if i != "supcon"]
            pml_note = f"left out: {reason}"
    load_before = os.getloadavg()
    rows, last = [], {}
    for dim in args.dim:
        for n in sorted(args.n):
            for r in run_point(args, args.impls, n, dim, last):
                rows.append(r)
                if "skipped" in r:
                    print(f"D={dim} N={n} {r['impl']}: left out, {r['skipped']}", flush=True)
                else:
                    print(f"D={dim} N={n} {r['impl']}: median {r['ms']:.1f} ms, min {r['ms_min']:.1f} ms, "
                          f"fwd {r['fwd_mib']:.1f} MiB, peak {r['peak_mib']:.1f} MiB, reps {r['times_ms']}", flush=True)
    load_after = os.getloadavg()
    cmd = "python tools/bench_infonce.py " + " ".join(sys.argv[1:])
    dense = sorted(args.impls) == ["dense", "lean"]
    text = (text_dense(args, rows, load_before, load_after, cmd) if dense
            else text_blockwise(args, rows, load_before, load_after, cmd, pml_note))
    print(table_dense(rows) if dense else table_blockwise(rows, args.impls))
    if args.rows is not None:
        saved_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.rows.write_text(json.dumps({"args": saved_args, "rows": rows, "load": [load_before, load_after],
                                         "command": cmd, "pml_note": pml_note, "machine": machine()}, indent=1))
    if args.out is not None:
        write_results(args.out, text, blockwise=not dense)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
