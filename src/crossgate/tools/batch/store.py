"""The output folder of a batch run: images, their records, ``run.json``, the manifest and the lock.

Why it is built this way:

* **Never a half-written file.** Every file is written under a hidden temporary name, fsync-ed and
  ``os.replace``-d into place; a failed or interrupted write removes its temporary file. The image is
  written before its record, and removed again if its record cannot be written, so a record always
  points at a complete image and nothing is left of an item that did not finish.
* **Records are the source of truth, and they can be checked.** A prompt is done when
  ``records/<id>.json`` is a well-formed record whose image has the size and sha256 it names and
  decodes. Anything else (a truncated, emptied or overwritten image, a record that is not an
  object, lacks fields or holds a field or setting of the wrong type) is a broken result: it is
  removed and generated again, never trusted and never a traceback. Each record also names the settings that made it, so ``run.json`` can be
  rebuilt from intact records when it is damaged.
* **No duplicate manifest entries.** ``manifest.jsonl`` is rebuilt from the records (one per id)
  and replaced atomically; it is never appended to.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossgate.tools.batch.errors import MAX_LISTED, BatchError, WriteError, listed
from crossgate.tools.batch.prompts import PromptItem

MANIFEST = "manifest.jsonl"
RUN_CONFIG = "run.json"
IMAGES = "images"
RECORDS = "records"
LOCK = ".lock"
TMP_MARK = ".tmp-"
# Fields a record needs to be trusted, with their JSON types (bool is never accepted for an int).
RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "prompt": (str,),
    "negative_prompt": (str, type(None)),
    "seed": (int,),
    "line": (int,),
    "file": (str,),
    "size": (int,),
    "sha256": (str,),
    "config": (dict,),
}
# The JSON types each setting can have (GenerationSettings.as_config; None where a setting may be unset).
# A setting of another type (`"steps": "2"`) was not written by a run: the record (or run.json) holding
# it is damaged, and treated as such (regenerated, rebuilt), not as made with other settings.
SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "steps": (int,),
    "guidance": (int, float, type(None)),
    "height": (int, type(None)),
    "width": (int, type(None)),
    "tgate": (bool,),
    "gate_step": (int, float, type(None)),
    "dtype": (str,),
    "batch_size": (int,),
    "exact": (bool,),
    "device": (str,),
    "threads": (int, type(None)),
}
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
NOT_SETTINGS = ("resolved_gate",)  # in a record's config, but an outcome of the settings, not one of them
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync one file: the one place where output bytes reach the disk."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_failure(path: Path, error: OSError) -> str:
    """One line that says what failed and what to do (a disk-full run resumes once space is freed)."""
    reason = f"{error.strerror or error}"
    hint = "free disk space" if error.errno in DISK_FULL else "fix the output folder"
    return (
        f"cannot write {str(path)!r} ({reason}); nothing partial was left. Finished images are kept: "
        f"{hint} and run the same command again to generate the rest."
    )


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` under a hidden temporary name in the same folder, then rename it into place.

    On any failure (disk full, Ctrl-C) the temporary file is removed; an ``OSError`` becomes a
    one-line :class:`WriteError`.
    """
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(error, OSError):
            raise WriteError(write_failure(path, error)) from None
        raise


def _typed(value: Any, types: tuple[type, ...]) -> bool:
    """``value`` is one of ``types``; a bool counts as an int only where bool is listed."""
    return isinstance(value, types) and (not isinstance(value, bool) or bool in types)


def wrongly_typed_settings(config: dict[str, Any]) -> list[str]:
    """The settings of ``config`` (run.json, or a record's ``config``) whose JSON type no run writes."""
    return sorted(
        key for key, types in SETTING_TYPES.items() if key in config and not _typed(config[key], types)
    )


def config_diffs(old: dict[str, Any], new: dict[str, Any], holder: str = "folder has") -> list[str]:
    """One line per setting that differs (a setting missing on one side counts as None)."""
    return [
        f"{key}: {holder} {old.get(key)!r}, this run has {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def record_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The settings that made a (well-formed) record's image."""
    return {key: value for key, value in record["config"].items() if key not in NOT_SETTINGS}


def record_problem(record: Any, item_id: str, setting_keys: Collection[str]) -> str | None:
    """Why a parsed record cannot be trusted, or None. Checks form only, not the image."""
    if not isinstance(record, dict):
        return f"its record is a JSON {type(record).__name__}, not an object"
    missing = [key for key in RECORD_FIELDS if key not in record]
    if missing:
        return f"its record lacks {missing}"
    wrong = [key for key, types in RECORD_FIELDS.items() if not _typed(record[key], types)]
    if wrong:
        return f"its record has fields of the wrong type: {wrong}"
    if record["id"] != item_id or record["file"] != f"{IMAGES}/{item_id}.png":
        return f"its record names another result ({record['id']!r}, {record['file']!r})"
    if record["size"] < 0 or not SHA256_PATTERN.fullmatch(record["sha256"]):
        return "its record has an unusable size or sha256"
    lacking = sorted(set(setting_keys) - set(record["config"]))
    if lacking:
        return f"its record lacks the settings {lacking}"
    wrong = wrongly_typed_settings(record["config"])
    if wrong:
        return f"its record has settings of the wrong type: {wrong}"
    return None


def image_problem(path: Path, size: int, sha256: str) -> str | None:
    """Why an image does not match its record (size, then sha256, then a full decode), or None."""
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return "its image is missing"
    except OSError as error:
        return f"its image cannot be read ({error.strerror or error})"
    if actual != size:
        return f"its image has {actual} bytes, its record says {size}"
    try:
        data = path.read_bytes()
    except OSError as error:
        return f"its image cannot be read ({error.strerror or error})"
    if hashlib.sha256(data).hexdigest() != sha256:
        return "its image's sha256 differs from its record's"
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as error:  # PIL raises many kinds (OSError, SyntaxError, ValueError, ...)
        return f"its image does not decode ({error})"
    return None


@dataclass
class Inspection:
    """What a look at the folder found for some input ids (one process's share, or all merged).

    Entries of the lists are ``(line, text)`` so that merged shares list in input order.
    """

    done: set[str] = field(default_factory=set)
    broken: list[tuple[int, str]] = field(default_factory=list)  # removed; generated again
    conflicts: list[tuple[int, str]] = field(default_factory=list)  # other prompt or seed under the id
    other_settings: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def merged(cls, parts: Iterable[Inspection]) -> Inspection:
        total = cls()
        for part in parts:
            total.done |= part.done
            total.broken += part.broken
            total.conflicts += part.conflicts
            total.other_settings += part.other_settings
            total.error = total.error or part.error
        for entries in (total.broken, total.conflicts, total.other_settings):
            entries.sort()
        return total

    def refuse_if_needed(self, root: Path) -> None:
        """Raise the error every process must agree on (they all hold the merged inspection)."""
        if self.error is not None:
            raise BatchError(self.error)
        if self.conflicts:
            raise BatchError(
                f"{str(root)!r} already holds results for these ids with another prompt or seed; "
                "give them new ids or use a new --out folder:" + listed([text for _, text in self.conflicts])
            )
        if self.other_settings:
            raise BatchError(
                f"{str(root)!r} holds results made with other settings; resume with the same settings "
                "or use a new --out folder:" + listed([text for _, text in self.other_settings])
            )


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
            probe.unlink(missing_ok=True)  # the main process may have cleaned it up as a temporary
        except OSError as error:
            with contextlib.suppress(OSError):
                probe.unlink()
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
        try:
            handle = open(self.root / LOCK, "a")  # noqa: SIM115 - held for the whole run
        except OSError as error:
            raise BatchError(f"cannot create {str(self.root / LOCK)!r}: {error}") from None
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

    # ------------------------------------------------------------------ settings (run.json)

    def settle_run_config(self, config: dict[str, Any]) -> str | None:
        """Refuse a folder whose results were made with other settings; else make ``run.json`` say ours.

        Call it holding the lock: a run that checked before taking the lock could accept a folder
        that another run fills with other settings meanwhile. A folder without results takes the new
        settings. A missing or damaged ``run.json`` is rebuilt when the intact records agree with
        this run (they name their settings). Returns a note for the log, or None.
        """
        if not self._has_records():
            self._write_run_config(config)
            return None
        old, problem = self._read_run_config()
        if old is not None:
            diffs = config_diffs(old, config)
            if diffs:
                raise BatchError(
                    f"{str(self.root)!r} holds a run made with other settings; resume with the same "
                    "settings or use a new --out folder:" + listed(diffs)
                )
            return None
        diffs = self._record_settings_diffs(config)
        if diffs:
            raise BatchError(
                f"{str(self.root)!r} holds results made with other settings ({RUN_CONFIG} is {problem}; "
                "its records name them); resume with the same settings or use a new --out folder:"
                + listed(diffs)
            )
        self._write_run_config(config)
        return f"{RUN_CONFIG} was {problem}; rebuilt it (the intact records were made with these settings)"

    def _has_records(self) -> bool:
        return any(_is_record_name(name) for name in _names(self.records))

    def _read_run_config(self) -> tuple[dict[str, Any] | None, str]:
        path = self.root / RUN_CONFIG
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, "missing"
        except OSError as error:
            return None, f"unreadable ({error.strerror or error})"
        try:
            config = json.loads(data)
        except (ValueError, RecursionError):
            return None, "damaged (not valid JSON)"
        if not isinstance(config, dict):
            return None, "damaged (not a JSON object)"
        wrong = wrongly_typed_settings(config)
        if wrong:
            return None, f"damaged (settings of the wrong type: {wrong})"
        return config, ""

    def _record_settings_diffs(self, config: dict[str, Any]) -> list[str]:
        """The differences to the first well-formed record made with other settings."""
        for name in sorted(_names(self.records)):
            if not _is_record_name(name):
                continue
            item_id = name.removesuffix(".json")
            record, problem = self.load_record(item_id, config)
            if record is not None and problem is None:
                diffs = config_diffs(record_settings(record), config, f"record {item_id!r} has")
                if diffs:
                    return diffs
        return []

    def _write_run_config(self, config: dict[str, Any]) -> None:
        write_atomic(self.root / RUN_CONFIG, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())

    # ------------------------------------------------------------------ results (records + images)

    def load_record(self, item_id: str, config: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """A well-formed record, or None and why not (unreadable, not JSON, not an object, fields)."""
        try:
            data = self.record_path(item_id).read_bytes()
        except OSError as error:
            return None, f"its record cannot be read ({error.strerror or error})"
        try:
            record = json.loads(data)
        except (ValueError, RecursionError):  # ValueError covers bad JSON and bytes that are not UTF-8
            return None, "its record is not valid JSON"
        problem = record_problem(record, item_id, config.keys())
        return (None, problem) if problem else (record, None)

    def load_result(self, item_id: str, config: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """A record whose image is intact, or None and why it is broken."""
        record, problem = self.load_record(item_id, config)
        if record is None:
            return None, problem
        problem = image_problem(self.image_path(item_id), record["size"], record["sha256"])
        return (None, problem) if problem else (record, None)

    def discard(self, item_id: str) -> None:
        """Remove a broken result, record first: a lone image is 'not done' and is simply redone."""
        for path in (self.record_path(item_id), self.image_path(item_id)):
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                raise WriteError(
                    f"cannot remove the broken result {str(path)!r} ({error.strerror or error}); "
                    "remove it by hand and run again."
                ) from None

    def inspect(self, items: Sequence[PromptItem], config: dict[str, Any]) -> Inspection:
        """Sort the ids of ``items`` into done, broken (removed here, to be redone) and refused.

        A result is checked in full (record fields, image size, sha256, decode) before it is trusted;
        only an intact result can conflict with the input, since a broken one is lost anyway.
        """
        present = set(_names(self.records))
        found = Inspection()
        try:
            for item in items:
                if f"{item.id}.json" not in present:
                    continue
                record, problem = self.load_result(item.id, config)
                if record is None:
                    self.discard(item.id)
                    found.broken.append((item.line, f"{item.id}: {problem}"))
                    continue
                old = {key: record[key] for key in item.key()}
                diffs = config_diffs(record_settings(record), config, "its record has")
                if old != item.key():
                    found.conflicts.append(
                        (
                            item.line,
                            f"id {item.id!r} (line {item.line}): folder has {old}, input has {item.key()}",
                        )
                    )
                elif diffs:
                    found.other_settings.append((item.line, f"id {item.id!r}: " + "; ".join(diffs)))
                else:
                    found.done.add(item.id)
        except BatchError as error:
            found.error = str(error)
        return found

    def save(self, item: PromptItem, image: Any, fields: dict[str, Any]) -> dict[str, Any]:
        """Image first, record (with the image's size and sha256) second; returns the record.

        If the record cannot be written the image is removed again, so nothing of the item is left.
        """
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        record = {**fields, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        image_path = self.image_path(item.id)
        write_atomic(image_path, data)
        try:
            write_atomic(self.record_path(item.id), (json.dumps(record, sort_keys=True) + "\n").encode())
        except BaseException:
            with contextlib.suppress(OSError):
                image_path.unlink()
            raise
        return record

    def rebuild_manifest(
        self, items: Sequence[PromptItem], config: dict[str, Any]
    ) -> tuple[int, int, list[str]]:
        """Write ``manifest.jsonl`` from the intact records: input order first, then earlier inputs' ids.

        This input's results were verified when the run started or written by it, so their size is
        checked; results of earlier inputs are verified in full. Refuses (writing nothing) when an
        input id has no intact result. Returns (records written, of which not in this input, the
        earlier inputs' broken results left out).
        """
        order = {item.id: index for index, item in enumerate(items)}
        records: list[dict[str, Any]] = []
        left_out: list[str] = []
        for name in sorted(_names(self.records)):
            if not _is_record_name(name):
                continue
            item_id = name.removesuffix(".json")
            if item_id in order:
                record, problem = self.load_record(item_id, config)
                if record is not None and _size(self.image_path(item_id)) != record["size"]:
                    record, problem = None, "its image changed during the run"
            else:
                record, problem = self.load_result(item_id, config)
            if record is not None:
                records.append(record)
            elif item_id not in order:
                left_out.append(f"{item_id}: {problem}")
        have = {record["id"] for record in records}
        missing = [item.id for item in items if item.id not in have]
        if missing:
            raise BatchError(
                f"{len(missing)} prompt(s) have no intact result after the run: {missing[:MAX_LISTED]}; "
                "run the same command again."
            )
        records.sort(key=lambda r: (order.get(r["id"], len(order)), r["id"]))
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
        write_atomic(self.root / MANIFEST, data)
        return len(records), sum(1 for r in records if r["id"] not in order), left_out

    def count_records(self, ids: Collection[str]) -> int:
        """Finished results among ``ids`` (for the progress bar: cheap, counts names only)."""
        return sum(1 for name in _names(self.records) if _is_record_name(name) and name[:-5] in ids)


def _is_record_name(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".")


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _names(folder: Path) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(folder)]
    except FileNotFoundError:
        return []
