"""The statistics of a study: spread, intervals, paired differences, where the spread comes from.

Pure functions on lists of numbers (no files). Intervals and tests come from
``scipy.stats`` (Student's t), so a reader can check every number with the
library; ``tests/test_study.py`` compares each function with scipy on fixed
inputs. docs/study.md says what each number means and which assumptions it makes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95  # every interval is a 95% two-sided t-interval


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and 95% t-interval of ``n`` values (interval None when n < 2)."""

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "ci95": None if self.low is None else [self.low, self.high]}


def summarise(values: list[float]) -> Summary:
    """The spread of ``values`` treated as independent draws: mean, sd (ddof 1), t-interval of the mean."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("summarise: no values")
    if x.size == 1:
        return Summary(1, float(x[0]), None, None, None)
    low, high = stats.ttest_1samp(x, 0.0).confidence_interval(LEVEL)
    return Summary(int(x.size), float(x.mean()), float(x.std(ddof=1)), float(low), float(high))


@dataclass(frozen=True)
class PairedDifference:
    """``arm - reference`` over paired runs: the mean difference, its 95% interval and the verdict.

    ``unit`` says what one pair is (``"pre-training seed"``: the mean over the
    fine-tune seeds of one pre-training; ``"fine-tune seed"``: one pair of runs).
    """

    n: int
    mean: float
    low: float | None
    high: float | None
    p_value: float | None
    unit: str

    @property
    def distinguishable(self) -> bool:
        """True when the interval excludes 0 (a single pair never is)."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def verdict(self, arm: str, reference: str) -> str:
        """One sentence: the difference with its interval, or "not distinguishable from the reference"."""
        if self.low is None:
            return (f"{arm} - {reference}: {self.mean:+.2f} mIoU from a single pair; no interval, so not "
                    f"distinguishable from the reference.")
        ci = f"{self.mean:+.2f} mIoU, 95% CI [{self.low:+.2f}, {self.high:+.2f}] over {self.n} {self.unit}s"
        if not self.distinguishable:
            return f"{arm} - {reference}: {ci}: not distinguishable from the reference (the interval contains 0)."
        word = "above" if self.mean > 0 else "below"
        return f"{arm} - {reference}: {ci}: {arm} is {word} the reference."

    def as_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "ci95": None if self.low is None else [self.low, self.high],
                "p_value": self.p_value, "unit": self.unit, "distinguishable": self.distinguishable}


def paired_difference(arm: list[float], reference: list[float], unit: str) -> PairedDifference:
    """Paired t-interval of ``mean(arm - reference)`` (``scipy.stats.ttest_rel``); the lists are aligned pairs."""
    a, r = np.asarray(arm, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape or a.size == 0:
        raise ValueError(f"paired_difference: {a.size} and {r.size} values; pairs need equal, non-zero counts")
    d = a - r
    if d.size == 1:
        return PairedDifference(1, float(d[0]), None, None, None, unit)
    if np.all(d == d[0]):  # no spread: scipy's t is undefined; the interval is the point itself
        return PairedDifference(int(d.size), float(d[0]), float(d[0]), float(d[0]), None, unit)
    test = stats.ttest_rel(a, r)
    low, high = test.confidence_interval(LEVEL)
    return PairedDifference(int(d.size), float(d.mean()), float(low), float(high), float(test.pvalue), unit)


def variance_components(grid: list[list[float]]) -> dict | None:
    """How much of a pre-trained arm's spread comes from the pre-training seed and from the fine-tune seed.

    ``grid[p][f]`` is the score of pre-training seed p fine-tuned with seed f
    (every cell filled). Two-way random effects without replication, method of
    moments: ``MS_pre = F * var(row means)``, ``MS_ft = P * var(column means)``,
    ``MS_res`` from the residuals; the variance of each source is
    ``(MS_source - MS_res) / (count of the other factor)``, clipped at 0.
    Returns the three variances and their shares, or None below 2 x 2.
    """
    y = np.asarray(grid, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2 or not np.isfinite(y).all():
        return None
    p, f = y.shape
    grand = y.mean()
    rows, cols = y.mean(axis=1), y.mean(axis=0)
    ms_pre = f * float(((rows - grand) ** 2).sum()) / (p - 1)
    ms_ft = p * float(((cols - grand) ** 2).sum()) / (f - 1)
    resid = y - rows[:, None] - cols[None, :] + grand
    ms_res = float((resid ** 2).sum()) / ((p - 1) * (f - 1))
    var = {"pretrain_seed": max(0.0, (ms_pre - ms_res) / f), "finetune_seed": max(0.0, (ms_ft - ms_res) / p),
           "residual": ms_res}
    total = sum(var.values())
    shares = {k: (v / total if total > 0 else math.nan) for k, v in var.items()}
    return {"variance": var, "share": shares, "shape": [p, f]}


def instability(val_history: list[dict], max_iters: int | None, key: str = "mIoU") -> list[str]:
    """Flags for a fine-tune whose validation curve says the number is not settled.

    - ``best early``: the best validation score came in the first half of the
      schedule and the final one is more than 1 mIoU below it;
    - ``oscillates``: over the second half of the validations the score moves
      by more than 3 mIoU (max - min).
    """
    scores = [(h["iter"], h[key]) for h in val_history if h.get(key) is not None]
    if len(scores) < 2:
        return []
    flags = []
    best_iter, best = max(scores, key=lambda s: s[1])
    last = scores[-1][1]
    horizon = max_iters or scores[-1][0]
    if best_iter <= horizon / 2 and best - last > 1.0:
        flags.append(f"best early (iteration {best_iter}: {best:.2f}, final {last:.2f})")
    tail = [s for _, s in scores[len(scores) // 2:]]
    if len(tail) >= 2 and max(tail) - min(tail) > 3.0:
        flags.append(f"oscillates ({min(tail):.2f}..{max(tail):.2f} over the last {len(tail)} validations)")
    return flags


def loss_not_falling(losses: list[float]) -> str | None:
    """A flag when a pre-training's loss did not fall: the mean of its last tenth is not below its first tenth."""
    if len(losses) < 4:
        return None
    k = max(1, len(losses) // 10)
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    return f"loss not falling ({first:.3f} -> {last:.3f})" if last >= first else None
