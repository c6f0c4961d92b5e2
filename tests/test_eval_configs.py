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
        # the frontier study's configurations (docs/quality-frontier.md)
        ("tgate:10:w=1", RunConfig("tgate", 10, guidance=1.0), "tgate m=10 w=1"),
        ("tgate:10:w=1:d=0.8", RunConfig("tgate", 10, guidance=1.0, decay=0.8), "tgate m=10 w=1 d=0.8"),
        (
            "tgate:10:w=1:ws=eps",
            RunConfig("tgate", 10, guidance=1.0, schedule="eps"),
            "tgate m=10 w=1 ws=eps",
        ),
        ("tgate:15:dc=3", RunConfig("tgate", 15, deepcache=3), "tgate m=15 dc=3"),
        ("tgate:10:dca=5", RunConfig("tgate", 10, deepcache=1, deepcache_after=5), "tgate m=10 dca=5"),
        (
            "tgate:15:dc=2:dca=5",
            RunConfig("tgate", 15, deepcache=2, deepcache_after=5),
            "tgate m=15 dc=2 dca=5",
        ),
        ("deepcache:3", RunConfig("deepcache", deepcache=3), "deepcache dc=3"),
        ("cfg-cutoff:10", RunConfig("cfg-cutoff", 10), "cfg-cutoff m=10"),
        (
            "cfg-cutoff:10:w=1:ws=eps",
            RunConfig("cfg-cutoff", 10, guidance=1.0, schedule="eps"),
            "cfg-cutoff m=10 w=1 ws=eps",
        ),
        ("cache-only:10", RunConfig("cache-only", 10), "cache-only m=10"),
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
        "tgate:10:w=-1",
        "tgate:10:d=0",
        "tgate:10:d=1.5",
        "tgate:10:w=1:ws=sigma",
        "tgate:10:ws=eps",
        "tgate:10:dc=0",
        "null-after:5:w=1",
        "cache-only:5:w=1",
        "cache-only:5:dc=3",
        "cfg-cutoff:5:dca=3",
        "deepcache",
        "deepcache:0",
        "deepcache:3:w=1",
        "cfg-cutoff",
    ],
)
def test_bad_specs_raise_clear_errors(spec: str) -> None:
    with pytest.raises(
        ValueError, match=r"configuration|gate|interval|tolerance|profile|kind|apply|w=|ws=|dc=|deepcache"
    ):
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


def test_kept_guidance_specs_map_to_the_engine_or_the_study_hook() -> None:
    engine = RunConfig.parse("tgate:10:w=1:d=0.8")
    config = engine.tgate_config()
    assert (config.guidance_after_gate, config.guidance_after_gate_decay) == (1.0, 0.8)
    assert engine.guidance_schedule() is None  # the engine keeps the guidance itself
    eps = RunConfig.parse("tgate:10:w=1:d=0.8:ws=eps")
    assert eps.tgate_config().guidance_after_gate == 0.0  # the study hook does, not the engine
    schedule = eps.guidance_schedule()
    assert schedule is not None and (schedule.weight, schedule.decay, schedule.kind) == (1.0, 0.8, "eps")
    cutoff = RunConfig.parse("cfg-cutoff:10:w=0.5")
    assert cutoff.guidance_schedule() is not None
    with pytest.raises(ValueError, match="not a TGATE"):
        cutoff.tgate_config()


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
