"""The run loop: settle the folder under the lock, verify what is there, share the rest, generate.

Every process reads the input and reaches the same plan. Only the main process takes the lock,
cleans, checks and writes the settings, shows progress and writes the manifest; what it decides is
sent to the others, and what each process finds in its share of the folder is sent to all, so every
process refuses or goes on together.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

import torch

from crossgate.config import DEFAULT_GATE_STEP
from crossgate.tools.batch.errors import BatchError, listed
from crossgate.tools.batch.prompts import Batch, PromptItem, plan_batches
from crossgate.tools.batch.store import IMAGES, Inspection, OutputDir

T = TypeVar("T")


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that changes the images of a run (recorded in ``run.json`` and in every record).

    ``device`` is the device type and ``threads`` the torch CPU thread count on CPU (None elsewhere):
    both change floating-point rounding, so a resume with other values would mix images.
    """

    model: str
    steps: int = 25
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    tgate: bool = True
    gate_step: int | float = DEFAULT_GATE_STEP
    dtype: str = "float32"
    batch_size: int = 4
    exact: bool = False  # one pipeline call per prompt: images independent of the batch size
    device: str = "cpu"
    threads: int | None = None

    def as_config(self) -> dict[str, Any]:
        config = asdict(self)
        if not self.tgate:
            config["gate_step"] = None
        return config


def generate_batch(pipe: Any, batch: Batch, settings: GenerationSettings) -> list[Any]:
    """One pipeline call for a batch, one CPU generator per prompt (device-independent noise).

    With ``settings.exact`` each prompt gets its own call: batched matrix products round
    differently from unbatched ones, so only batch-1 calls make an image independent of the batch
    size (at the cost of batching's throughput).
    """
    if settings.exact and len(batch.items) > 1:
        return [
            image
            for index in range(len(batch.items))
            for image in generate_batch(pipe, replace(batch, items=batch.items[index : index + 1]), settings)
        ]
    kwargs: dict[str, Any] = dict(
        prompt=[item.prompt for item in batch.items],
        num_inference_steps=settings.steps,
        generator=[torch.Generator("cpu").manual_seed(item.seed) for item in batch.items],
        output_type="pil",
    )
    if batch.items[0].negative_prompt is not None:
        kwargs["negative_prompt"] = [item.negative_prompt for item in batch.items]
    for key, value in (
        ("guidance_scale", settings.guidance),
        ("height", settings.height),
        ("width", settings.width),
    ):
        if value is not None:
            kwargs[key] = value
    return list(pipe(**kwargs).images)


@dataclass
class RunSummary:
    total: int
    already_done: int
    generated: int
    seconds: float
    num_processes: int
    manifest_records: int = 0
    foreign_records: int = 0
    broken: int = 0  # results found broken at the start and generated again

    @property
    def images_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0


@contextlib.contextmanager
def _progress(enabled: bool, total: int, initial: int) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, disable=not enabled, unit="img", desc="crossgate batch")
    try:
        yield bar
    finally:
        bar.close()


def _from_main(state: Any, value: T) -> T:
    """The main process's ``value`` on every process (a barrier too)."""
    if state.num_processes == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _from_all(state: Any, value: T) -> list[T]:
    """Every process's ``value``, in process order, on every process (a barrier too)."""
    if state.num_processes == 1:
        return [value]
    import torch.distributed as dist

    parts: list[Any] = [None] * state.num_processes
    dist.all_gather_object(parts, value)
    return parts


def _settle(out: OutputDir, config: dict[str, Any], log: Callable[[str], None]) -> str | None:
    """Main process: lock, clean, check and write the settings. Returns a refusal, or None."""
    try:
        out.lock()
        removed = out.clean_temporaries()
        if removed:
            log(f"removed {removed} temporary file(s) left by an interrupted run")
        note = out.settle_run_config(config)
        if note:
            log(note)
    except BatchError as error:
        return str(error)
    return None


def run_batch(
    items: Sequence[PromptItem],
    out: OutputDir,
    settings: GenerationSettings,
    state: Any,
    load_pipe: Callable[[], Any],
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Generate every prompt of ``items`` not yet done (and intact) in ``out``, sharing batches among
    processes.

    ``state`` is an ``accelerate.PartialState`` (a single plain process works too).
    """
    main = state.is_main_process
    out.check_writable(tag=f"-{state.process_index}")
    config = settings.as_config()
    try:
        # The settings are checked and written under the lock: checked before it, a run waiting for
        # the lock would accept a folder that the run holding it fills with other settings.
        refusal = _from_main(state, _settle(out, config, log) if main else None)
        if refusal is not None:
            raise BatchError(refusal)
        share = list(items)[state.process_index :: state.num_processes]  # verification is shared too
        found = Inspection.merged(_from_all(state, out.inspect(share, config)))
        found.refuse_if_needed(out.root)
        if main and found.broken:
            log(
                f"{len(found.broken)} result(s) failed verification and will be generated again:"
                + listed([text for _, text in found.broken])
            )
        done = found.done
        batches = [
            b for b in plan_batches(items, settings.batch_size) if any(i.id not in done for i in b.items)
        ]
        todo = sum(1 for b in batches for i in b.items if i.id not in done)
        if main:
            log(
                f"{len(items)} prompts: {len(items) - todo} already done, {todo} to generate "
                f"in {len(batches)} batch(es) on {state.num_processes} process(es)"
            )
        ids = {item.id for item in items}
        start = time.perf_counter()
        if batches:
            with state.split_between_processes(batches) as mine:
                pipe = (
                    _prepare_pipe(load_pipe, settings) if mine else None
                )  # idle extra processes load nothing
                state.wait_for_everyone()
                start = time.perf_counter()  # throughput counts generation only, not model loading
                with _progress(main, len(items), len(items) - todo) as bar:
                    for batch in mine:
                        _run_one(pipe, batch, settings, out, state, done)
                        if main:
                            bar.n = out.count_records(ids)
                            bar.refresh()
                    _wait_for_all(state, bar if main else None, out, ids)
                    bar.n = out.count_records(ids)
                    bar.refresh()
        seconds = time.perf_counter() - start
        summary = RunSummary(
            len(items), len(items) - todo, todo, seconds, state.num_processes, broken=len(found.broken)
        )
        if main:
            summary.manifest_records, summary.foreign_records, left_out = out.rebuild_manifest(items, config)
            if left_out:
                log(
                    f"{len(left_out)} result(s) of earlier inputs are broken and left out of the manifest "
                    "(their prompts are not in this input, so they cannot be generated again):"
                    + listed(left_out)
                )
        return summary
    finally:
        if main:
            out.unlock()


def _prepare_pipe(load_pipe: Callable[[], Any], settings: GenerationSettings) -> Any:
    import crossgate

    pipe = load_pipe()
    pipe.set_progress_bar_config(disable=True)
    if settings.tgate:
        crossgate.apply(pipe, gate_step=settings.gate_step)
    return pipe


def _run_one(
    pipe: Any, batch: Batch, settings: GenerationSettings, out: OutputDir, state: Any, done: set[str]
) -> None:
    import crossgate

    tick = time.perf_counter()
    images = generate_batch(pipe, batch, settings)
    seconds = time.perf_counter() - tick
    stats = crossgate.last_call(pipe)
    config = settings.as_config()
    config["resolved_gate"] = stats.gate if stats is not None else None
    for item, image in zip(batch.items, images):
        if item.id in done:
            continue  # finished before an interruption; the batch was recomputed only for its neighbours
        fields = {
            "id": item.id,
            "prompt": item.prompt,
            "negative_prompt": item.negative_prompt,
            "seed": item.seed,
            "line": item.line,
            "file": f"{IMAGES}/{item.id}.png",
            "config": config,
            "batch": {"index": batch.index, "size": len(batch.items)},
            "timings": {"batch_s": round(seconds, 6), "per_image_s": round(seconds / len(batch.items), 6)},
            "process": {"index": state.process_index, "count": state.num_processes},
            "device": str(getattr(pipe, "device", "")),
        }
        out.save(item, image, fields)


def _wait_for_all(state: Any, bar: Any, out: OutputDir, ids: set[str]) -> None:
    """The main process keeps its progress bar moving (counting records) while the others finish."""
    if state.num_processes == 1:
        return
    import torch.distributed as dist

    if bar is None or not dist.is_available() or not dist.is_initialized():
        state.wait_for_everyone()
        return
    work = dist.barrier(async_op=True)
    while not work.is_completed():
        bar.n = out.count_records(ids)
        bar.refresh()
        time.sleep(0.2)
    work.wait()
