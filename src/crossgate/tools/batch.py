"""Batch generation of many prompts across ``accelerate`` processes, resumable and deterministic.

Why it is built this way:

* **Determinism.** Every prompt gets its own ``torch.Generator`` (CPU, seeded with the prompt's
  seed), so its initial noise never depends on its neighbours. Batched matrix products are not
  bit-identical to unbatched ones (a GEMM with M=1 takes another kernel than M=2), so the input is
  cut into *fixed batches by position in the file*; a batch is the unit of work handed to a process
  and is always recomputed whole. The images then depend on the input file, the settings and the
  batch size only: never on the number of processes, which process ran what, or on resumes.
* **Crash safety.** Each image is written to a hidden temporary name and ``os.replace``-d into place,
  then its sidecar record (``records/<id>.json``) likewise. A prompt is done exactly when its record
  exists, so a ``kill -9`` at any moment leaves either nothing visible or a complete image, and a
  restart redoes only the missing work.
* **No duplicate manifest entries.** ``manifest.jsonl`` is rebuilt from the records (one per id) by
  the main process at the end of each run and replaced atomically; it is never appended to.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

MANIFEST = "manifest.jsonl"
RUN_CONFIG = "run.json"
IMAGES = "images"
RECORDS = "records"
LOCK = ".lock"
TMP_MARK = ".tmp-"
JSONL_KEYS = ("prompt", "negative_prompt", "seed", "id")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_SEED = 2**64 - 1
MAX_LISTED = 10


class BatchError(ValueError):
    """A user error in a batch run (input file, output folder, settings); the message says what to do."""


@dataclass(frozen=True)
class PromptItem:
    """One prompt of the input file. ``line`` is its 1-based line number (for messages and order)."""

    id: str
    prompt: str
    seed: int
    negative_prompt: str | None = None
    line: int = 0

    def key(self) -> dict[str, Any]:
        """What must match for an earlier result with this id to count as done."""
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt, "seed": self.seed}


@dataclass(frozen=True)
class Batch:
    """A fixed group of consecutive prompts, generated together in one pipeline call."""

    index: int
    items: tuple[PromptItem, ...]


def default_seed(item_id: str, base_seed: int) -> int:
    """A prompt without a seed gets one derived from its id, so moving lines never changes it."""
    digest = hashlib.sha256(f"{base_seed}/{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _listed(problems: Sequence[str]) -> str:
    shown = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"\n  {shown}{more}"


def detect_format(path: Path, lines: Sequence[str]) -> str:
    """``jsonl`` for a ``.jsonl`` file or one whose first non-blank line starts with ``{``."""
    if path.suffix.lower() == ".jsonl":
        return "jsonl"
    first = next((line.strip() for line in lines if line.strip()), "")
    return "jsonl" if first.startswith("{") else "text"


def parse_prompts(path: str | Path, fmt: str = "auto", base_seed: int = 0) -> list[PromptItem]:
    """Read a prompts file: plain text (one prompt per line) or JSONL (``prompt``, ``negative_prompt``,
    ``seed``, ``id``).

    Every problem is collected and reported together with line numbers before anything runs: a run
    over thousands of prompts should not stop (or silently skip) halfway for a typo.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BatchError(f"prompts file {str(path)!r} not found.") from None
    except IsADirectoryError:
        raise BatchError(f"prompts file {str(path)!r} is a directory; pass a text or JSONL file.") from None
    except UnicodeDecodeError as error:
        raise BatchError(
            f"prompts file {str(path)!r} is not UTF-8 text ({error}); re-save it as UTF-8."
        ) from None
    except OSError as error:
        raise BatchError(f"cannot read prompts file {str(path)!r}: {error}") from None
    lines = text.splitlines()
    if fmt == "auto":
        fmt = detect_format(path, lines)
    if fmt not in ("text", "jsonl"):
        raise BatchError(f"unknown prompts format {fmt!r}; use auto, text or jsonl.")
    items: list[PromptItem] = []
    problems: list[str] = []
    width = max(6, len(str(len(lines))))
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        default_id = f"{number:0{width}d}"
        if fmt == "text":
            prompt = raw.strip()
            items.append(PromptItem(default_id, prompt, default_seed(default_id, base_seed), None, number))
            continue
        item, problem = _parse_jsonl_line(raw, number, default_id, base_seed)
        if problem:
            problems.append(f"line {number}: {problem}")
        elif item is not None:
            items.append(item)
    problems.extend(_duplicate_problems(items))
    problems.sort(key=lambda text: int(text.split(":", 1)[0].removeprefix("line ")))
    if problems:
        raise BatchError(
            f"{str(path)!r} has {len(problems)} problem(s); nothing was generated. Fix them and run again:"
            + _listed(problems)
        )
    if not items:
        raise BatchError(
            f"prompts file {str(path)!r} contains no prompts; write one prompt per line, or JSONL lines "
            'such as {"prompt": "a red circle", "seed": 1, "id": "p1"}.'
        )
    return items


def _parse_jsonl_line(
    raw: str, number: int, default_id: str, base_seed: int
) -> tuple[PromptItem | None, str | None]:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as error:
        return None, f"not valid JSON ({error.msg} at column {error.colno})"
    if not isinstance(obj, dict):
        return None, f'expected a JSON object like {{"prompt": "..."}}, got {type(obj).__name__}'
    unknown = sorted(set(obj) - set(JSONL_KEYS))
    if unknown:
        return None, f"unknown key(s) {unknown}; allowed: {list(JSONL_KEYS)}"
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return None, '"prompt" is missing or not a non-empty string'
    negative = obj.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        return None, '"negative_prompt" must be a string or null'
    item_id = obj.get("id", default_id)
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str) or not ID_PATTERN.fullmatch(item_id):
        return None, (
            f'"id" {item_id!r} is not usable as a file name; use 1-128 characters from A-Z a-z 0-9 . _ - '
            "starting with a letter or digit"
        )
    seed = obj.get("seed")
    if seed is None:
        seed = default_seed(item_id, base_seed)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        return None, f'"seed" {seed!r} must be an integer in [0, 2**64 - 1]'
    return PromptItem(item_id, prompt, seed, negative, number), None


def _duplicate_problems(items: Sequence[PromptItem]) -> list[str]:
    """Ids name files, so two prompts with one id (or ids equal but for case) would overwrite each other."""
    first: dict[str, PromptItem] = {}
    problems = []
    for item in items:
        earlier = first.setdefault(item.id.casefold(), item)
        if earlier is not item:
            how = (
                f"same id as line {earlier.line}"
                if earlier.id == item.id
                else f"differs only in case from {earlier.id!r} on line {earlier.line}, which collides on "
                "case-insensitive file systems"
            )
            problems.append(f"line {item.line}: duplicate id {item.id!r} ({how}); ids must be unique")
    return problems


def plan_batches(items: Sequence[PromptItem], batch_size: int) -> list[Batch]:
    """Cut the input, in file order, into batches of at most ``batch_size``.

    A batch never mixes prompts with and without a negative prompt: a pipeline treats a missing
    negative prompt differently from ``""`` (SDXL uses zeros), and a list cannot hold both.
    """
    if batch_size < 1:
        raise BatchError(f"batch size must be >= 1, got {batch_size}.")
    batches: list[Batch] = []
    current: list[PromptItem] = []
    for item in items:
        if current and (
            len(current) == batch_size
            or (current[0].negative_prompt is None) != (item.negative_prompt is None)
        ):
            batches.append(Batch(len(batches), tuple(current)))
            current = []
        current.append(item)
    if current:
        batches.append(Batch(len(batches), tuple(current)))
    return batches


def _write_atomic(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` under a hidden temporary name in the same folder, then rename it into place."""
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@dataclass
class OutputDir:
    """The output folder: ``images/<id>.png``, ``records/<id>.json``, ``run.json``, ``manifest.jsonl``."""

    root: Path
    _lock_handle: Any = field(default=None, repr=False)

    @property
    def images(self) -> Path:
        return self.root / IMAGES

    @property
    def records(self) -> Path:
        return self.root / RECORDS

    def image_path(self, item_id: str) -> Path:
        return self.images / f"{item_id}.png"

    def record_path(self, item_id: str) -> Path:
        return self.records / f"{item_id}.json"

    def check_writable(self, tag: str = "") -> None:
        """Create the folders and write a probe file: fail before loading any model if we cannot."""
        probe = self.root / f".probe{TMP_MARK}{os.getpid()}{tag}"
        try:
            if self.root.exists() and not self.root.is_dir():
                raise NotADirectoryError(f"{self.root} exists and is not a directory")
            for folder in (self.root, self.images, self.records):
                folder.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as error:
            raise BatchError(
                f"cannot write to output directory {str(self.root)!r}: {error}. "
                "Choose a writable --out folder."
            ) from None

    def lock(self, wait_s: float = 10.0) -> None:
        """Hold an exclusive lock so two runs never write the same folder.

        The OS drops the lock when its holder dies (even by kill -9), but not instantly: wait a little.
        """
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; documented as unsupported for concurrent runs
            return
        handle = open(self.root / LOCK, "a")  # noqa: SIM115 - held for the whole run
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    handle.close()
                    raise BatchError(
                        f"another crossgate batch run is writing to {str(self.root)!r} (it holds "
                        f"{LOCK}); wait for it to finish, stop it, or use another --out."
                    ) from None
                time.sleep(0.1)
        self._lock_handle = handle

    def unlock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def clean_temporaries(self) -> int:
        """Remove temporary files a killed run left behind (call only when no process is writing)."""
        removed = 0
        for folder in (self.root, self.images, self.records):
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                if entry.name.startswith(".") and TMP_MARK in entry.name and entry.is_file():
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
        return removed

    def check_run_config(self, config: dict[str, Any]) -> bool:
        """Refuse to resume a folder made with other settings (images would silently mix).

        Returns True when ``run.json`` still has to be written (a new folder).
        """
        path = self.root / RUN_CONFIG
        if not path.is_file():
            return True
        if not any(name.endswith(".json") for name in _names(self.records)):
            return True  # nothing generated yet (e.g. the model failed to load): settings may change
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise BatchError(f"{str(path)!r} is unreadable ({error}); use a new --out folder.") from None
        diffs = [
            f"{key}: folder has {old.get(key)!r}, this run has {config.get(key)!r}"
            for key in sorted(set(old) | set(config))
            if old.get(key) != config.get(key)
        ]
        if diffs:
            raise BatchError(
                f"{str(self.root)!r} holds a run made with other settings; resume with the same settings "
                "or use a new --out folder:" + _listed(diffs)
            )
        return False

    def write_run_config(self, config: dict[str, Any]) -> None:
        _write_atomic(self.root / RUN_CONFIG, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())

    def read_record(self, item_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.record_path(item_id).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def done_ids(self, items: Sequence[PromptItem]) -> set[str]:
        """Ids whose record and image both exist; a record for another prompt under the id is an error."""
        present = {name[: -len(".json")] for name in _names(self.records) if name.endswith(".json")}
        images = {name[: -len(".png")] for name in _names(self.images) if name.endswith(".png")}
        done: set[str] = set()
        conflicts: list[str] = []
        for item in items:
            if item.id not in present:
                continue
            record = self.read_record(item.id)
            if record is None or item.id not in images:
                continue  # unreadable record or deleted image: generate it again
            old = {key: record.get(key) for key in item.key()}
            if old != item.key():
                conflicts.append(
                    f"id {item.id!r} (line {item.line}): folder has {old}, input has {item.key()}"
                )
            else:
                done.add(item.id)
        if conflicts:
            raise BatchError(
                f"{str(self.root)!r} already holds results for these ids with another prompt or seed; "
                "give them new ids or use a new --out folder:" + _listed(conflicts)
            )
        return done

    def save(self, item: PromptItem, image: Any, record: dict[str, Any]) -> None:
        """Image first, record second: a record always points at a complete image."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        _write_atomic(self.image_path(item.id), buffer.getvalue())
        _write_atomic(self.record_path(item.id), (json.dumps(record, sort_keys=True) + "\n").encode())

    def rebuild_manifest(self, items: Sequence[PromptItem]) -> tuple[int, int]:
        """Write ``manifest.jsonl`` from the records: input order first, then ids from earlier inputs.

        Returns (records written, of which not in this input).
        """
        order = {item.id: index for index, item in enumerate(items)}
        records = []
        for name in _names(self.records):
            if name.startswith(".") or not name.endswith(".json"):
                continue
            item_id = name[: -len(".json")]
            record = self.read_record(item_id)
            if record is not None and self.image_path(item_id).is_file():
                records.append(record)
        records.sort(key=lambda r: (order.get(r["id"], len(order)), r["id"]))
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
        _write_atomic(self.root / MANIFEST, data)
        return len(records), sum(1 for r in records if r["id"] not in order)


def _names(folder: Path) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(folder)]
    except FileNotFoundError:
        return []


@dataclass(frozen=True)
class GenerationSettings:
    """Pipeline-call settings shared by every prompt of a run (recorded in ``run.json``)."""

    model: str
    steps: int = 25
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    tgate: bool = True
    gate_step: int | float = 0.4
    dtype: str = "float32"
    batch_size: int = 4
    exact: bool = False  # one pipeline call per prompt: images independent of the batch size

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


def run_batch(
    items: Sequence[PromptItem],
    out: OutputDir,
    settings: GenerationSettings,
    state: Any,
    load_pipe: Callable[[], Any],
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Generate every prompt of ``items`` not yet done in ``out``, sharing batches among processes.

    ``state`` is an ``accelerate.PartialState`` (a single plain process works too). Every process
    reads the input and the folder itself and reaches the same plan; only the main process cleans,
    locks, shows progress and writes the manifest.
    """
    main = state.is_main_process
    out.check_writable(tag=f"-{state.process_index}")
    config = settings.as_config()
    needs_run_config = out.check_run_config(config)
    if main:
        out.lock()
    try:
        if main:
            removed = out.clean_temporaries()
            if removed:
                log(f"removed {removed} temporary file(s) left by an interrupted run")
            if needs_run_config:
                out.write_run_config(config)
        state.wait_for_everyone()  # nobody reads the folder before it is clean
        done = out.done_ids(items)
        batches = [
            b for b in plan_batches(items, settings.batch_size) if any(i.id not in done for i in b.items)
        ]
        todo = sum(1 for b in batches for i in b.items if i.id not in done)
        if main:
            log(
                f"{len(items)} prompts: {len(items) - todo} already done, {todo} to generate "
                f"in {len(batches)} batch(es) on {state.num_processes} process(es)"
            )
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
                            bar.n = _count_done(out, items)
                            bar.refresh()
                    _wait_for_all(state, bar if main else None, out, items)
                    bar.n = _count_done(out, items)
                    bar.refresh()
        seconds = time.perf_counter() - start
        summary = RunSummary(len(items), len(items) - todo, todo, seconds, state.num_processes)
        if main:
            missing = [item.id for item in items if not out.record_path(item.id).is_file()]
            if missing:
                raise BatchError(
                    f"{len(missing)} prompt(s) have no result after the run: {missing[:MAX_LISTED]}"
                )
            summary.manifest_records, summary.foreign_records = out.rebuild_manifest(items)
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
        record = {
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
        out.save(item, image, record)


def _count_done(out: OutputDir, items: Sequence[PromptItem]) -> int:
    ids = {item.id for item in items}
    return sum(1 for name in _names(out.records) if name.endswith(".json") and name[:-5] in ids)


def _wait_for_all(state: Any, bar: Any, out: OutputDir, items: Sequence[PromptItem]) -> None:
    """The main process keeps its progress bar moving (counting records) while the others finish."""
    if state.num_processes == 1:
        return
    import torch.distributed as dist

    if bar is None or not dist.is_available() or not dist.is_initialized():
        state.wait_for_everyone()
        return
    work = dist.barrier(async_op=True)
    while not work.is_completed():
        bar.n = _count_done(out, items)
        bar.refresh()
        time.sleep(0.2)
    work.wait()
