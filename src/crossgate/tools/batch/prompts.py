"""The input of a batch run: a prompts file (text or JSONL) read into items, cut into fixed batches.

Every problem of the file is collected and reported together, with line numbers, before anything
runs: a run over thousands of prompts should not stop (or silently skip) halfway for a typo.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossgate.tools.batch.errors import BatchError, listed

JSONL_KEYS = ("prompt", "negative_prompt", "seed", "id")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1 (a negative seed wraps around)
# Longer integers are never turned into ints: no usable seed or id has more digits, and Python refuses
# to convert strings of over 4300 digits (a ValueError out of json.loads, not a problem of the line).
MAX_INT_DIGITS = 128


class _LongInteger:
    """A JSON integer with more than :data:`MAX_INT_DIGITS` digits, kept as text (never a usable value)."""

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def _parse_int(text: str) -> int | _LongInteger:
    return int(text) if len(text) <= MAX_INT_DIGITS else _LongInteger(text)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json``'s object hook: an object naming a key twice is refused (json would keep the last one)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _not_utf8(text: str) -> bool:
    """A string no UTF-8 encoder takes: a lone surrogate, which a JSON escape (``"\\ud800"``) can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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


def split_lines(text: str) -> list[str]:
    """Split on ``\\n`` and ``\\r\\n`` only.

    ``str.splitlines`` also breaks at U+2028, U+0085, form feed and other characters that may sit
    inside a prompt (and inside a JSON string, where they are legal unescaped); splitting there would
    cut a prompt in two and shift the line number, hence the id and seed, of every later prompt.
    A lone ``\r`` is kept too (the file is read without newline translation). A final newline ends
    the last line rather than starting an empty one, as with ``splitlines``.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def detect_format(path: Path, lines: Sequence[str]) -> str:
    """``jsonl`` for a ``.jsonl`` file or one whose first non-blank line starts with ``{``."""
    if path.suffix.lower() == ".jsonl":
        return "jsonl"
    first = next((line.strip() for line in lines if line.strip()), "")
    return "jsonl" if first.startswith("{") else "text"


def parse_prompts(path: str | Path, fmt: str = "auto", base_seed: int = 0) -> list[PromptItem]:
    """Read a prompts file: plain text (one prompt per line) or JSONL (``prompt``, ``negative_prompt``,
    ``seed``, ``id``)."""
    path = Path(path)
    try:
        # newline="": no universal-newline translation, which would also break lines at a lone "\r".
        with open(path, encoding="utf-8-sig", newline="") as handle:
            text = handle.read()
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
    lines = split_lines(text)
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
            + listed(problems)
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
        obj = json.loads(raw, parse_int=_parse_int, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        return None, f"not valid JSON ({error.msg} at column {error.colno})"
    except _DuplicateKey as error:
        return None, f"key {str(error)!r} appears twice in one object; write each key once"
    except RecursionError:
        return None, "not valid JSON (nested too deeply)"
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
    for key, text in (("prompt", prompt), ("negative_prompt", negative)):
        if text is not None and _not_utf8(text):
            return None, (
                f'"{key}" holds a lone surrogate escape (such as \\ud800), which is not text a tokenizer can '
                "read; write the character itself or a complete surrogate pair"
            )
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
