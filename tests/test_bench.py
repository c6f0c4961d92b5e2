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
    assert list(PEER_REGISTRY)[:5] == ["tgate", "tgate-v2", "deepcache", "tomesd", "pab"]

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
}


@pytest.mark.parametrize("peer", sorted(PEER_MODULES))
def test_peer_is_fully_removed_after_its_run(peer: str) -> None:
    """A peer's disable() must leave the pipeline exactly as plain, or later rows would be unfair."""
    module = PEER_MODULES[peer]
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed")
    pipe = random_pipeline("tiny")
    before = _latents(pipe)
    variant = next(
        v for v in build_variants(pipe, [2], [peer]) if v.name.split()[0] not in ("plain", "crossgate")
    )
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
