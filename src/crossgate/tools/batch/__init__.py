"""Batch generation of many prompts across ``accelerate`` processes, resumable and deterministic.

Three rooms, along the seams of the work:

* ``prompts``: the input file read into items (every problem reported at once) and cut into fixed
  batches by position, so the images depend on the file, the settings and the batch size only:
  never on the number of processes, which process ran what, or on resumes.
* ``store``: the output folder. Atomic writes, records that name their image's size and sha256 and
  the settings that made it (so broken results are found and redone, and a damaged ``run.json``
  is rebuilt), the lock, the manifest rebuilt from the records.
* ``run``: the loop. The settings are settled under the lock, each process verifies a share of the
  folder, the batches still to do are split between processes.

See docs/batch.md for the guarantees.
"""

from __future__ import annotations

from crossgate.tools.batch.errors import BatchError, WriteError
from crossgate.tools.batch.prompts import (
    Batch,
    PromptItem,
    default_seed,
    detect_format,
    parse_prompts,
    plan_batches,
    split_lines,
)
from crossgate.tools.batch.run import GenerationSettings, RunSummary, generate_batch, run_batch
from crossgate.tools.batch.store import (
    IMAGES,
    LOCK,
    MANIFEST,
    RECORDS,
    RUN_CONFIG,
    TMP_MARK,
    Inspection,
    OutputDir,
    write_atomic,
)

__all__ = [
    "IMAGES",
    "LOCK",
    "MANIFEST",
    "RECORDS",
    "RUN_CONFIG",
    "TMP_MARK",
    "Batch",
    "BatchError",
    "GenerationSettings",
    "Inspection",
    "OutputDir",
    "PromptItem",
    "RunSummary",
    "WriteError",
    "default_seed",
    "detect_format",
    "generate_batch",
    "parse_prompts",
    "plan_batches",
    "run_batch",
    "split_lines",
    "write_atomic",
]
