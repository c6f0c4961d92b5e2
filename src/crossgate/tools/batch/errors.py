"""The errors of a batch run and how their lists are shown."""

from __future__ import annotations

from collections.abc import Sequence

MAX_LISTED = 10


class BatchError(ValueError):
    """A user error in a batch run (input file, output folder, settings); the message says what to do."""


class WriteError(BatchError):
    """Writing the output folder failed (disk full, permissions, I/O error).

    Unlike the other errors, only the process that hit it knows about it, so that process reports it
    (the others are stopped by the launcher).
    """


def listed(problems: Sequence[str]) -> str:
    """The first ``MAX_LISTED`` problems, one per indented line, and how many more there are."""
    shown = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"\n  {shown}{more}"
