"""``crossgate batch``: parsing, exactly-once results, determinism across process counts, kill -9 + resume.

Multi-process tests start two CPU gloo processes with ``accelerate launch --multi_gpu`` (the program
asks for CPU itself) in their own process group, on a free port, under a timeout. Each accelerate
worker runs one torch thread (torchrun sets OMP_NUM_THREADS=1), so in-process runs use --threads 1:
thread count changes float rounding on CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crossgate.cli import main as cli_main
from crossgate.tools.batch import BatchError, OutputDir, PromptItem, default_seed, parse_prompts, plan_batches

STEPS = "8"
LAUNCH_TIMEOUT = 300


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from crossgate.testing import tiny_sd_pipeline

    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    """24 prompts: explicit and default ids and seeds, some with negative prompts."""
    lines = []
    for i in range(24):
        record: dict = {"prompt": f"a {['red', 'blue', 'green'][i % 3]} shape number {i}"}
        if i % 4 != 3:
            record["id"] = f"p{i:02d}"
        if i % 5 == 0:
            record["seed"] = 1000 + i
        if 8 <= i < 12:
            record["negative_prompt"] = "blurry"
        lines.append(json.dumps(record))
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main(["batch", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def common_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--model", str(model_dir), "--steps", STEPS, "--batch-size", "3", *extra]


@pytest.fixture(scope="module")
def reference(model_dir, prompts_file, tmp_path_factory) -> Path:
    """A plain one-process run (in this process, one thread) that the distributed runs must equal."""
    out = tmp_path_factory.mktemp("ref") / "out"
    threads = torch.get_num_threads()
    try:
        assert cli_main(["batch", str(prompts_file), *common_args(model_dir, out, "--threads", "1")]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def pixels(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image))


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def input_ids(prompts_file: Path) -> list[str]:
    return [item.id for item in parse_prompts(prompts_file)]


def assert_complete_and_equal(out: Path, reference: Path, prompts_file: Path) -> list[dict]:
    records = manifest(out)
    ids = [r["id"] for r in records]
    assert ids == input_ids(prompts_file), "every prompt exactly once, in input order"
    for record in records:
        assert torch.equal(pixels(out / record["file"]), pixels(reference / record["file"])), record["id"]
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    return records


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_cmd(*argv: str, processes: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "crossgate.cli", "batch", *argv,
    ]  # fmt: skip


def launch_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as handle:
        return subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, env=launch_env(), start_new_session=True
        )


def finish(proc: subprocess.Popen, log: Path, timeout: float = LAUNCH_TIMEOUT) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"accelerate launch timed out after {timeout}s:\n{log.read_text()[-3000:]}")
    return log.read_text()


def kill_group(proc: subprocess.Popen) -> None:
    """kill -9 the launcher's process group and each worker's: torchrun starts every worker in a
    session of its own, so killing the launcher's group alone would leave the workers running."""
    workers = children(proc.pid)
    for pgid in [*workers, proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.01)  # a SIGKILLed process closes its files (drops its lock) asynchronously


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_for_records(out: Path, proc: subprocess.Popen, log: Path, at_least: int) -> None:
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while time.monotonic() < deadline:
        records = out / "records"
        if records.is_dir() and sum(n.endswith(".json") for n in os.listdir(records)) >= at_least:
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)
    kill_group(proc)
    pytest.fail("no records appeared")


def assert_nothing_corrupt(out: Path) -> int:
    """Every visible image decodes completely and every record parses; returns the record count."""
    for png in (out / "images").glob("*.png"):
        with Image.open(png) as image:
            image.load()
    records = list((out / "records").glob("*.json"))
    for record in records:
        json.loads(record.read_text())
    return len(records)


# ---------------------------------------------------------------- input parsing (fast, no model)


def test_text_file_ids_seeds_and_blank_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat\n\n  a dog  \n")
    items = parse_prompts(path, base_seed=7)
    assert [(i.id, i.prompt, i.line) for i in items] == [("000001", "a cat", 1), ("000003", "a dog", 3)]
    assert items[1].seed == default_seed("000003", 7) != default_seed("000003", 8)


def test_jsonl_fields_and_auto_detection(tmp_path):
    path = tmp_path / "p.txt"  # not *.jsonl: detected from the first line
    path.write_text(
        '{"prompt": "x", "id": "a", "seed": 5, "negative_prompt": "y"}\n{"prompt": "z", "id": 3}\n'
    )
    items = parse_prompts(path)
    assert items[0] == PromptItem("a", "x", 5, "y", 1)
    assert (items[1].id, items[1].seed, items[1].negative_prompt) == ("3", default_seed("3", 0), None)


def test_malformed_jsonl_lines_are_all_reported_before_starting(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "ok"}\n{"prompt": "broken"\n{"prompt": "ok2"}\n{"promt": "typo"}\n'
        '{"prompt": "s", "seed": -1}\n{"prompt": "i", "id": "../x"}\n[1]\n'
    )
    with pytest.raises(BatchError) as error:
        parse_prompts(path)
    message = str(error.value)
    assert "5 problem(s)" in message
    for line in ("line 2:", "line 4:", "line 5:", "line 6:", "line 7:"):
        assert line in message
    assert "line 1:" not in message and "line 3:" not in message


def test_duplicate_ids_including_case(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n{"prompt": "c", "id": "X"}\n')
    with pytest.raises(BatchError, match=r"(?s)line 2: duplicate id 'x'.*line 3: duplicate id 'X'") as error:
        parse_prompts(path)
    assert "differs only in case from 'x' on line 1" in str(error.value)


def test_a_seed_of_thousands_of_digits_is_a_problem_of_its_line(tmp_path):
    """Python refuses to turn over 4300 digits into an int: json.loads raised a ValueError traceback."""
    path = tmp_path / "p.jsonl"
    huge = "1" * 5001
    path.write_text(
        f'{{"prompt": "a", "seed": {huge}}}\n{{"prompt": "b", "id": {huge}}}\n'
        f'{{"prompt": "c", "seed": {2**64}}}\n{{"prompt": "d", "seed": {2**64 - 1}}}\n'
        f'{{"prompt": "e", "seed": -{huge}}}\n'
    )
    with pytest.raises(BatchError) as error:
        parse_prompts(path)
    message = str(error.value)
    assert "4 problem(s); nothing was generated" in message
    assert 'line 1: "seed" <an integer of 5001 digits> must be an integer in [0, 2**64 - 1]' in message
    assert 'line 2: "id" <an integer of 5001 digits> is not usable as a file name' in message
    assert f'line 3: "seed" {2**64} must be an integer' in message and "line 5:" in message
    assert "line 4:" not in message  # 2**64 - 1 is the largest seed torch.Generator.manual_seed takes
    path.write_text(f'{{"prompt": "d", "seed": {2**64 - 1}}}\n{{"prompt": "z", "seed": 0}}\n')
    assert [item.seed for item in parse_prompts(path)] == [2**64 - 1, 0]
    torch.Generator().manual_seed(2**64 - 1)  # the bound is torch's
    with pytest.raises((RuntimeError, ValueError)):
        torch.Generator().manual_seed(2**64)


def test_prompts_that_are_not_utf8_text_are_refused(tmp_path):
    """A lone surrogate escape passed validation and crashed the text encoder once the run had started."""
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "a\\ud800b"}\n{"prompt": "ok", "negative_prompt": "x\\udfffy"}\n'
        '{"prompt": "pair \\ud83d\\ude00 is fine"}\n'
    )
    with pytest.raises(BatchError) as error:
        parse_prompts(path)
    message = str(error.value)
    assert "2 problem(s)" in message
    assert 'line 1: "prompt" holds a lone surrogate' in message
    assert 'line 2: "negative_prompt" holds a lone surrogate' in message
    assert "line 3:" not in message
    path.write_text('{"prompt": "pair \\ud83d\\ude00 is fine"}\n')
    assert parse_prompts(path)[0].prompt == "pair \U0001f600 is fine"


def test_a_key_written_twice_is_refused(tmp_path):
    """json keeps the last of two equal keys; unknown keys are refused, so duplicates are too."""
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "a", "prompt": "b"}\n{"prompt": "c", "seed": 1, "seed": 1}\n{"prompt": "d"}\n'
    )
    with pytest.raises(BatchError) as error:
        parse_prompts(path)
    message = str(error.value)
    assert "2 problem(s)" in message
    assert "line 1: key 'prompt' appears twice in one object; write each key once" in message
    assert "line 2: key 'seed' appears twice" in message and "line 3:" not in message


def test_batches_are_fixed_by_position_and_never_mix_negative_prompts():
    items = [PromptItem(str(i), "p", i, "neg" if i in (3, 4) else None, i) for i in range(8)]
    batches = plan_batches(items, 3)
    assert [[i.id for i in b.items] for b in batches] == [["0", "1", "2"], ["3", "4"], ["5", "6", "7"]]


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    first, second = OutputDir(tmp_path), OutputDir(tmp_path)
    first.lock()
    try:
        with pytest.raises(BatchError, match="another crossgate batch run is writing"):
            second.lock(wait_s=0.2)
    finally:
        first.unlock()
    second.lock(wait_s=0.2)  # free again once the holder is gone
    second.unlock()


# ---------------------------------------------------------------- CLI errors


def test_bad_input_errors(tmp_path, model_dir, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    code, _, err = run_cli(capsys, str(empty), *common_args(model_dir, tmp_path / "o1"))
    assert code == 2 and "contains no prompts" in err

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": "b", "id": "000001"}\nnot json\n')
    code, _, err = run_cli(capsys, str(bad), *common_args(model_dir, tmp_path / "o2"))
    assert code == 2 and "line 2: duplicate id '000001'" in err and "line 3: not valid JSON" in err
    assert err.index("line 2:") < err.index("line 3:"), "problems are listed in line order"
    assert not (tmp_path / "o2").exists(), "refused before creating anything"

    good = tmp_path / "good.txt"
    good.write_text("a\n")
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, str(good), *common_args(model_dir, blocker / "out"))
    assert code == 2 and "cannot write to output directory" in err

    for name, text in (
        ("seed", '{"prompt": "a", "seed": ' + "9" * 5001 + "}\n"),
        ("surrogate", '{"prompt": "a\\ud800b"}\n'),
        ("twice", '{"prompt": "a", "prompt": "b"}\n'),
    ):
        bad = tmp_path / f"{name}.jsonl"
        bad.write_text(text)
        code, _, err = run_cli(capsys, str(bad), *common_args(model_dir, tmp_path / f"o-{name}"))
        assert code == 2 and "line 1:" in err and "Traceback" not in err, err
        assert not (tmp_path / f"o-{name}").exists(), "refused before creating anything"

    code, _, err = run_cli(capsys, str(tmp_path / "missing.txt"), *common_args(model_dir, tmp_path / "o3"))
    assert code == 2 and "not found" in err

    code, _, err = run_cli(capsys, str(good), *common_args(tmp_path / "nomodel", tmp_path / "o4"))
    assert code == 2 and "model_index.json" in err


def test_resume_reuses_work_and_refuses_other_settings(tmp_path, model_dir, capsys, restore_threads):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "out"
    args = common_args(model_dir, out, "--threads", "1")
    assert run_cli(capsys, str(prompts), *args)[0] == 0
    before = pixels(out / "images" / "000002.png")

    # An interrupted write: the image landed but not its record, and a stale temporary file.
    (out / "records" / "000002.json").unlink()
    (out / "images" / ".000001.png.tmp-99999").write_bytes(b"\x89PNG half")
    code, stdout, _ = run_cli(capsys, str(prompts), *args)
    assert code == 0 and "1 already done, 1 to generate" in stdout and "removed 1 temporary" in stdout
    assert torch.equal(pixels(out / "images" / "000002.png"), before)
    assert [r["id"] for r in manifest(out)] == ["000001", "000002"]
    assert not list(out.rglob("*.tmp-*"))

    code, stdout, _ = run_cli(capsys, str(prompts), *args)
    assert code == 0 and "2 already done, 0 to generate" in stdout

    code, _, err = run_cli(capsys, str(prompts), *common_args(model_dir, out, "--steps", "3"))
    assert code == 2 and "steps: folder has 8, this run has 3" in err

    prompts.write_text("a red circle\nsomething else\n")  # same id 000002, other prompt
    code, _, err = run_cli(capsys, str(prompts), *args)
    assert code == 2 and "id '000002'" in err and "new ids" in err


def test_with_and_without_tgate(tmp_path, model_dir, prompts_file, reference, capsys, restore_threads):
    out = tmp_path / "plain"
    code, _, _ = run_cli(
        capsys, str(prompts_file), *common_args(model_dir, out, "--threads", "1", "--no-tgate")
    )
    assert code == 0
    plain, gated = manifest(out), manifest(reference)
    assert plain[0]["config"]["tgate"] is False and plain[0]["config"]["resolved_gate"] is None
    assert gated[0]["config"]["tgate"] is True and gated[0]["config"]["resolved_gate"] == 3  # round(0.4 * 8)
    differs = [not torch.equal(pixels(out / r["file"]), pixels(reference / r["file"])) for r in plain]
    assert all(differs), "TGATE (gate 3 of 8 steps) changes every image"


def test_batch_size_changes_images_only_by_rounding(
    tmp_path, model_dir, prompts_file, reference, capsys, restore_threads
):
    """Batched GEMMs round differently from unbatched ones; documented tolerance: 1 level of 255."""
    out = tmp_path / "b1"
    args = [
        "--out",
        str(out),
        "--model",
        str(model_dir),
        "--steps",
        STEPS,
        "--batch-size",
        "1",
        "--threads",
        "1",
    ]
    assert run_cli(capsys, str(prompts_file), *args)[0] == 0
    for record in manifest(out):
        a, b = pixels(out / record["file"]).int(), pixels(reference / record["file"]).int()
        assert (a - b).abs().max() <= 1, record["id"]


def test_exact_mode_is_bit_identical_across_batch_sizes(
    tmp_path, model_dir, prompts_file, capsys, restore_threads
):
    outs = {}
    for size in ("1", "3"):
        outs[size] = tmp_path / f"exact{size}"
        args = [
            "--out",
            str(outs[size]),
            "--model",
            str(model_dir),
            "--steps",
            STEPS,
            "--batch-size",
            size,
            "--threads",
            "1",
            "--exact",
        ]
        assert run_cli(capsys, str(prompts_file), *args)[0] == 0
    records = manifest(outs["1"])
    assert records and [r["id"] for r in records] == [r["id"] for r in manifest(outs["3"])]
    for record in records:
        assert torch.equal(pixels(outs["1"] / record["file"]), pixels(outs["3"] / record["file"])), record[
            "id"
        ]


# ---------------------------------------------------------------- accelerate launch, 2 CPU processes


def test_two_processes_equal_one_process(tmp_path, model_dir, prompts_file, reference):
    out = tmp_path / "out"
    log = tmp_path / "log.txt"
    proc = start(launch_cmd(str(prompts_file), *common_args(model_dir, out)), log)
    text = finish(proc, log)
    assert proc.returncode == 0, text[-3000:]
    assert "on 2 process(es)" in text and "images/s" in text
    records = assert_complete_and_equal(out, reference, prompts_file)
    assert {r["process"]["index"] for r in records} == {0, 1}
    assert all(r["process"]["count"] == 2 for r in records)


@pytest.mark.slow
def test_kill_all_processes_then_resume(
    tmp_path, model_dir, prompts_file, reference, capsys, restore_threads
):
    """kill -9 of the whole process group mid-run; a plain single-process restart completes it."""
    out = tmp_path / "out"
    log = tmp_path / "log.txt"
    proc = start(launch_cmd(str(prompts_file), *common_args(model_dir, out)), log)
    wait_for_records(out, proc, log, at_least=2)
    kill_group(proc)
    done = assert_nothing_corrupt(out)
    assert 2 <= done < 24, f"the kill must land mid-run ({done} done)"

    code, stdout, err = run_cli(capsys, str(prompts_file), *common_args(model_dir, out, "--threads", "1"))
    assert code == 0 and f"{done} already done" in stdout, err[-2000:]
    assert_complete_and_equal(out, reference, prompts_file)


@pytest.mark.slow
def test_kill_one_worker_then_resume_on_two_processes(tmp_path, model_dir, prompts_file, reference):
    """kill -9 of one worker: the launcher stops the other; a 2-process restart completes the run."""
    out = tmp_path / "out"
    log = tmp_path / "log.txt"
    proc = start(launch_cmd(str(prompts_file), *common_args(model_dir, out)), log)
    wait_for_records(out, proc, log, at_least=2)
    workers = children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)
    try:
        proc.wait(timeout=60)
    finally:
        kill_group(proc)
    assert proc.returncode != 0
    done = assert_nothing_corrupt(out)
    assert done < 24, "the kill must land mid-run"

    log2 = tmp_path / "log2.txt"
    proc = start(launch_cmd(str(prompts_file), *common_args(model_dir, out)), log2)
    text = finish(proc, log2)
    assert proc.returncode == 0, text[-3000:]
    assert f"{done} already done" in text
    assert_complete_and_equal(out, reference, prompts_file)


# ---------------------------------------------------------------- how many processes accelerate started


def test_launched_alone_tells_a_fallen_back_launch_from_a_real_one():
    from crossgate.cli.batch import launched_alone

    simple = {"ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert launched_alone(simple)  # accelerate's simple launcher with --num_processes 2: one process
    assert not launched_alone({**simple, "WORLD_SIZE": "2", "RANK": "0"})  # torchrun: the real thing
    assert not launched_alone({"ACCELERATE_MIXED_PRECISION": "no"})  # --num_processes 1
    assert not launched_alone({})  # plain `crossgate batch`


def test_help_says_how_to_get_several_processes_and_auto_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli_main(["batch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--multi_gpu --num_processes N" in text and "starts ONE process" in text
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["batch", "p.txt", "--out", "o", "--gate-step", "auto"])
    assert exit_info.value.code == 2 and "not accepted here" in capsys.readouterr().err


def test_accelerate_launch_without_multi_gpu_runs_one_process_and_crossgate_says_so(tmp_path, model_dir):
    """On a machine without GPUs `accelerate launch --num_processes 2` (no --multi_gpu) starts one
    process, silently; crossgate's batch warns and says how to get two."""
    if torch.cuda.is_available():
        pytest.skip("with GPUs accelerate may start several processes")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    out, log = tmp_path / "out", tmp_path / "log.txt"
    argv = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "crossgate.cli", "batch", str(prompts), *common_args(model_dir, out),
    ]  # fmt: skip
    proc = start(argv, log)
    text = finish(proc, log)
    assert proc.returncode == 0, text[-3000:]
    assert "on 1 process(es)" in text
    assert "started only this one" in text and "--multi_gpu --num_processes N" in text
