"""The training-loop core of both probe trainers (the stand-in and the real code).

A micro-batch is the caller's (forward, loss, backward divided by the accumulation); this runs
them, steps the optimizer and the schedule every `accumulation` micro-batches as finetune.py
does, times each optimizer step, profiles the first micro-batch for the SDPA kernel, and records
the allocator's peaks at steps 1, 2, 5, 10, 20, 50, 100, 200, 500, ... so a long run shows whether
they settle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from vlalaunch import sdpa


class Optimizer(Protocol):
    def step(self) -> Any: ...
    def zero_grad(self) -> Any: ...


class Scheduler(Protocol):
    def step(self) -> Any: ...


class Progress(Protocol):
    def update(self) -> Any: ...
    def close(self) -> Any: ...


class TextStats:
    """Lengths of the text part of the micro-batches (padded length) and how many were padded."""

    def __init__(self) -> None:
        self.last: Optional[int] = None
        self.min: Optional[int] = None
        self.max: Optional[int] = None
        self.padded = 0

    def add(self, tokens: int, padded: bool) -> None:
        self.last = tokens
        self.min = tokens if self.min is None else min(self.min, tokens)
        self.max = tokens if self.max is None else max(self.max, tokens)
        self.padded += int(padded)


def is_milestone(step: int) -> bool:
    """1, 2, 5, 10, 20, 50, 100, ... (the steps whose peaks are recorded)."""
    while step >= 10 and step % 10 == 0:
        step //= 10
    return step in (1, 2, 5)


@dataclass
class LoopResult:
    step_times: list[float] = field(default_factory=list)
    last_loss: Optional[float] = None
    micro_batches: int = 0
    sdpa_counts: Optional[dict[str, int]] = None
    peak_alloc_by_step: list[int] = field(default_factory=list)
    peak_reserved_by_step: list[int] = field(default_factory=list)

    @property
    def s_per_step(self) -> Optional[float]:
        """Mean seconds per optimizer step, the first two (warm-up) left out when there are more."""
        timed = self.step_times[2:] if len(self.step_times) > 2 else self.step_times
        return sum(timed) / len(timed) if timed else None


def run(
    micro_batch: Callable[[], Any],
    optimizer: Optimizer,
    scheduler: Scheduler,
    *,
    accumulation: int,
    max_steps: int,
    sync: Callable[[], None],
    progress: Progress,
    memory: Optional[Callable[[], tuple[int, int]]] = None,
    profile_sdpa: bool = True,
) -> LoopResult:
    """Run `max_steps` optimizer steps. `micro_batch()` returns the loss (a float or a 0-d tensor,
    read once per step); `memory()` returns (peak allocated, peak reserved) bytes so far."""
    out = LoopResult()
    optimizer.zero_grad()
    sync()
    t0 = time.perf_counter()
    loss: Any = None
    while len(out.step_times) < max_steps:
        if profile_sdpa and out.micro_batches == 0:
            with sdpa.Profiled() as prof:
                loss = micro_batch()
            out.sdpa_counts = prof.counts
        else:
            loss = micro_batch()
        out.micro_batches += 1
        if out.micro_batches % accumulation:
            continue
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        progress.update()
        sync()
        t = time.perf_counter()
        out.step_times.append(t - t0)
        t0 = t
        out.last_loss = float(loss)
        if memory is not None and is_milestone(len(out.step_times)):
            alloc, reserved = memory()
            out.peak_alloc_by_step.append(alloc)
            out.peak_reserved_by_step.append(reserved)
    progress.close()
    return out
