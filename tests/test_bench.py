"""Smoke tests of the benchmark code path on the tiny pipeline (seconds; no timing assertions)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from crossgate.cli import main
from crossgate.tools.accounting import CallMeter, Schedule, image_macs
from crossgate.tools.bench import (
    PEER_REGISTRY,
    BenchError,
    BenchReport,
    PeerRequest,
    Result,
    Variant,
    build_variants,
    crossgate_variant,
    markdown,
    random_pipeline,
    register_peer,
    run_bench,
)

STEPS = 4
KWARGS = dict(prompt="a red cat", num_inference_steps=STEPS, height=32, width=32, output_type="latent")


def _latents(pipe) -> torch.Tensor:
    return pipe(**KWARGS, generator=torch.Generator().manual_seed(0)).images


def test_run_bench_counts_macs_and_reports_ratios() -> None:
    pipe = random_pipeline("tiny")

    def broken(_kwargs):
        raise RuntimeError("peer exploded")

    variants = [
        Variant("plain"),
        crossgate_variant(pipe, 2),
        Variant("missing peer", unavailable="not installed"),
        Variant("broken peer", call=broken),
    ]
    report = run_bench(pipe, variants, KWARGS, repeats=1, log=lambda _: None, model="tiny")
    rows = {row["config"]: row for row in report.rows()}

    with CallMeter(pipe) as meter:
        _latents(pipe)
    call = meter.call_macs()
    assert report.results[0].macs == image_macs(call, Schedule.plain(STEPS))
    assert report.results[1].macs == image_macs(call, Schedule.tgate(STEPS, 2))

    gated = rows["crossgate m=2"]
    assert gated["runs"] == 1
    assert gated["predicted_speedup"] == pytest.approx(report.results[0].macs / report.results[1].macs)
    assert gated["efficiency"] == pytest.approx(gated["speedup"] / gated["predicted_speedup"])
    assert rows["missing peer"]["note"] == "not installed" and rows["missing peer"]["runs"] == 0
    assert "peer exploded" in rows["broken peer"]["note"] and rows["broken peer"]["speedup"] is None
    table = markdown([report])
    assert "| crossgate m=2 |" in table and "peer exploded" in table
    assert gated["caveat"] == "1 round" and gated["min_s"] == gated["max_s"] == gated["median_s"]
    assert rows["missing peer"]["caveat"] == ""  # nothing was timed


def _report(times: list[float], warmup: int = 1) -> BenchReport:
    plain = Result("plain", times=[2 * t for t in times], macs=200, warmup=warmup)
    gated = Result("crossgate m=2", times=list(times), macs=100, warmup=warmup)
    return BenchReport("tiny", "32px", [plain, gated, Result("missing", error="not installed")])


def test_table_flags_rows_timed_too_little() -> None:
    """A 1-round or warm-up-less speed-up is marked in the table and footnoted, with its spread."""
    measured = markdown([_report([0.9, 1.0, 1.3])])
    assert "†" not in measured
    assert "| crossgate m=2 | 1.000 | 0.900–1.300 | 3 | 2.000x |" in measured
    one_round = markdown([_report([1.0])])
    assert "| crossgate m=2 | 1.000 | 1.000–1.000 | 1† | 2.000x† |" in one_round
    assert "| missing | - | - | 0 | - |" in one_round
    footnote = one_round.strip().splitlines()[-1]
    assert footnote.startswith("† indicative only") and "1 round" in footnote and "--repeats 3" in footnote
    cold = markdown([_report([0.9, 1.0, 1.3], warmup=0)])
    assert "| 3† | 2.000x† |" in cold and "no warm-up" in cold
    row = _report([1.0, 1.2], warmup=0).rows()[1]
    assert row["caveat"] == "2 rounds, no warm-up" and (row["min_s"], row["max_s"]) == (1.0, 1.2)


def test_peer_registry_builds_registered_peers_in_order() -> None:
    pipe = random_pipeline("tiny")
    assert list(PEER_REGISTRY)[:7] == [
        "tgate",
        "tgate-v2",
        "deepcache",
        "tomesd",
        "pab",
        "crossgate+deepcache",
        "cfg-cutoff",
    ]

    @register_peer("test-peer", counterpart=lambda r: Variant(f"crossgate twin m={r.gate}"))
    def build(request: PeerRequest) -> Variant:
        return Variant(f"test peer m={request.gate},k={request.v2_interval}")

    try:
        names = [v.name for v in build_variants(pipe, [3, 2], ["test-peer"], v2_interval=4)]
        assert names == ["plain", "crossgate m=3", "crossgate m=2", "crossgate twin m=3", "test peer m=3,k=4"]
        with pytest.raises(ValueError, match="already registered"):
            register_peer("test-peer")(build)
    finally:
        PEER_REGISTRY.pop("test-peer")
    v2 = [v.name for v in build_variants(pipe, [2], ["tgate-v2"])]
    assert v2[:3] == ["plain", "crossgate m=2", "crossgate v2 m=2,k=5"] and v2[3].startswith("tgate pkg v2")


PEER_MODULES = {
    "tgate": "tgate",
    "tgate-v2": "tgate",
    "deepcache": "DeepCache",
    "tomesd": "tomesd",
    "pab": None,
    "crossgate+deepcache": "DeepCache",
    "cfg-cutoff": None,
}


@pytest.mark.parametrize("peer", sorted(PEER_MODULES))
def test_peer_is_fully_removed_after_its_run(peer: str) -> None:
    """A peer's disable() must leave the pipeline exactly as plain, or later rows would be unfair."""
    module = PEER_MODULES[peer]
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed")
    pipe = random_pipeline("tiny")
    before = _latents(pipe)
    variant = build_variants(pipe, [2], [peer])[-1]  # the peer's own row comes last
    assert variant.unavailable is None
    variant.enable()
    try:
        call = variant.call or (lambda kw: pipe(**kw))
        gated = call(dict(KWARGS, generator=torch.Generator().manual_seed(0))).images
    finally:
        variant.disable()
    assert gated.shape == before.shape
    assert torch.equal(_latents(pipe), before)


def test_official_tgate_does_the_same_work_as_crossgate() -> None:
    if importlib.util.find_spec("tgate") is None:
        pytest.skip("tgate not installed")
    pipe = random_pipeline("tiny")
    variants = build_variants(pipe, [2], ["tgate"])
    # warmup=0: the MACs are counted in the first (timed) round instead of a warm-up
    report = run_bench(pipe, variants, KWARGS, repeats=1, warmup=0, log=lambda _: None)
    macs = {r.name: r.macs for r in report.results}
    assert macs["crossgate m=2"] == macs["tgate pkg m=2"] < macs["plain"]
    assert all(len(r.times) == 1 for r in report.results)


def test_bad_peer_and_model_are_rejected() -> None:
    with pytest.raises(BenchError, match="unknown peer"):
        build_variants(random_pipeline("tiny"), [2], ["nope"])
    with pytest.raises(BenchError, match="unknown bench model"):
        random_pipeline("sd99")


def test_cli_bench_writes_table_csv_and_chart(tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    args = ["bench", "--model", "tiny", "--steps", "2", "--gate-step", "1", "--repeats", "1", "--quiet"]
    assert main([*args, "--peers", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| crossgate m=1 |" in text
    assert (out / "bench.md").read_text().count("| plain |") == 1
    assert (out / "bench.csv").read_text().startswith("model,config,median_s")
    if importlib.util.find_spec("matplotlib"):
        assert (out / "bench.png").stat().st_size > 0


def test_cli_bench_rejects_cuda_without_gpu(capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "--model", "tiny", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_per_gate_peers_get_a_row_per_gate() -> None:
    pipe = random_pipeline("tiny")
    names = [v.name for v in build_variants(pipe, [3, 2], ["cfg-cutoff", "tgate"])]
    assert names[:3] == ["plain", "crossgate m=3", "crossgate m=2"]
    assert names[3:5] == ["CFG cutoff m=3", "CFG cutoff m=2"]
    assert [n.split(" (")[0] for n in names[5:]] == ["tgate pkg m=3", "tgate pkg m=2"]


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_cfg_cutoff_drops_cfg_after_the_gate_but_computes_cross_attention(model: str) -> None:
    """The ablation runs batch 2 for m steps, then batch 1 with every cross-attention computed."""
    pipe = random_pipeline(model)
    steps, gate = 4, 2
    variant = build_variants(pipe, [gate], ["cfg-cutoff"])[-1]
    assert variant.name == "CFG cutoff m=2" and variant.call is not None
    batches: list[int] = []
    handle = pipe.unet.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    try:
        with CallMeter(pipe) as meter:
            variant.call(dict(KWARGS, num_inference_steps=steps))
    finally:
        handle.remove()
    assert batches == [2] * gate + [1] * (steps - gate)
    call = meter.call_macs()
    cutoff = Schedule("cutoff", tuple(batches), (True,) * steps)
    assert meter.executed == image_macs(call, cutoff) > image_macs(call, Schedule.tgate(steps, gate))
    assert pipe.guidance_scale == 0.0  # the callback's mark; the next call sets its own again
    _latents(pipe)
    assert pipe.guidance_scale > 1


def test_cfg_cutoff_is_unavailable_where_the_pipeline_has_no_callback() -> None:
    pipe = random_pipeline("tiny-pixart")
    variant = build_variants(pipe, [2], ["cfg-cutoff"])[-1]
    assert variant.unavailable and "PixArtAlphaPipeline" in variant.unavailable


def test_peak_memory_column_appears_with_cuda_numbers() -> None:
    report = _report([1.0, 1.1, 1.2])
    assert "peak MiB" not in markdown([report])
    report.results[0].peak_bytes, report.results[1].peak_bytes = 3 * 2**20, 2 * 2**20
    table = markdown([report])
    assert "| efficiency | peak MiB | note |" in table
    assert "| 1.000 | 3 |" in table and "| missing | - | - | 0 | - | - | -x | - | - |" in table


def test_cli_bench_video_and_transformer_models_smoke(tmp_path, capsys) -> None:
    """The Wan 2.1 1.3B bench row (real widths, one layer, a tiny clip) and tiny PixArt/Wan rows run
    through the CLI with their peers; every configuration gets a timed row or its reason."""
    out = tmp_path / "bench"
    common = ["--steps", "2", "--gate-step", "1", "--repeats", "1", "--warmup", "0", "--quiet"]
    wan = ["bench", "--model", "wan13b", "--layers", "1", "--resolution", "32", "--frames", "5", *common]
    assert main([*wan, "--peers", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "### wan13b (32px, 5 frames, 2 steps, float32, cpu, 1 layers (smoke run, not the real model))" in text
    )
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert {"| plain", "| crossgate m=1"} <= set(rows)
    assert "| - |" not in rows["| crossgate m=1"].split("x |")[0]  # timed, with a speed-up
    tiny = ["bench", "--model", "tiny-wan", "tiny-pixart", *common, "--out", str(out)]
    assert main([*tiny, "--peers", "pab", "cfg-cutoff", "tgate"]) == 0
    text = capsys.readouterr().out
    assert "### tiny-wan (16px, 5 frames," in text and "### tiny-pixart (64px," in text
    assert text.count("| crossgate m=1 | ") == 2
    assert "| CFG cutoff m=1 | - |" in text  # unavailable on both, with the reason
    assert main(["bench", "--model", "sd15", "--layers", "1", "--out", str(out)]) == 2
    assert "--layers applies to" in capsys.readouterr().err


def test_time_budget_stops_starting_rounds_and_says_so() -> None:
    import time

    pipe = random_pipeline("tiny")
    variants = [
        Variant("a", call=lambda _kw: time.sleep(0.05)),
        Variant("b", call=lambda _kw: time.sleep(0.05)),
    ]
    report = run_bench(pipe, variants, KWARGS, repeats=10, warmup=1, log=lambda _: None, time_budget=0.25)
    rounds = {len(r.times) for r in report.results}
    assert len(rounds) == 1 and 1 <= rounds.pop() < 10
    assert "time budget:" in report.setting and "of 10 rounds" in report.setting
    full = run_bench(pipe, variants[:1], KWARGS, repeats=2, warmup=0, log=lambda _: None, time_budget=60)
    assert len(full.results[0].times) == 2 and "time budget" not in full.setting


def test_rows_whose_spread_covers_the_difference_they_are_compared_on_are_marked() -> None:
    """A row whose min-max overlaps its baseline's, or a row doing the same MACs, is marked: the run
    did not resolve that difference (v1 m=2 and v2 m=2,k=5 once ran the same MACs at 1.51x vs 1.36x)."""
    plain = Result("plain", times=[2.0, 2.1, 2.3], macs=200, warmup=1)
    v1 = Result("crossgate m=2", times=[1.30, 1.40, 1.55], macs=100, warmup=1)
    v2 = Result("crossgate v2 m=2,k=5", times=[1.45, 1.50, 1.60], macs=100, warmup=1)
    slow = Result("peer", times=[1.9, 2.2, 2.4], macs=150, warmup=1)  # overlaps plain
    apart = Result(
        "fast", times=[0.5, 0.55, 0.6], macs=100, warmup=1
    )  # same MACs as v1 and v2, clearly faster
    report = BenchReport("tiny", "32px", [plain, v1, v2, slow, apart])
    rows = {row["config"]: row for row in report.rows()}
    assert rows["crossgate m=2"]["unresolved"] == "crossgate v2 m=2,k=5"
    assert rows["crossgate v2 m=2,k=5"]["unresolved"] == "crossgate m=2"
    assert rows["peer"]["unresolved"] == "plain"
    assert rows["fast"]["unresolved"] == "" and rows["plain"]["unresolved"] == ""
    table = markdown([report])
    assert "| crossgate m=2 | 1.400 | 1.300–1.550 | 3 | 1.500x‡ |" in table
    assert "within the spread of crossgate v2 m=2,k=5 |" in table
    assert "| fast | 0.550 | 0.500–0.600 | 3 | 3.818x |" in table
    assert table.count("‡ not resolved by this run") == 1
    # the speed-up's spread: min-max of the per-round ratios (rounds are paired: they alternate)
    assert rows["crossgate m=2"]["speedup_min"] == pytest.approx(min(2.0 / 1.3, 2.1 / 1.4, 2.3 / 1.55))
    assert rows["crossgate m=2"]["speedup_max"] == pytest.approx(max(2.0 / 1.3, 2.1 / 1.4, 2.3 / 1.55))
    assert rows["plain"]["speedup_min"] is None


def test_table_and_chart_record_the_load_and_the_spread(tmp_path, monkeypatch) -> None:
    import matplotlib.axes

    from crossgate.tools.bench import write_chart

    report = _report([0.9, 1.0, 1.3])
    report.load = (1.5, 0.75)
    assert "### tiny (32px), load average 1.50 -> 0.75 on" in markdown([report])
    bars = []
    real_bar = matplotlib.axes.Axes.bar

    def bar(self, *args, **kwargs):
        bars.append(kwargs)
        return real_bar(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", bar)
    assert write_chart([report], tmp_path / "bench.png")
    measured = next(b for b in bars if str(b.get("label", "")).startswith("measured"))
    low, high = measured["yerr"]
    assert low[1] == pytest.approx(2.0 - 2.0) and high[1] == pytest.approx(0.0)  # paired ratios all 2.0
    report.results[1].times = [0.8, 1.0, 1.3]  # ratios 2.25, 2.0, 2.0
    bars.clear()
    write_chart([report], tmp_path / "bench.png")
    low, high = next(b for b in bars if str(b.get("label", "")).startswith("measured"))["yerr"]
    assert high[1] == pytest.approx(2.25 - 2.0) and low[1] == pytest.approx(0.0)


def test_run_bench_records_the_machine_load() -> None:
    pipe = random_pipeline("tiny")
    report = run_bench(pipe, [Variant("plain")], KWARGS, repeats=1, warmup=0, log=lambda _: None)
    assert report.load is not None and report.load[0] is not None and report.load[0] >= 0


def test_cli_bench_header_has_the_load(tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    args = ["bench", "--model", "tiny", "--steps", "2", "--gate-step", "1", "--repeats", "1", "--quiet"]
    assert main([*args, "--peers", "--out", str(out), "--threads", "1"]) == 0
    text = (out / "bench.md").read_text()
    assert "load average" in text.splitlines()[0] and "CPUs" in text.splitlines()[0]
    assert "### tiny (32px, 2 steps, float32, cpu), load average" in text


@pytest.mark.parametrize(
    ("plain", "gated", "warmed", "short", "described"),
    [
        ([2.0], [1.0], True, "2.00x, indicative (1 run)", "2.00x, indicative (1 run)"),
        (
            [2.0, 2.2, 2.4],
            [1.0, 1.0, 1.2],
            True,
            "2.20x, median of 3 (2.00-2.20x)",
            "2.20x (median of 3 alternating rounds after a warm-up; per round 2.00-2.20x)",
        ),
        ([2.0, 2.2], [1.0, 1.0], True, "2.10x, indicative, median of 2 (2.00-2.20x)", None),
        ([2.0, 2.2, 2.4], [1.0, 1.0, 1.2], False, "2.20x, indicative, median of 3 (2.00-2.20x)", None),
    ],
)
def test_timing_never_reads_as_a_bare_single_run_ratio(plain, gated, warmed, short, described) -> None:
    from crossgate.tools.bench import Timing

    timing = Timing(tuple(plain), tuple(gated), warmed=warmed)
    assert timing.short() == short
    if described is not None:
        assert timing.describe() == described
    assert timing.indicative == (len(plain) < 3 or not warmed)


def test_joint_attention_models_get_crossgate_rows_with_counted_savings(tmp_path, capsys) -> None:
    common = ["--steps", "4", "--gate-step", "2", "--repeats", "1", "--warmup", "0", "--quiet"]
    argv = ["bench", "--model", "tiny-sd3", "tiny-flux", *common, "--out", str(tmp_path / "b")]
    assert main([*argv, "--peers", "tgate"]) == 0
    text = capsys.readouterr().out
    assert "### tiny-sd3 (32px," in text and "### tiny-flux (32px," in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| crossgate m=2 | ")]
    assert len(rows) == 2
    for row in rows:  # the counted MACs speed-up: CFG drop (SD3) and the text freeze (both)
        assert float(row[6].rstrip("x")) > 1.2
