"""The `crossgate` entry point: lazy command registration, fast help, Ctrl-C, quiet third parties."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest

from crossgate.cli import COMMANDS, build_parser, main


def test_help_lines_match_what_each_command_registers():
    # `crossgate --help` lists COMMANDS without importing the modules; they must say the same.
    assert build_parser().format_help() == build_parser(COMMANDS).format_help()


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], *([command, "--help"] for command in COMMANDS if command != "app")],
)
def test_help_imports_neither_torch_nor_diffusers(argv):
    """Every command's --help is fast: macs and bench name their choices without importing the
    tools that define them (torch), the others import torch inside ``run``."""
    code = (
        "import sys\n"
        "from crossgate.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: crossgate" in result.stdout or "crossgate " in result.stdout


def test_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["nope"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_ctrl_c_in_any_command_is_one_line_and_exit_130(monkeypatch, capsys):
    from crossgate.cli import macs

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(macs, "run", interrupted)
    assert main(["macs"]) == 130
    assert capsys.readouterr().err == "crossgate macs: interrupted\n"


def test_commands_run_with_third_party_noise_silenced_and_restored(monkeypatch, recwarn):
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from crossgate.cli import macs

    seen = {}

    def run(args):
        seen["levels"] = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
        warnings.warn_explicit("noise", UserWarning, "x.py", 1, module="transformers.models.x")
        warnings.warn("deprecated somewhere", FutureWarning, stacklevel=1)
        warnings.warn("crossgate's own", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(macs, "run", run)
    before = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    assert main(["macs"]) == 0
    assert seen["levels"] == (logging.ERROR, logging.ERROR)
    assert (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()) == before
    assert [str(w.message) for w in recwarn] == ["crossgate's own"]


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["generate", "x", "--out", "picture.xyz"], "--out"),
        (["generate", "x", "--gate-step", "0"], "gate"),
        (["calibrate", "--out", "."], "--out"),
    ],
)
def test_argument_mistakes_are_reported_before_torch_is_imported(argv, complaint):
    """A typo costs a fraction of a second: nothing imports torch before the arguments are checked
    (``--device auto`` is resolved when the model loads, not while parsing)."""
    code = (
        "import sys\n"
        "from crossgate.cli import main\n"
        "try:\n"
        f"    code = main({argv!r})\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "assert code == 2, code\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert complaint in result.stderr


def test_choices_named_for_help_equal_the_tools_own():
    """macs and bench write their choices out (so --help imports no torch); they must not drift."""
    from crossgate.cli import bench, macs
    from crossgate.tools import accounting
    from crossgate.tools import bench as bench_tool

    assert tuple(accounting.MODELS) == macs.MODEL_KEYS
    assert set(bench.BENCH_MODELS) == set(bench_tool.BENCH_MODELS)
    assert bench.PEERS == bench_tool.PEERS
    assert bench.MIN_ROUNDS == bench_tool.MIN_ROUNDS


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (
            "calibrate",
            ["(default: 0.05)", "(default: 0.2)", "(default: 0.8)", "(default: crossgate-profile.json)"],
        ),
        (
            "bench",
            ["(default: 25)", "(default: 10 5)", "(default: 3)", "(default: 7.5)", "(default: bench-out)"],
        ),
        ("generate", ["(default: 25)", "(default: out.png)", "(default: 3)"]),
    ],
)
def test_help_shows_defaults(command, shown, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines (also at hyphens)
    missing = [s for s in shown if "".join(s.split()) not in text]
    assert not missing, missing
    assert "(default:None)" not in text and "(default:False)" not in text


def test_import_time_notices_of_torchao_and_torch_are_held_back_while_a_command_runs():
    """torchao (imported by diffusers when installed) logs failed CUDA-kernel loads and torch a pytree
    deprecation at import: a command shows neither; crossgate's own warnings still show."""
    code = (
        "import logging, sys, warnings\n"
        "from crossgate.cli.common import quiet_third_party\n"
        "with quiet_third_party():\n"
        "    from diffusers import DiffusionPipeline\n"
        "    import crossgate.testing\n"
        "    logging.getLogger('torchao').warning('torchao noise')\n"
        "    logging.getLogger('torch.utils._pytree').warning('pytree noise')\n"
        "    logging.getLogger('torchao').error('torchao error')\n"
        "    warnings.warn('crossgate own warning', UserWarning, stacklevel=1)\n"
        "logging.getLogger('torchao').warning('after the command')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert not [line for line in lines if "noise" in line or "Failed to load" in line or "_pytree" in line], (
        lines
    )
    assert any("torchao error" in line for line in lines)
    assert any("crossgate own warning" in line for line in lines)
    assert any("after the command" in line for line in lines)  # levels restored


def test_load_failure_from_the_hub_says_the_cause_and_what_to_do(monkeypatch, capsys):
    """diffusers ends an unreachable-Hub failure with 'check the root cause in the stacktrace above',
    which the CLI does not print: the message carries the cause and what to do instead."""
    from diffusers import DiffusionPipeline

    def offline(*args, **kwargs):
        try:
            raise ConnectionError("Failed to resolve 'huggingface.co'")
        except ConnectionError as cause:
            raise OSError(
                "Cannot load model org/model: the model is not fully cached locally (x) and an error "
                "occurred while trying to fetch metadata from the Hub. Please check out the root cause "
                "in the stacktrace above."
            ) from cause

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", offline)
    assert main(["generate", "x", "--model", "org/model", "--out", "never-written.png"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stacktrace above" not in err
    assert "ConnectionError: Failed to resolve 'huggingface.co'" in err
    assert "local folder" in err and "download" in err


@pytest.mark.parametrize(
    "text", ["10", " 0.4 ", "auto", "AUTO", "1", "1.0", "0", "-2", "1.5", "nan", "ten", ""]
)
def test_cli_and_app_read_a_typed_gate_with_one_parser(text):
    """`--gate-step` and the app's gate box accept and refuse the same texts, with the same words."""
    import argparse

    from crossgate.app.runner import InputError, parse_gate
    from crossgate.cli.common import gate_step_arg

    try:
        expected = parse_gate(text)
    except InputError as refusal:
        with pytest.raises(argparse.ArgumentTypeError) as cli_refusal:
            gate_step_arg(text)
        assert str(cli_refusal.value) == str(refusal)
    else:
        parsed = gate_step_arg(text)
        assert parsed == expected and type(parsed) is type(expected)


def test_one_default_gate():
    from crossgate.app.runner import Settings
    from crossgate.cli import build_parser
    from crossgate.config import DEFAULT_GATE_STEP, TGateConfig
    from crossgate.tools.batch import GenerationSettings

    assert TGateConfig().gate_step == DEFAULT_GATE_STEP == 0.4
    assert Settings("p").gate == DEFAULT_GATE_STEP
    assert GenerationSettings(model="m").gate_step == DEFAULT_GATE_STEP
    batch = build_parser(["batch"]).parse_args(["batch", "p.txt", "--out", "o"])
    assert batch.gate_step == DEFAULT_GATE_STEP
