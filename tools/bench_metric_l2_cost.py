"""Cost of the metric_l2 objective per pre-training step on this machine, next to infonce and the network.

Times, at the CPU pipeline preset's shape (``configs/pipeline/camvid_cpu.yaml``: ResNet-18 with the deep
stem, 8 images x 2 views at 160 px, stride-8 features of 20 x 20), the forward + backward of

- the network alone (the same for every objective),
- each objective on fixed features: ``infonce`` (budget 2,048) and ``metric_l2`` with its defaults
  (and any ``--set`` overrides),

on synthetic auxiliary labels (17 labels in bands, each image showing 5 of them). Median over ``--reps``
of the wall-clock and the CPU time of this process (the CPU time is the steadier number on a shared machine).

Usage::

    python tools/bench_metric_l2_cost.py --reps 5
    python tools/bench_metric_l2_cost.py --set positives=per_image form=code
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from auxseg.config import apply_overrides, from_dict  # noqa: E402
from pretrain.config import ModelConfig  # noqa: E402
from pretrain.model import PretrainNet  # noqa: E402
from pretrain.objectives import OBJECTIVES, StepBatch  # noqa: E402


def labels(batch: int, size: int, k: int = 17, per_image: int = 5, seed: int = 0) -> torch.Tensor:
    """``[b, 2, S, S]`` label maps: vertical bands of ``per_image`` of the ``k`` labels per image."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(batch, 2, size, size, dtype=torch.long)
    for i in range(batch):
        chosen = torch.randperm(k, generator=g)[:per_image]
        band = chosen[torch.arange(size) * per_image // size]  # [S]
        out[i] = band.view(1, 1, size).expand(2, size, size)
    return out


def timed(fn, reps: int) -> str:
    """Median wall-clock and CPU seconds of ``fn()`` over ``reps`` calls after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return f"{statistics.median(wall):.2f} s wall, {statistics.median(cpu):.2f} s CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="loss.metric_l2 overrides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = PretrainNet(ModelConfig(arch="resnet18", stem="deep"))
    x = torch.randn(args.images * 2, 3, args.size, args.size)
    lab = labels(args.images, args.size)
    folder = SimpleNamespace(num_labels=17, ignore_index=255, scope="global")

    def batch(it: int) -> StepBatch:
        return StepBatch(label=lab, coords=torch.zeros_like(lab), index=torch.arange(args.images),
                         size=torch.tensor([[args.size, args.size]] * args.images), folder=folder, iteration=it,
                         generator=torch.Generator().manual_seed(it))

    def net_step():
        net.zero_grad()
        net(x).square().mean().backward()

    with torch.no_grad():
        feats = net(x)
    print(f"features {tuple(feats.shape)}, torch threads {torch.get_num_threads()}")
    print(f"network forward + backward: {timed(net_step, args.reps)}")
    sections = {
        "infonce (budget 2048)": OBJECTIVES["infonce"].Config(budget=2048),
        "metric_l2 " + (" ".join(args.set) or "(defaults)"): from_dict(OBJECTIVES["metric_l2"].Config,
                                                                       apply_overrides({}, args.set)),
    }
    for name, cfg in sections.items():
        obj = OBJECTIVES["infonce" if name.startswith("infonce") else "metric_l2"](cfg, feats.shape[1])
        f = feats.clone().requires_grad_()
        it = iter(range(10**6))

        def step(obj=obj, f=f, it=it):
            loss, stats = obj(f, batch(next(it)))
            loss.backward()
            return stats

        stats = step()
        extra = f", {stats['pixels']:.0f} pixels per draw" if "pixels" in stats else ""
        print(f"{name}: {timed(step, args.reps)} per step (forward + backward{extra})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
