"""GPU checks that `crossgate bench` does not make, for scripts/gpu_bench.sh: one section per call.

* ``compile``: ``torch.compile`` (inductor by default) of the denoiser with crossgate applied. Eager
  plain, eager crossgate, then the compiled denoiser: the first compiled call (compile time
  included), timed compiled rounds, the dynamo graphs compiled in the first call and any compiled
  later (recompiles), graph breaks, and the compiled output against eager within the stated
  tolerance; then crossgate removed from the compiled denoiser (plain, compiled).
* ``offload``: ``enable_sequential_cpu_offload()`` with crossgate, in both orders (offload first,
  crossgate first), each against crossgate on the GPU without offload (same weights, same seed), and
  the plain pipeline after ``crossgate.remove`` against plain without offload.

Every configuration records its latency and peak GPU memory (``torch.cuda.max_memory_allocated``,
reset before each). Results are written to ``OUT/extras.json`` (merged with what earlier calls
wrote) and ``OUT/extras.md`` after every step, so a run stopped by its time cap keeps what it
measured. ``--time-budget`` skips the steps that would not finish in time, and says so.

    python scripts/gpu_extras.py --section compile --out DIR            # GPU: SD-1.5 @512, fp16
    python scripts/gpu_extras.py --section compile offload --dry-run --device cpu --out DIR
                                                                           # CPU: tiny SD, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout

import crossgate
from crossgate.tools.bench import PROMPT, random_pipeline

SECTIONS = ("compile", "offload")
# Compiled vs eager: relative L2 distance of the final latents (half precision accumulates rounding
# differences over the steps; float32 must agree much more closely).
TOLERANCE = {"float16": 2e-2, "bfloat16": 4e-2, "float32": 1e-4}
# Offload vs no offload: the same kernels on the same weights, so they should agree to the bit; the
# tolerance only allows for kernels that accumulate differently (max abs difference).
OFFLOAD_ATOL = 1e-3


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--section", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--out", required=True, help="folder for extras.json and extras.md")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=sorted(TOLERANCE), default=None, help="default float16 (cpu: float32)")
    p.add_argument(
        "--dry-run", action="store_true", help="tiny model, few steps: checks the code path on CPU"
    )
    p.add_argument("--model", default=None, help="bench model (default sd15; dry run: tiny)")
    p.add_argument("--resolution", type=int, default=None, help="default 512 (dry run 32)")
    p.add_argument("--steps", type=int, default=None, help="compile section steps (default 25; dry run 4)")
    p.add_argument("--gate-step", type=int, default=None, help="crossgate m (default 10; dry run 2)")
    p.add_argument("--offload-steps", type=int, default=None, help="offload section steps (default 6; dry 3)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; dry run 1)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument(
        "--mode",
        default=None,
        help="torch.compile mode (reduce-overhead: CUDA graphs, recorded once per batch shape: 2B before "
        "the gate, B after it)",
    )
    p.add_argument(
        "--compile-split-cfg",
        action="store_true",
        help="compile section: crossgate with compile_split_cfg=True (the passes before the gate as two "
        "B-row passes, one batch shape on both sides of the gate)",
    )
    p.add_argument("--time-budget", type=float, default=None, help="seconds for this call's sections")
    args = p.parse_args(argv)
    dry = args.dry_run
    defaults = {
        "model": "tiny" if dry else "sd15",
        "resolution": 32 if dry else 512,
        "steps": 4 if dry else 25,
        "gate_step": 2 if dry else 10,
        "offload_steps": 3 if dry else 6,
        "repeats": 1 if dry else 5,
        "dtype": "float32" if dry or args.device == "cpu" else "float16",
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


class Recorder:
    """Collects results per section and rewrites ``extras.json`` / ``extras.md`` after every step."""

    def __init__(self, out: Path, budget: float | None) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        path = out / "extras.json"
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        self.start = time.perf_counter()
        self.budget = budget

    def left(self) -> float:
        return math.inf if self.budget is None else self.budget - (time.perf_counter() - self.start)

    def section(self, name: str, **fields: Any) -> dict[str, Any]:
        self.data[name] = {"status": "running", **fields}
        self.save()
        return self.data[name]

    def save(self) -> None:
        (self.out / "extras.json").write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        (self.out / "extras.md").write_text(render(self.data))


def log(message: str) -> None:
    print(f"[gpu_extras] {message}", flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(fn: Callable[[], Any], device: str) -> tuple[float, int | None, Any]:
    """(seconds, peak GPU bytes or None, result) of one call, synchronised around it."""
    cuda = device.startswith("cuda")
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    sync(device)
    seconds = time.perf_counter() - start
    return seconds, (torch.cuda.max_memory_allocated() if cuda else None), result


def mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def summary(times: list[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "rounds": len(times),
        "times_s": [round(t, 4) for t in times],
    }


def compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    a, b = a.float().cpu(), b.float().cpu()
    diff = (a - b).abs()
    return {
        "max_abs_diff": float(diff.max()),
        "rel_l2": float((a - b).norm() / b.norm().clamp_min(1e-12)),
        "bit_equal": bool(torch.equal(a, b)),
        "finite": bool(torch.isfinite(a).all()),
    }


def generate(pipe: Any, args: argparse.Namespace, steps: int) -> torch.Tensor:
    kwargs = dict(
        prompt=PROMPT,
        num_inference_steps=steps,
        guidance_scale=7.5,
        output_type="latent",
        height=args.resolution,
        width=args.resolution,
    )
    return pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(0)).images


def timed_rounds(
    rec: Recorder,
    entry: dict[str, Any],
    key: str,
    fn: Callable[[], Any],
    args: argparse.Namespace,
    after_each: Callable[[], None] | None = None,
) -> Any:
    """One untimed warm-up, then ``args.repeats`` timed calls (fewer if the budget runs out);
    ``after_each`` runs after every call, the warm-up included."""
    seconds, peak, result = measure(fn, args.device)
    if after_each:
        after_each()
    times: list[float] = []
    for _ in range(args.repeats):
        if times and rec.left() < 2 * seconds:
            entry.setdefault("notes", []).append(f"{key}: time budget, {len(times)} of {args.repeats} rounds")
            break
        seconds, round_peak, result = measure(fn, args.device)
        if after_each:
            after_each()
        peak = max(peak or 0, round_peak or 0) if peak is not None else None
        times.append(seconds)
    entry[key] = {**summary(times), "peak_mib": mib(peak)}
    rec.save()
    log(f"{key}: median {entry[key]['median_s']:.3f} s over {len(times)} rounds, peak {mib(peak)} MiB")
    return result


RECOMPILE_LIMIT = 64  # dynamo's default (8) falls back to eager once shapes per frame exceed it


def raise_recompile_limit() -> dict[str, int]:
    """Let every frame compile all its shapes (a UNet's levels give crossgate's hooks several)."""
    import torch._dynamo

    set_to: dict[str, int] = {}
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        try:
            current = getattr(torch._dynamo.config, name)
            setattr(torch._dynamo.config, name, max(int(current), RECOMPILE_LIMIT))
            set_to[name] = getattr(torch._dynamo.config, name)
        except (AttributeError, TypeError, ValueError):
            continue
    return set_to


def dynamo_counts() -> dict[str, Any]:
    """Graphs compiled, frames compiled (each recompile of a frame counts), graph breaks and why."""
    from torch._dynamo.utils import counters

    reasons = sorted({reason.splitlines()[0][:100] for reason in counters["graph_break"]})
    return {
        "unique_graphs": int(counters["stats"]["unique_graphs"]),
        "frames_compiled": int(counters["frames"]["ok"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "graph_break_reasons": reasons,
    }


class Progress:
    """While a long compiling call runs, record every few seconds how far dynamo has got, so a run
    stopped by its time cap still says how long compiling took up to then and how many graphs."""

    def __init__(self, rec: Recorder, entry: dict[str, Any], key: str, every: float = 5.0) -> None:
        self.rec, self.entry, self.key, self.every = rec, entry, key, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:  # dynamo's counters change under us: a failed read is retried at the next tick
                elapsed = round(time.perf_counter() - self._start, 1)
                self.entry[self.key] = {"elapsed_s": elapsed, **dynamo_counts()}
                self.rec.save()
            except RuntimeError:
                continue

    def __enter__(self) -> Progress:
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.entry.pop(self.key, None)


def section_compile(rec: Recorder, args: argparse.Namespace) -> None:
    import torch._dynamo

    entry = rec.section(
        "compile",
        model=args.model,
        resolution=args.resolution,
        steps=args.steps,
        gate=args.gate_step,
        dtype=args.dtype,
        backend=args.backend,
        mode=args.mode or "default",
        compile_split_cfg=args.compile_split_cfg,
        tolerance=f"relative L2 of the final latents <= {TOLERANCE[args.dtype]:g} ({args.dtype})",
    )
    pipe = random_pipeline(args.model, args.device, getattr(torch, args.dtype))
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    steps = args.steps

    timed_rounds(rec, entry, "eager_plain", lambda: generate(pipe, args, steps), args)
    crossgate.apply(pipe, gate_step=args.gate_step, compile_split_cfg=args.compile_split_cfg)
    eager = timed_rounds(rec, entry, "eager_crossgate", lambda: generate(pipe, args, steps), args)

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    entry["dynamo_limits"] = raise_recompile_limit()
    denoiser.compile(backend=args.backend, mode=args.mode, dynamic=False, fullgraph=True)
    with Progress(rec, entry, "first_compiled_call_progress"):  # if the cap stops it mid-compile
        seconds, peak, compiled = measure(lambda: generate(pipe, args, steps), args.device)
    first = dynamo_counts()
    entry["first_compiled_call"] = {"seconds": round(seconds, 3), "peak_mib": mib(peak), **first}
    entry["output_vs_eager"] = {**compare(compiled, eager), "limit_rel_l2": TOLERANCE[args.dtype]}
    entry["output_vs_eager"]["matches"] = entry["output_vs_eager"]["rel_l2"] <= TOLERANCE[args.dtype]
    stats = crossgate.last_call(pipe)
    entry["crossgate_engaged"] = {"gate": stats.gate, "denoiser_batches": stats.denoiser_batches}
    rec.save()
    log(f"first compiled call {seconds:.1f} s, {first}; vs eager {entry['output_vs_eager']}")

    # frames dynamo compiled by the end of each compiled call: flat from some call on = no recompiles
    per_call = entry["frames_compiled_after_each_call"] = [first["frames_compiled"]]
    track = lambda: per_call.append(dynamo_counts()["frames_compiled"])  # noqa: E731
    timed_rounds(rec, entry, "compiled_crossgate", lambda: generate(pipe, args, steps), args, track)
    after = dynamo_counts()
    entry["recompiles_after_first_call"] = after["frames_compiled"] - first["frames_compiled"]
    entry["recompiles_after_second_call"] = after["frames_compiled"] - per_call[min(1, len(per_call) - 1)]
    rec.save()

    # crossgate removed from the compiled denoiser: plain, compiled (its hooks are gone: new guards)
    crossgate.remove(pipe)
    if rec.left() < 3 * seconds:
        entry.setdefault("notes", []).append("compiled plain skipped: time budget")
    else:
        seconds, peak, _ = measure(lambda: generate(pipe, args, steps), args.device)
        counts = dynamo_counts()
        entry["first_compiled_plain_call"] = {"seconds": round(seconds, 3), "peak_mib": mib(peak), **counts}
        timed_rounds(rec, entry, "compiled_plain", lambda: generate(pipe, args, steps), args)
        entry["graphs_total"] = dynamo_counts()["unique_graphs"]

    def ratio(a: str, b: str) -> float | None:
        if a in entry and b in entry:
            return round(entry[a]["median_s"] / entry[b]["median_s"], 3)
        return None

    entry["speedups"] = {
        "eager crossgate vs eager plain": ratio("eager_plain", "eager_crossgate"),
        "compiled crossgate vs eager crossgate": ratio("eager_crossgate", "compiled_crossgate"),
        "compiled crossgate vs compiled plain": ratio("compiled_plain", "compiled_crossgate"),
        "compiled crossgate vs eager plain": ratio("eager_plain", "compiled_crossgate"),
    }
    entry["status"] = "done"
    rec.save()


def section_offload(rec: Recorder, args: argparse.Namespace) -> None:
    steps, gate = args.offload_steps, max(1, round(0.4 * args.offload_steps))
    entry = rec.section(
        "offload",
        model=args.model,
        resolution=args.resolution,
        steps=steps,
        gate=gate,
        dtype=args.dtype,
        tolerance=f"max abs difference <= {OFFLOAD_ATOL:g} against the same pipeline without offload",
    )
    dtype = getattr(torch, args.dtype)
    template = random_pipeline(args.model, "cpu", dtype)  # one set of weights for every order
    run = lambda p: generate(p, args, steps)  # noqa: E731

    reference = copy.deepcopy(template).to(args.device)
    seconds, peak, plain = measure(lambda p=reference: run(p), args.device)
    entry["plain_on_device"] = {"seconds": round(seconds, 3), "peak_mib": mib(peak)}
    crossgate.apply(reference, gate_step=gate)
    seconds, peak, gated = measure(lambda p=reference: run(p), args.device)
    entry["crossgate_on_device"] = {"seconds": round(seconds, 3), "peak_mib": mib(peak)}
    del reference
    rec.save()

    def offload(pipe: Any) -> None:
        pipe.enable_sequential_cpu_offload(device=args.device)

    def apply(pipe: Any) -> None:
        crossgate.apply(pipe, gate_step=gate)

    # an order costs two offloaded generations; before the first is timed, guess 10x on-device
    need = 2 * 10 * max(entry["crossgate_on_device"]["seconds"], 0.5)
    for order, first, second in (
        ("offload-then-crossgate", offload, apply),
        ("crossgate-then-offload", apply, offload),
    ):
        result: dict[str, Any] = {}
        entry[order] = result
        if rec.left() < need:
            result["status"] = f"skipped: time budget ({rec.left():.0f} s left, about {need:.0f} s needed)"
            rec.save()
            continue
        began = time.perf_counter()
        pipe = copy.deepcopy(template)
        try:
            first(pipe)
            second(pipe)
            seconds, peak, out = measure(lambda p=pipe: run(p), args.device)
            stats = crossgate.last_call(pipe)
            result.update(seconds=round(seconds, 3), peak_mib=mib(peak), **compare(out, gated))
            result["denoiser_batches"] = stats.denoiser_batches if stats else None
            result["matches"] = result["max_abs_diff"] <= OFFLOAD_ATOL
            crossgate.remove(pipe)
            seconds, peak, out = measure(lambda p=pipe: run(p), args.device)
            result["plain_after_remove"] = {
                "seconds": round(seconds, 3),
                "peak_mib": mib(peak),
                **compare(out, plain),
            }
            result["plain_after_remove"]["matches"] = (
                result["plain_after_remove"]["max_abs_diff"] <= OFFLOAD_ATOL
            )
            result["status"] = "ran"
        except Exception as error:  # record and go on: the other order still runs
            result["status"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
            result["traceback"] = traceback.format_exc(limit=4)
            result["plain_offload_alone"] = offload_alone(template, args, steps)
        need = 1.2 * (time.perf_counter() - began)
        log(
            f"{order}: {result.get('status')} { ({k: result.get(k) for k in ('seconds', 'max_abs_diff', 'matches')}) }"
        )
        del pipe
        rec.save()
    entry["status"] = "done"
    rec.save()


def offload_alone(template: Any, args: argparse.Namespace, steps: int) -> str:
    """A control when an order fails: does sequential offload run here without crossgate at all?"""
    pipe = copy.deepcopy(template)
    try:
        pipe.enable_sequential_cpu_offload(device=args.device)
        generate(pipe, args, steps)
    except Exception as error:
        return f"fails too: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    return "runs"


def render(data: dict[str, Any]) -> str:
    """A short markdown summary of what has been measured so far."""
    lines = ["# gpu_extras", ""]
    c = data.get("compile")
    if c:
        lines += [
            f"## torch.compile ({c.get('backend')}) with crossgate: {c.get('model')} @{c.get('resolution')}, "
            f"{c.get('steps')} steps, m={c.get('gate')}, {c.get('dtype')} [{c.get('status')}]",
            "",
            "| configuration | median s | min-max s | rounds | peak MiB |",
            "|---|---|---|---|---|",
        ]
        for key in ("eager_plain", "eager_crossgate", "compiled_crossgate", "compiled_plain"):
            r = c.get(key)
            if r:
                lines.append(
                    f"| {key.replace('_', ' ')} | {r['median_s']:.3f} | {r['min_s']:.3f}-{r['max_s']:.3f} "
                    f"| {r['rounds']} | {r['peak_mib']} |"
                )
        first = c.get("first_compiled_call")
        if first:
            lines += [
                "",
                f"First compiled call: {first['seconds']} s, {first['unique_graphs']} graphs from "
                f"{first['frames_compiled']} frame compilations, {first['graph_breaks']} graph breaks "
                f"({'; '.join(first['graph_break_reasons']) or 'none'}); frames compiled by the end of each "
                f"compiled call: {c.get('frames_compiled_after_each_call')} (recompiles after the first call: "
                f"{c.get('recompiles_after_first_call')}, after the second: {c.get('recompiles_after_second_call')}).",
            ]
        vs = c.get("output_vs_eager")
        if vs:
            lines.append(
                f"Compiled vs eager (crossgate): rel L2 {vs['rel_l2']:.3g}, max abs {vs['max_abs_diff']:.3g} "
                f"(limit rel L2 {vs['limit_rel_l2']:g}): {'matches' if vs['matches'] else 'DOES NOT MATCH'}."
            )
        if c.get("speedups"):
            lines.append("Speed-ups: " + ", ".join(f"{k} {v}x" for k, v in c["speedups"].items() if v))
        for note in c.get("notes", []):
            lines.append(f"Note: {note}")
        lines.append("")
    o = data.get("offload")
    if o:
        lines += [
            f"## enable_sequential_cpu_offload with crossgate: {o.get('model')} @{o.get('resolution')}, "
            f"{o.get('steps')} steps, m={o.get('gate')}, {o.get('dtype')} [{o.get('status')}]",
            "",
            "| order | status | seconds | peak MiB | max abs diff vs on-device | matches | plain after remove |",
            "|---|---|---|---|---|---|---|",
        ]
        for key in ("plain_on_device", "crossgate_on_device"):
            r = o.get(key)
            if r:
                lines.append(
                    f"| {key.replace('_', ' ')} | reference | {r['seconds']} | {r['peak_mib']} | - | - | - |"
                )
        for order in ("offload-then-crossgate", "crossgate-then-offload"):
            r = o.get(order)
            if r:
                after = r.get("plain_after_remove") or {}
                lines.append(
                    f"| {order} | {r.get('status')} | {r.get('seconds', '-')} | {r.get('peak_mib', '-')} "
                    f"| {r.get('max_abs_diff', '-')} | {r.get('matches', '-')} "
                    f"| {after.get('matches', '-')} |"
                )
                if "plain_offload_alone" in r:
                    lines.append(
                        f"|  | control, offload without crossgate: {r['plain_offload_alone']} |  |  |  |  |  |"
                    )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        log("--device cuda but torch sees no CUDA device; use --device cpu for a dry run")
        return 2
    rec = Recorder(Path(args.out), args.time_budget)
    rec.data.setdefault("environment", {}).update(
        torch=torch.__version__,
        device=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        dry_run=args.dry_run,
    )
    status = 0
    for name in args.section:
        log(f"section {name} ({rec.left():.0f} s left)")
        try:
            {"compile": section_compile, "offload": section_offload}[name](rec, args)
        except Exception as error:  # keep what was measured, record why the rest is missing
            rec.data.setdefault(name, {})["status"] = f"failed: {type(error).__name__}: {error}"[:300]
            rec.data[name]["traceback"] = traceback.format_exc(limit=6)
            rec.save()
            log(f"section {name} failed:\n{traceback.format_exc(limit=6)}")
            status = 1
    print(render(rec.data), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
