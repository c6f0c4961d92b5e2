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
