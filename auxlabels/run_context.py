"""What every phase of one auxlabels run shares: where it writes, which rank it is, what it measured and skipped.

One object instead of five arguments threaded through every phase
(docs/architecture.md). Each rank has its own; rank 0 merges the
ranks' timings and skipped images at the end (:mod:`.manifest`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from auxseg.distributed import DistInfo


@dataclass
class RunContext:
    """The run's output folder, distributed info, progress switch, and what this rank timed and skipped."""

    out: Path  # the run's out_dir (resolved)
    dist: DistInfo  # this process's rank and the world size (one process: rank 0 of 1)
    show: bool  # progress bars on: ``progress`` and rank 0
    t_start: float = field(default_factory=time.perf_counter)  # time.perf_counter() at the start of the run
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase on this rank, updated in place
    skipped: dict[str, str] = field(default_factory=dict)  # image path relative to the root -> one-line reason

    def add_time(self, key: str, seconds: float) -> None:
        """Add ``seconds`` to the timing ``key`` (created at 0)."""
        self.timings[key] = self.timings.get(key, 0.0) + seconds
