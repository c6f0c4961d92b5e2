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


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["generate", "--help"], ["calibrate", "--help"]])
def test_help_imports_neither_torch_nor_diffusers(argv):
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
