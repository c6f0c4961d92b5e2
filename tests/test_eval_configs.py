"""``crossgate eval`` configuration specs: v2 self-attention caching, auto gates and profiles."""

from __future__ import annotations

import json

import pytest

from crossgate.config import TGateConfig
from crossgate.tools.quality.runner import RunConfig


@pytest.mark.parametrize(
    ("spec", "expected", "name"),
    [
        ("plain", RunConfig("plain"), "plain"),
        ("10", RunConfig("tgate", 10), "tgate m=10"),
        ("tgate:10", RunConfig("tgate", 10), "tgate m=10"),
        ("tgate:10:k=3", RunConfig("tgate", 10, interval=3), "tgate m=10 k=3"),
        ("TGATE:10:late=3", RunConfig("tgate", 10, late=3), "tgate m=10 late=3"),
        ("tgate:15:k=3:late=2", RunConfig("tgate", 15, interval=3, late=2), "tgate m=15 k=3 late=2"),
        ("null-before:6", RunConfig("null-before", 6), "null-before m=6"),
        ("auto:0.05", RunConfig("auto", tolerance=0.05), "auto tol=0.05"),
    ],
)
def test_parse_specs(spec: str, expected: RunConfig, name: str) -> None:
    parsed = RunConfig.parse(spec)
    assert parsed == expected
    assert parsed.name == name


@pytest.mark.parametrize(
    "spec",
    [
        "tgate",
        "tgate:x",
        "tgate:0",
        "tgate:10:k=0",
        "tgate:10:late=0",
        "tgate:10:j=3",
        "tgate:10:k=3:k=4",
        "tgate:10:k3",
        "null-before:6:k=2",
        "auto",
        "auto:abc",
        "auto:-0.1",
        "auto:nan",
        "auto:0.05:k=2",
        "profile:",
        "bogus:3",
    ],
)
def test_bad_specs_raise_clear_errors(spec: str) -> None:
    with pytest.raises(ValueError, match=r"configuration|gate|interval|tolerance|profile|kind|apply"):
        RunConfig.parse(spec)


def test_tgate_config_mapping() -> None:
    v2 = RunConfig.parse("tgate:10:k=3:late=2").tgate_config()
    assert (v2.gate_step, v2.self_attention_interval, v2.self_attention_interval_after) == (10, 3, 2)
    v1 = RunConfig.parse("tgate:8").tgate_config()
    assert not v1.caches_self_attention and v1.gate_step == 8
    auto = RunConfig.parse("auto:0.02").tgate_config()
    assert auto.is_auto and auto.auto_tolerance == 0.02
    assert RunConfig.parse("auto:0.05").data_dependent and not RunConfig.parse("tgate:5").data_dependent
    with pytest.raises(ValueError, match="not a TGATE"):
        RunConfig.parse("null-after:4").tgate_config()


def test_profile_spec_keeps_path_case_and_loads(tmp_path) -> None:
    path = tmp_path / "My-Profile.json"
    path.write_text(json.dumps({"gate_fraction": 0.4, "layer_settle_steps": {"a.attn2": 5}}))
    config = RunConfig.parse(f"profile:{path}")
    assert config.kind == "profile" and config.profile == str(path)
    assert config.name == "profile My-Profile.json"
    loaded = config.tgate_config()
    assert loaded == TGateConfig.from_profile(path)
    assert loaded.gate_step == 0.4


def test_eval_cli_accepts_new_specs_and_scheduler() -> None:
    import argparse

    from crossgate.cli import eval as eval_command

    parser = argparse.ArgumentParser()
    eval_command.register(parser.add_subparsers())
    args = parser.parse_args(
        ["eval", "--config", "auto:0.05", "--config", "tgate:10:late=3", "--scheduler", "dpm"]
    )
    assert args.config == ["auto:0.05", "tgate:10:late=3"] and args.scheduler == "dpm"
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--scheduler", "nope"])
