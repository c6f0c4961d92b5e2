"""Running a benchmark: every configuration on one pipeline, rotating rounds, MACs counted live.

Every configuration runs on the same pipeline object in one process, after a warm-up, in an order
that rotates each round (so drift in machine load hits all configurations alike); the reported time
is the median over rounds, with its spread. Each configuration's first (warm-up) run also counts the
linear/conv MACs its denoiser really executed, so every row gets a MACs-predicted speed-up and an
efficiency = measured speed-up / predicted speed-up. A peer that is not installed or fails on this
pipeline stays in the table with the reason. On CUDA every row also records its peak GPU memory
(``torch.cuda.max_memory_allocated`` over its runs, the statistics reset before each run).
"""

from __future__ import annotations

import os
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from crossgate.adapters import denoiser_of
from crossgate.tools.accounting import LinearConvCounter
from crossgate.tools.bench.peers import Variant

# Two rows whose counted MACs differ by less than this share do the same work: their times compare.
SAME_WORK = 0.005

# Below this many timed rounds, or without an untimed warm-up run, a median is not worth quoting:
# first-call allocations and a single noisy round can move it by more than the effect measured.
MIN_ROUNDS = 3


@dataclass
class Result:
    name: str
    times: list[float] = field(default_factory=list)
    macs: int | None = None
    error: str | None = None
    warmup: int = 0  # untimed runs before the timed rounds
    peak_bytes: int | None = None  # CUDA only: the most memory any of its runs allocated
    first_s: float | None = None  # the first (warm-up) run: a compiled row's compile time is in it
    versus: str | None = None  # the row its speed-up is taken against (None: the first row, plain)

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    @property
    def caveat(self) -> str:
        """Why this row's timing is only indicative ("" when measured enough to quote)."""
        if not self.times:
            return ""
        reasons = []
        if len(self.times) < MIN_ROUNDS:
            reasons.append(f"{len(self.times)} round{'s' if len(self.times) > 1 else ''}")
        if self.warmup == 0:
            reasons.append("no warm-up")
        return ", ".join(reasons)


@dataclass(frozen=True)
class Timing:
    """One configuration against its baseline, as a person should read it: the medians, the speed-up
    of the medians, the min-max of the per-round speed-ups, and whether the number is only
    indicative (fewer than :data:`MIN_ROUNDS` rounds, or no warm-up). What ``crossgate generate
    --compare`` and the app print; :meth:`describe` never gives a bare single-run ratio."""

    base_times: tuple[float, ...]
    times: tuple[float, ...]
    warmed: bool = True

    @property
    def rounds(self) -> int:
        return min(len(self.base_times), len(self.times))

    @property
    def base_median(self) -> float:
        return statistics.median(self.base_times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def speedup(self) -> float:
        return self.base_median / self.median if self.median > 0 else float("inf")

    @property
    def speedup_range(self) -> tuple[float, float]:
        ratios = [b / t for b, t in zip(self.base_times, self.times) if t > 0] or [self.speedup]
        return min(ratios), max(ratios)

    @property
    def indicative(self) -> bool:
        return self.rounds < MIN_ROUNDS or not self.warmed

    @property
    def how(self) -> str:
        """How the numbers were made, e.g. ``median of 3 rounds after a warm-up``."""
        if self.rounds == 1:
            return "indicative (1 run" + (", no warm-up)" if not self.warmed else ")")
        how = f"median of {self.rounds} alternating rounds" + (" after a warm-up" if self.warmed else "")
        return f"indicative ({how})" if self.indicative else how

    @property
    def short_how(self) -> str:
        """:attr:`how` for an image label: ``median of 3``, ``indicative (1 run)``."""
        if self.rounds == 1:
            return "indicative (1 run)"
        return ("indicative, " if self.indicative else "") + f"median of {self.rounds}"

    def short(self) -> str:
        """For an image label: ``1.54x, median of 3 (1.50-1.58x)``, ``1.54x, indicative (1 run)``."""
        low, high = self.speedup_range
        spread = f" ({low:.2f}-{high:.2f}x)" if self.rounds > 1 else ""
        return f"{self.speedup:.2f}x, {self.short_how}{spread}"

    def describe(self) -> str:
        """``1.54x (median of 3 alternating rounds after a warm-up; per round 1.50-1.58x)``."""
        if self.rounds == 1:
            return f"{self.speedup:.2f}x, {self.how}"
        low, high = self.speedup_range
        return f"{self.speedup:.2f}x ({self.how}; per round {low:.2f}-{high:.2f}x)"


def machine_load() -> float | None:
    """The 1-minute load average (``os.getloadavg``), None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def overlap(a: Result, b: Result) -> bool:
    """Whether the two rows' timed min-max ranges overlap: the run did not resolve their difference."""
    return bool(a.times and b.times) and min(a.times) <= max(b.times) and min(b.times) <= max(a.times)


@dataclass
class BenchReport:
    model: str
    setting: str
    results: list[Result]
    # The 1-minute load average when the model's runs started and ended (None: not recorded).
    load: tuple[float | None, float | None] | None = None

    def baseline(self) -> Result:
        return self.results[0]

    def timing(self, name: str) -> Timing:
        """Row ``name`` against the row it is compared with (:class:`Timing`)."""
        by_name = {r.name: r for r in self.results}
        result = by_name[name]
        base = by_name.get(result.versus or "", self.baseline())
        return Timing(tuple(base.times), tuple(result.times), warmed=result.warmup > 0 and base.warmup > 0)

    def unresolved(self, result: Result) -> list[str]:
        """The rows ``result`` is compared with whose min-max overlaps its own: its baseline, and
        the rows doing the same work (counted MACs within :data:`SAME_WORK`) against the same baseline.
        A difference between overlapping rows is smaller than the spread of the run: not measured."""
        by_name = {r.name: r for r in self.results}
        base = by_name.get(result.versus or "", self.baseline())
        names = [base.name] if result is not base and overlap(result, base) else []
        for other in self.results:
            if other is result or other is base or other.versus != result.versus:
                continue
            same_work = bool(result.macs and other.macs) and abs(result.macs - other.macs) <= SAME_WORK * max(
                result.macs, other.macs
            )
            if same_work and overlap(result, other):
                names.append(other.name)
        return names

    def rows(self) -> list[dict[str, Any]]:
        """One dict per configuration: times and their spread, speed-ups, MACs, efficiency (None
        where unknown) and ``caveat`` (why the timing is only indicative, "" when it is not)."""
        by_name = {r.name: r for r in self.results}
        rows = []
        for r in self.results:
            base = by_name.get(r.versus or "", self.baseline())
            speedup = base.median / r.median if base.median and r.median else None
            # Rounds rotate, so round i of a row and of its baseline ran close together in time: the
            # speed-up's spread is the min-max of the per-round ratios.
            per_round = [b / t for b, t in zip(base.times, r.times) if t > 0] if r is not base else []
            predicted = base.macs / r.macs if base.macs and r.macs else None
            rows.append(
                {
                    "model": self.model,
                    "config": r.name,
                    "median_s": r.median,
                    "min_s": min(r.times) if r.times else None,
                    "max_s": max(r.times) if r.times else None,
                    "runs": len(r.times),
                    "warmup": r.warmup,
                    "first_s": r.first_s,
                    "speedup": speedup,
                    "speedup_min": min(per_round) if per_round else None,
                    "speedup_max": max(per_round) if per_round else None,
                    "unresolved": ", ".join(self.unresolved(r)),
                    "gmacs": r.macs / 1e9 if r.macs else None,
                    "predicted_speedup": predicted,
                    "efficiency": speedup / predicted if speedup and predicted else None,
                    "caveat": r.caveat,
                    "peak_mib": r.peak_bytes / 2**20 if r.peak_bytes is not None else None,
                    "note": r.error or "",
                    "versus": base.name,
                }
            )
        return rows


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> int | None:
    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else None


def _failure(error: Exception) -> str:
    return f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"


def run_bench(
    pipe: Any,
    variants: Sequence[Variant],
    call_kwargs: dict[str, Any],
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    model: str = "",
    setting: str = "",
    time_budget: float | None = None,
    count_macs: bool = True,
) -> BenchReport:
    """Warm up and count MACs per configuration, then time ``repeats`` rotating rounds.

    ``warmup=0`` (for slow CPU runs) skips the untimed runs and counts MACs in the first round; such
    rows, and rows with fewer than :data:`MIN_ROUNDS` rounds, carry a caveat in the report.
    ``time_budget`` (seconds from the start): no round is started that would, at the pace of the
    last one (or of the warm-ups), end past it; every warm-up and the first round always run. A
    report cut short says so in its setting. ``count_macs=False``: no counting hooks at all (for a
    caller that counts MACs its own way; rows then have no MACs).
    """
    begun = time.perf_counter()
    load_start = machine_load()
    results = {v.name: Result(v.name, error=v.unavailable, warmup=warmup, versus=v.versus) for v in variants}
    denoiser = denoiser_of(pipe)

    def once(variant: Variant, count: bool = False) -> float:
        count = count and count_macs
        kwargs = dict(call_kwargs, generator=torch.Generator("cpu").manual_seed(seed))
        variant.enable()
        try:
            counter = LinearConvCounter(denoiser)
            _sync(device)
            _reset_peak(device)
            start = time.perf_counter()
            if count and variant.macs_from is None:
                counter.__enter__()
            try:
                (variant.call or (lambda kw: pipe(**kw)))(kwargs)
            finally:
                counter.__exit__(None, None, None)
            _sync(device)
            elapsed = time.perf_counter() - start
        finally:
            variant.disable()
        result = results[variant.name]
        if count and variant.macs_from is None:
            result.macs = counter.total
        elif count and variant.macs_from in results:  # the same work as its eager twin
            result.macs = results[variant.macs_from].macs
        peak = _peak(device)
        if peak is not None:
            result.peak_bytes = max(peak, result.peak_bytes or 0)
        return elapsed

    live = [v for v in variants if v.unavailable is None]
    pace = 0.0  # seconds one round takes: the warm-ups' first runs, then the last round
    for variant in live:
        try:
            for i in range(warmup):
                seconds = once(variant, count=i == 0)
                if i == 0:
                    pace += seconds
                    results[variant.name].first_s = seconds
                log(f"  warm-up {variant.name}: {seconds:.2f} s")
        except Exception as error:  # a peer that breaks on this pipeline/diffusers stays in the table
            results[variant.name].error = _failure(error)
            log(f"  {variant.name} failed:\n{traceback.format_exc(limit=3)}")
    live = [v for v in live if results[v.name].error is None]
    rounds = 0
    for round_ in range(repeats):
        if round_ and time_budget is not None and time.perf_counter() - begun + pace > time_budget:
            log(f"  time budget {time_budget:.0f} s reached: {round_} of {repeats} rounds timed")
            break
        round_start = time.perf_counter()
        rounds += 1
        shift = round_ % max(1, len(live))
        for variant in live[shift:] + live[:shift]:
            if results[variant.name].error is not None:
                continue
            try:
                # Without warm-up the first round also counts MACs (the hooks cost microseconds).
                seconds = once(variant, count=warmup == 0 and round_ == 0)
            except Exception as error:
                results[variant.name].error = _failure(error)
                log(f"  {variant.name} failed:\n{traceback.format_exc(limit=3)}")
                continue
            results[variant.name].times.append(seconds)
            log(f"  round {round_ + 1}/{repeats} {variant.name}: {seconds:.2f} s")
        pace = time.perf_counter() - round_start
    if rounds < repeats:
        setting = ", ".join(part for part in (setting, f"time budget: {rounds} of {repeats} rounds") if part)
    return BenchReport(model, setting, [results[v.name] for v in variants], (load_start, machine_load()))
