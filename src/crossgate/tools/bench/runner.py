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


@dataclass
class BenchReport:
    model: str
    setting: str
    results: list[Result]

    def baseline(self) -> Result:
        return self.results[0]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per configuration: times and their spread, speed-ups, MACs, efficiency (None
        where unknown) and ``caveat`` (why the timing is only indicative, "" when it is not)."""
        by_name = {r.name: r for r in self.results}
        rows = []
        for r in self.results:
            base = by_name.get(r.versus or "", self.baseline())
            speedup = base.median / r.median if base.median and r.median else None
            predicted = base.macs / r.macs if base.macs and r.macs else None
            rows.append(
                {
                    "model": self.model,
                    "config": r.name,
                    "versus": base.name,
                    "median_s": r.median,
                    "min_s": min(r.times) if r.times else None,
                    "max_s": max(r.times) if r.times else None,
                    "runs": len(r.times),
                    "warmup": r.warmup,
                    "first_s": r.first_s,
                    "speedup": speedup,
                    "gmacs": r.macs / 1e9 if r.macs else None,
                    "predicted_speedup": predicted,
                    "efficiency": speedup / predicted if speedup and predicted else None,
                    "caveat": r.caveat,
                    "peak_mib": r.peak_bytes / 2**20 if r.peak_bytes is not None else None,
                    "note": r.error or "",
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
) -> BenchReport:
    """Warm up and count MACs per configuration, then time ``repeats`` rotating rounds.

    ``warmup=0`` (for slow CPU runs) skips the untimed runs and counts MACs in the first round; such
    rows, and rows with fewer than :data:`MIN_ROUNDS` rounds, carry a caveat in the report.
    ``time_budget`` (seconds from the start): no round is started that would, at the pace of the
    last one (or of the warm-ups), end past it; every warm-up and the first round always run. A
    report cut short says so in its setting.
    """
    begun = time.perf_counter()
    results = {v.name: Result(v.name, error=v.unavailable, warmup=warmup, versus=v.versus) for v in variants}
    denoiser = denoiser_of(pipe)

    def once(variant: Variant, count: bool = False) -> float:
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
    return BenchReport(model, setting, [results[v.name] for v in variants])
