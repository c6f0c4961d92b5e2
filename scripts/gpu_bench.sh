#!/usr/bin/env bash
# The whole GPU benchmark in one prepared run that fits a 15-minute device lease (start-up included):
# the command itself is capped at BUDGET seconds (default 560, under the device tool's 600 s per call),
# each section under its own `timeout`, and each section's cap shrinks to what is left of BUDGET.
#
#   1 env       (cap  40 s) environment, versions, wheels from .whl/ (diffusers, tgate, DeepCache, tomesd)
#   2 sd15      (cap  45 s) SD-1.5 UNet @512  } fp16, 25 steps, batch 1, 1 warm-up + 5 rotating rounds,
#   3 sdxl      (cap  90 s) SDXL UNet @1024   } medians with min-max, speed-up, efficiency, peak memory:
#   4 pixart    (cap  60 s) PixArt-Alpha @1024} plain; crossgate m=10, m=5; crossgate v2 (k=5); the official
#                           tgate package at m=10, m=5 and v2; DeepCache; crossgate + DeepCache; diffusers'
#                           CFG-cutoff callback at m=10, m=5 (CFG dropped, cross-attention still computed);
#                           PAB. Rows that do not apply (DeepCache/cutoff on PixArt) say why.
#   5 wan       (cap  50 s) Wan 2.1 T2V 1.3B, 480x832, 17 frames, bf16, 25 steps: plain vs crossgate m=10
#   6 compile   (cap 120 s) torch.compile (inductor) of the SD-1.5 UNet with crossgate: eager vs compiled,
#                           output tolerance, graphs/recompiles/graph breaks, latency, peak memory (a cold
#                           inductor build of ~100 graphs is most of it; progress is recorded every 5 s)
#   7 sd3       (cap  60 s) SD3-medium transformer @512, fp16: plain vs crossgate m=10, m=5 (joint
#                           attention: text stream frozen, CFG dropped)
#   8 flux      (cap  60 s) FLUX.1-dev transformer @512, bf16, no CFG (its default): plain vs crossgate
#                           m=10, m=5 (the text freeze alone)
#   9 offload   (cap  35 s) enable_sequential_cpu_offload() with crossgate in both orders vs on-device
#                           (SD-1.5 @512, 6 steps, m=2)
#   (sum of caps 560 s; expected about 500 s on one H200, of which compiling is the least certain)
#
# Random weights throughout (nothing is downloaded). The GPU machine has torch/transformers/accelerate
# but no diffusers and no network: diffusers and the optional peers come from wheels in .whl/
# (scripts/fetch_gpu_wheels.sh downloads them; carry .whl) and crossgate from src/ via PYTHONPATH.
# Outputs, kept to 5 files so they all come back (the device tool returns 8): $OUT/gpu_bench.log,
# $OUT/results.md (every table), $OUT/results.csv (every row), $OUT/extras.json (sections 6-7) and
# $OUT/bundle.tar.gz (per-section md/csv/png/logs); all rewritten after every section.
#
#   bash scripts/gpu_bench.sh                      # env: OUT, PYTHON, REPEATS (5), WARMUP (1), BUDGET
#   DRY_RUN=1 PYTHON=.venv/bin/python bash scripts/gpu_bench.sh   # CPU, tiny models, same code path
#     (caps x CAP_SCALE=4 there; COMPILE_BACKEND=aot_eager skips inductor's C++ build on a slow CPU)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench-gpu}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
WORK="${WORK:-$(mktemp -d /tmp/crossgate-gpu-bench.XXXXXX)}"
mkdir -p "$WORK"
LOG="$OUT_DIR/gpu_bench.log"
PY="${PYTHON:-python3}"
BUDGET="${BUDGET:-560}"
export PYTHONUNBUFFERED=1
START=$SECONDS
: >"$LOG"
log() { echo "[gpu_bench +$((SECONDS - START))s] $*" | tee -a "$LOG"; }

if [ -n "${DRY_RUN:-}" ]; then
  # Same sections, tiny models, CPU, seconds: checks every code path but measures nothing.
  DEVICE=cpu DTYPE=float32 WAN_DTYPE=float32 STEPS=4 GATES="2 1" WAN_GATE=2 REPEATS="${REPEATS:-1}" WARMUP="${WARMUP:-0}"
  SD15=tiny SDXL=tiny-sdxl PIXART=tiny-pixart WAN=tiny-wan SD_RES=32 SDXL_RES=32 PIXART_RES=64 WAN_ARGS=""
  SD3=tiny-sd3 FLUX=tiny-flux JOINT_RES=32
  EXTRAS_ARGS="--dry-run --device cpu --backend ${COMPILE_BACKEND:-inductor}"
  CAP_SCALE="${CAP_SCALE:-4}" BUDGET="${DRY_BUDGET:-2400}"  # a shared CPU is far slower than the caps assume
else
  DEVICE="${DEVICE:-cuda}" DTYPE="${DTYPE:-float16}" WAN_DTYPE="${WAN_DTYPE:-bfloat16}" STEPS="${STEPS:-25}"
  GATES="${GATES:-10 5}" WAN_GATE="${WAN_GATE:-10}" REPEATS="${REPEATS:-5}" WARMUP="${WARMUP:-1}"
  SD15=sd15 SDXL=sdxl PIXART=pixart-alpha WAN=wan13b SD_RES=512 SDXL_RES=1024 PIXART_RES=1024
  # joint attention (random weights at the real widths, small resolution): SD3-medium, FLUX.1-dev
  SD3=sd3-medium FLUX=flux1-dev JOINT_RES="${JOINT_RES:-512}"
  WAN_ARGS="--resolution ${WAN_RES:-480x832} --frames ${WAN_FRAMES:-17}"
  # reduce-overhead: inductor plus CUDA graphs, one recorded per batch shape (2B before the gate, B after)
  EXTRAS_ARGS="--device $DEVICE --dtype $DTYPE --backend ${COMPILE_BACKEND:-inductor} --mode ${COMPILE_MODE:-reduce-overhead}"
  CAP_SCALE="${CAP_SCALE:-1}"
fi
PEERS="tgate tgate-v2 deepcache crossgate+deepcache cfg-cutoff pab"

# section NAME CAP CMD...: run CMD under `timeout min(CAP x CAP_SCALE, what is left of BUDGET - 10 s)`;
# an argument @BUDGET@ becomes the command's own time budget (cap - 25 s, at least 10 s), so a bench
# stops starting rounds in time and still writes its table.
section() {
  local name=$1 cap=$2 left status arg
  local -a cmd=()
  shift 2
  cap=$((cap * CAP_SCALE))
  left=$((BUDGET - (SECONDS - START) - 10))
  [ "$cap" -gt "$left" ] && cap=$left
  if [ "$cap" -lt 15 ]; then
    log "section $name SKIPPED: ${left}s of the ${BUDGET}s budget left"
    return 0
  fi
  for arg in "$@"; do
    if [ "$arg" = "@BUDGET@" ]; then cmd+=("$((cap - 25 > 10 ? cap - 25 : 10))"); else cmd+=("$arg"); fi
  done
  log "section $name (cap ${cap}s): ${cmd[*]}"
  timeout --kill-after=5 "$cap" "${cmd[@]}" >"$WORK/$name.log" 2>&1
  status=$?
  tail -n 40 "$WORK/$name.log" >>"$LOG"
  [ "$status" -eq 124 ] && log "section $name hit its ${cap}s cap (what it wrote is kept)"
  log "section $name ended with status $status"
  collect
  return 0
}

# collect: rebuild the returned files from everything written so far
collect() {
  {
    echo "# crossgate GPU benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    for name in sd15 sdxl pixart wan sd3 flux; do [ -f "$WORK/$name/bench.md" ] && cat "$WORK/$name/bench.md" && echo; done
    [ -f "$WORK/extras/extras.md" ] && cat "$WORK/extras/extras.md"
  } >"$OUT_DIR/results.md"
  local first=1
  : >"$OUT_DIR/results.csv"
  for name in sd15 sdxl pixart wan sd3 flux; do
    csv="$WORK/$name/bench.csv"
    [ -f "$csv" ] || continue
    if [ $first -eq 1 ]; then cat "$csv"; first=0; else tail -n +2 "$csv"; fi
  done >>"$OUT_DIR/results.csv"
  [ -f "$WORK/extras/extras.json" ] && cp "$WORK/extras/extras.json" "$OUT_DIR/extras.json"
  tar -czf "$OUT_DIR/bundle.tar.gz" -C "$WORK" . 2>/dev/null
}

bench() {  # bench NAME MODEL RESOLUTION DTYPE GATES PEERS [extra args]: one model's table
  local name=$1 model=$2 res=$3 dtype=$4 gates=$5 peers=$6 cap=$7
  shift 7
  # shellcheck disable=SC2086  # word lists on purpose
  section "$name" "$cap" "$PY" -m crossgate.cli bench --device "$DEVICE" --dtype "$dtype" --model "$model" \
    --resolution "$res" --steps "$STEPS" --gate-step $gates --peers $peers --repeats "$REPEATS" \
    --warmup "$WARMUP" --time-budget @BUDGET@ --out "$WORK/$name" "$@"
}

log "section env: environment and dependencies (work folder $WORK)"
if [ -z "${DRY_RUN:-}" ] && { [ -n "${FORCE_WHEELS:-}" ] || ! "$PY" -c "import diffusers" 2>/dev/null; }; then
  if ! compgen -G ".whl/diffusers-*.whl" >/dev/null; then
    log "ERROR: diffusers is not installed and .whl/ holds no diffusers wheel; run scripts/fetch_gpu_wheels.sh here and carry .whl"
    exit 1
  fi
  timeout 25 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/crossgate-site .whl/*.whl 2>&1 | tee -a "$LOG"
  export PYTHONPATH="/tmp/crossgate-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  DEVICE="$DEVICE" timeout 15 "$PY" - <<'EOF'
import importlib, os, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
for name in ("diffusers", "transformers", "accelerate", "crossgate", "tgate", "DeepCache", "tomesd", "matplotlib"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')} from {module.__file__}")
    except Exception as error:  # noqa: BLE001 -- report, do not stop: peers are optional
        print(f"{name}: not importable ({type(error).__name__}: {error})")
assert os.environ["DEVICE"] != "cuda" or torch.cuda.is_available(), "torch sees no CUDA device"
import crossgate.tools.bench  # noqa: F401 -- fail here, not mid-benchmark, if imports are broken
EOF
} 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || log "WARNING: environment check failed (see above)"

bench sd15 "$SD15" "$SD_RES" "$DTYPE" "$GATES" "$PEERS" 45
bench sdxl "$SDXL" "$SDXL_RES" "$DTYPE" "$GATES" "$PEERS" 90
bench pixart "$PIXART" "$PIXART_RES" "$DTYPE" "$GATES" "$PEERS" 60
# shellcheck disable=SC2086
section wan 50 "$PY" -m crossgate.cli bench --device "$DEVICE" --dtype "$WAN_DTYPE" --model "$WAN" $WAN_ARGS \
  --steps "$STEPS" --gate-step "$WAN_GATE" --peers --repeats "$REPEATS" --warmup "$WARMUP" --time-budget @BUDGET@ \
  --out "$WORK/wan"
# shellcheck disable=SC2086
section compile 120 "$PY" scripts/gpu_extras.py --section compile $EXTRAS_ARGS --time-budget @BUDGET@ --out "$WORK/extras"
# joint attention: the text-stream freeze and the CFG drop (FLUX.1-dev: no CFG by default, bf16)
bench sd3 "$SD3" "$JOINT_RES" "$DTYPE" "$GATES" "cfg-cutoff" 60
bench flux "$FLUX" "$JOINT_RES" "$WAN_DTYPE" "$GATES" "cfg-cutoff" 60
# shellcheck disable=SC2086
section offload 35 "$PY" scripts/gpu_extras.py --section offload $EXTRAS_ARGS --time-budget @BUDGET@ --out "$WORK/extras"

log "done in $((SECONDS - START))s; files in $OUT_DIR:"
collect
find "$OUT_DIR" -type f | sort | tee -a "$LOG"
