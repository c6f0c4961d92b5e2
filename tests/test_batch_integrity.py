"""``crossgate batch`` output that cannot rot: broken results are found and redone, damaged metadata is
rebuilt, a full disk or Ctrl-C leaves nothing partial, and every setting that changes pixels is enforced.

Runs are in-process with one torch thread (one test uses 2 accelerate processes), on a 4-prompt file
(batches of 3 and 1); a module-level reference run is copied and damaged rather than regenerated.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from crossgate.cli import main as cli_main
from crossgate.tools.batch import OutputDir, parse_prompts, split_lines
from test_batch import (
    common_args,
    finish,
    launch_cmd,
    manifest,
    model_dir,
    pixels,
    restore_threads,
    run_cli,
    start,
)

__all__ = ["model_dir", "restore_threads"]  # fixtures, imported to be found by pytest

store = importlib.import_module("crossgate.tools.batch.store")
batch_run = importlib.import_module("crossgate.tools.batch.run")
IDS = ["000001", "000002", "000003", "000004"]


@pytest.fixture(scope="module")
def small_prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small") / "p.txt"
    path.write_text("a red circle\na blue square\na green shape\na red shape\n")
    return path


def args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return common_args(model_dir, out, "--threads", "1", *extra)


@pytest.fixture(scope="module")
def small_reference(model_dir, small_prompts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small-ref") / "out"
    threads = torch.get_num_threads()
    try:
        assert cli_main(["batch", str(small_prompts), *args(model_dir, out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def copy_of(reference: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns(".lock"))
    return out


def stems(folder: Path, suffix: str) -> set[str]:
    return {p.name.removesuffix(suffix) for p in folder.iterdir() if p.name.endswith(suffix)}


def assert_clean(out: Path) -> None:
    """No temporary file, no image without its record, and every record's image intact."""
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert stems(out / "images", ".png") == stems(out / "records", ".json")
    for path in (out / "records").glob("*.json"):
        record = json.loads(path.read_text())
        data = (out / record["file"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (record["size"], record["sha256"])


def assert_complete_and_equal(out: Path, reference: Path) -> None:
    records = manifest(out)
    assert [r["id"] for r in records] == IDS
    assert_clean(out)
    for record in records:
        assert torch.equal(pixels(out / record["file"]), pixels(reference / record["file"])), record["id"]


# ---------------------------------------------------------------- records name their image


def test_records_hold_size_sha256_and_every_setting(small_reference):
    assert_clean(small_reference)
    run_config = json.loads((small_reference / "run.json").read_text())
    assert run_config["threads"] == 1 and run_config["device"] == "cpu"
    for record in manifest(small_reference):
        assert {k: v for k, v in record["config"].items() if k != "resolved_gate"} == run_config


def test_broken_images_are_found_and_generated_again(
    tmp_path, model_dir, small_prompts, small_reference, capsys, restore_threads
):
    out = copy_of(small_reference, tmp_path)
    images = out / "images"
    first = images / "000001.png"
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])  # truncated to half
    (images / "000002.png").write_bytes(b"")  # emptied
    third = images / "000003.png"
    third.write_bytes(os.urandom(third.stat().st_size))  # same size, other bytes
    garbage = os.urandom(100)  # a record that matches its file, which does not decode
    (images / "000004.png").write_bytes(garbage)
    record_path = out / "records" / "000004.json"
    record = json.loads(record_path.read_text())
    record.update(size=len(garbage), sha256=hashlib.sha256(garbage).hexdigest())
    record_path.write_text(json.dumps(record))

    code, stdout, err = run_cli(capsys, str(small_prompts), *args(model_dir, out))
    assert code == 0, err
    assert "4 result(s) failed verification" in stdout and "0 already done, 4 to generate" in stdout
    assert "has 0 bytes, its record says" in stdout and "sha256 differs" in stdout
    assert "does not decode" in stdout
    assert_complete_and_equal(out, small_reference)


def test_broken_records_are_generated_again_without_a_traceback(
    tmp_path, model_dir, small_prompts, small_reference, capsys, restore_threads
):
    out = copy_of(small_reference, tmp_path)
    records = out / "records"
    (records / "000001.json").write_text("[]\n")
    incomplete = json.loads((records / "000002.json").read_text())
    del incomplete["seed"], incomplete["sha256"]
    (records / "000002.json").write_text(json.dumps(incomplete))
    (records / "000003.json").write_bytes(os.urandom(64) + b"\xff")  # not even UTF-8
    truncated = (records / "000004.json").read_bytes()
    (records / "000004.json").write_bytes(truncated[: len(truncated) // 2])
    (records / "old.json").write_text("[]\n")  # a broken result of an earlier input

    code, stdout, err = run_cli(capsys, str(small_prompts), *args(model_dir, out))
    assert code == 0 and "Traceback" not in err, err
    assert "4 result(s) failed verification" in stdout and "0 already done, 4 to generate" in stdout
    assert "1 result(s) of earlier inputs are broken and left out of the manifest" in stdout
    assert "lacks ['seed', 'sha256']" in stdout
    (records / "old.json").unlink()
    assert_complete_and_equal(out, small_reference)


def test_damaged_run_json_is_rebuilt_from_intact_records(
    tmp_path, model_dir, small_prompts, small_reference, capsys, restore_threads
):
    out = copy_of(small_reference, tmp_path)
    run_json = out / "run.json"
    original = run_json.read_text()
    run_json.write_text(original[: len(original) // 2])

    code, stdout, err = run_cli(capsys, str(small_prompts), *args(model_dir, out))
    assert code == 0, err
    assert "run.json was damaged (not valid JSON); rebuilt it" in stdout
    assert "4 already done, 0 to generate" in stdout
    assert json.loads(run_json.read_text()) == json.loads(original)

    run_json.unlink()  # missing, and a run with other settings: the records still say what made them
    code, _, err = run_cli(capsys, str(small_prompts), *args(model_dir, out, "--steps", "3"))
    assert code == 2 and "steps: record '000001' has 8, this run has 3" in err
    assert not run_json.exists(), "a refused run writes no settings"


def test_a_record_with_a_wrongly_typed_setting_is_broken_and_generated_again(
    tmp_path, model_dir, small_prompts, small_reference, capsys, restore_threads
):
    """docs/batch.md: a record whose `config` holds a setting of the wrong type is broken and generated
    again (it used to be refused as "made with other settings")."""
    out = copy_of(small_reference, tmp_path)
    path = out / "records" / "000002.json"
    record = json.loads(path.read_text())
    record["config"]["steps"] = str(record["config"]["steps"])  # 8 -> "8", as an edit by hand would
    path.write_text(json.dumps(record))

    code, stdout, err = run_cli(capsys, str(small_prompts), *args(model_dir, out))
    assert code == 0 and "Traceback" not in err, err
    assert "1 result(s) failed verification" in stdout
    assert "000002: its record has settings of the wrong type: ['steps']" in stdout
    assert "3 already done, 1 to generate" in stdout
    assert_complete_and_equal(out, small_reference)


def test_a_run_json_with_wrongly_typed_settings_is_damaged_and_rebuilt(
    tmp_path, model_dir, small_prompts, small_reference, capsys, restore_threads
):
    out = copy_of(small_reference, tmp_path)
    run_json = out / "run.json"
    original = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**original, "steps": str(original["steps"]), "tgate": 1}))

    code, stdout, err = run_cli(capsys, str(small_prompts), *args(model_dir, out))
    assert code == 0 and "Traceback" not in err, err
    assert "run.json was damaged (settings of the wrong type: ['steps', 'tgate']); rebuilt it" in stdout
    assert "4 already done, 0 to generate" in stdout
    assert json.loads(run_json.read_text()) == original


def test_setting_types_cover_every_setting():
    """store.SETTING_TYPES is what a run writes: one entry per GenerationSettings field, matching."""
    import dataclasses

    fields = [f.name for f in dataclasses.fields(batch_run.GenerationSettings)]
    assert sorted(store.SETTING_TYPES) == sorted(fields)
    for settings in (
        batch_run.GenerationSettings(model="m"),
        batch_run.GenerationSettings(model="m", guidance=7.5, height=64, width=64, gate_step=10, threads=1),
        batch_run.GenerationSettings(model="m", tgate=False, device="cuda"),
    ):
        config = json.loads(json.dumps(settings.as_config()))
        assert store.wrongly_typed_settings(config) == []
    assert store.wrongly_typed_settings({"steps": True, "exact": 1, "gate_step": "0.4", "guidance": 7}) == [
        "exact",
        "gate_step",
        "steps",
    ]


# ---------------------------------------------------------------- disk full, Ctrl-C


def failing_write(monkeypatch, name: str, error: BaseException) -> None:
    """Writing the temporary file of ``name`` stops halfway with ``error`` (as a full disk would)."""
    original = store._write_file

    def write(path: Path, data: bytes) -> None:
        if path.name.startswith(f".{name}{store.TMP_MARK}"):
            path.write_bytes(data[: len(data) // 2])
            raise error
        original(path, data)

    monkeypatch.setattr(store, "_write_file", write)


@pytest.mark.parametrize("name", ["000002.png", "000002.json"])
def test_disk_full_is_one_line_leaves_nothing_partial_and_resumes(
    tmp_path, model_dir, small_prompts, small_reference, capsys, monkeypatch, restore_threads, name
):
    out = tmp_path / "out"
    failing_write(monkeypatch, name, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    code, _, err = run_cli(capsys, str(small_prompts), *args(model_dir, out))
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "run the same command" in errors[0]
    assert_clean(out)
    assert "000002" not in stems(out / "images", ".png")
    assert (out / "records" / "000001.json").is_file(), "finished images are kept"

    monkeypatch.undo()  # space freed
    code, stdout, err = run_cli(capsys, str(small_prompts), *args(model_dir, out))
    assert code == 0 and "1 already done, 3 to generate" in stdout, err
    assert_complete_and_equal(out, small_reference)


@pytest.mark.parametrize("where", ["generating", "writing a record"])
def test_ctrl_c_exits_130_leaves_nothing_partial_and_resumes(
    tmp_path, model_dir, small_prompts, small_reference, capsys, monkeypatch, restore_threads, where
):
    out = tmp_path / "out"
    if where == "generating":
        original = batch_run.generate_batch
        calls = []

        def generate(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return original(*a, **k)

        monkeypatch.setattr(batch_run, "generate_batch", generate)
    else:
        failing_write(monkeypatch, "000002.json", KeyboardInterrupt())
    code, _, err = run_cli(capsys, str(small_prompts), *args(model_dir, out))
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert_clean(out)
    done = len(stems(out / "records", ".json"))
    assert done == (3 if where == "generating" else 1)

    monkeypatch.undo()
    code, stdout, err = run_cli(capsys, str(small_prompts), *args(model_dir, out))
    assert code == 0 and f"{done} already done" in stdout, err
    assert_complete_and_equal(out, small_reference)


# ---------------------------------------------------------------- settings


def test_settings_are_checked_under_the_lock(
    tmp_path, model_dir, small_prompts, small_reference, capsys, monkeypatch, restore_threads
):
    """A run waiting for the lock must check the settings the holder wrote, not what it saw before."""
    out = tmp_path / "out"
    out.mkdir()
    holder = OutputDir(out)
    holder.lock()  # another run has just started on the folder
    waiting = threading.Event()
    original = OutputDir.lock

    def lock(self, wait_s: float = 10.0) -> None:
        waiting.set()
        original(self, wait_s)

    monkeypatch.setattr(OutputDir, "lock", lock)
    result: dict[str, int] = {}
    second = threading.Thread(
        target=lambda: result.update(
            code=cli_main(["batch", str(small_prompts), *args(model_dir, out, "--gate-step", "3")])
        )
    )
    try:
        second.start()
        assert waiting.wait(60), "the second run never reached the lock"
        time.sleep(0.3)
        # The holder finishes its run (the reference's settings, gate 0.4) ...
        shutil.copytree(small_reference, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".lock"))
    finally:
        holder.unlock()  # ... and lets go
        second.join(120)
    err = capsys.readouterr().err
    assert result.get("code") == 2, err
    assert "gate_step: folder has 0.4, this run has 3" in err
    assert json.loads((out / "run.json").read_text())["gate_step"] == 0.4


def test_threads_are_recorded_and_a_resume_with_others_is_refused(
    tmp_path, model_dir, small_prompts, small_reference, capsys, restore_threads
):
    out = copy_of(small_reference, tmp_path)
    code, _, err = run_cli(capsys, str(small_prompts), *common_args(model_dir, out, "--threads", "2"))
    assert code == 2 and "threads: folder has 1, this run has 2" in err


def test_records_made_with_other_settings_are_refused(
    tmp_path, model_dir, small_prompts, small_reference, capsys, restore_threads
):
    """run.json agrees but a record does not (e.g. left by a race in an earlier version)."""
    out = copy_of(small_reference, tmp_path)
    path = out / "records" / "000003.json"
    record = json.loads(path.read_text())
    record["config"]["gate_step"] = 5
    path.write_text(json.dumps(record))
    code, _, err = run_cli(capsys, str(small_prompts), *args(model_dir, out))
    assert code == 2 and "id '000003': gate_step: its record has 5, this run has 0.4" in err


# ---------------------------------------------------------------- prompt files split on newlines only


def test_prompts_split_on_newline_and_crlf_only(tmp_path):
    inside = ["\u2028", "\u2029", "\x0c", "\x0b", "\x85", "\x1c", "\r"]
    text = "".join(f"a{char}b\n" for char in inside) + "last\r\n"
    path = tmp_path / "p.txt"
    path.write_text(text, newline="")
    items = parse_prompts(path)
    assert [i.prompt for i in items] == [f"a{char}b" for char in inside] + ["last"]
    assert [i.id for i in items] == [f"{n:06d}" for n in range(1, len(inside) + 2)]
    assert split_lines("x\r\ny\n") == ["x", "y"] and split_lines("x\n\n") == ["x", ""]


def test_jsonl_string_with_a_raw_line_separator_is_valid(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a\u2028b", "id": "x"}\r\n{"prompt": "c\x85d"}\n', newline="")
    items = parse_prompts(path)
    assert [(i.id, i.prompt, i.line) for i in items] == [("x", "a\u2028b", 1), ("000002", "c\x85d", 2)]


# ---------------------------------------------------------------- accelerate launch, 2 CPU processes


@pytest.mark.slow
def test_two_processes_share_verification_and_refuse_together(
    tmp_path, model_dir, small_prompts, small_reference
):
    """Each process verifies (and removes the broken results of) its share; a refusal decided by the
    main process under the lock stops both processes, printed once, without a hang."""
    out = copy_of(small_reference, tmp_path)
    (out / "images" / "000001.png").write_bytes(b"")  # process 0's share
    (out / "records" / "000002.json").write_text("[]")  # process 1's share
    log = tmp_path / "log.txt"
    proc = start(launch_cmd(str(small_prompts), *common_args(model_dir, out)), log)
    text = finish(proc, log)
    assert proc.returncode == 0, text[-3000:]
    assert "2 result(s) failed verification" in text and "2 already done, 2 to generate" in text
    assert_complete_and_equal(out, small_reference)

    log = tmp_path / "log2.txt"
    proc = start(launch_cmd(str(small_prompts), *common_args(model_dir, out, "--steps", "3")), log)
    text = finish(proc, log, timeout=120)
    assert proc.returncode != 0 and text.count("steps: folder has 8, this run has 3") == 1, text[-3000:]
    assert "SIGABRT" not in text, "the main process reports and exits first; no process aborts"
