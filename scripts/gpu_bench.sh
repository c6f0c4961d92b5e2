#!/usr/bin/env bash
# The whole GPU benchmark table in one prepared run (< 8 minutes on one H100):
#   SD-1.5 UNet @512 and SDXL UNet @1024, random weights, fp16, 25 steps,
#   plain vs crossgate m=10 and m=5 (core), then the peers on SD-1.5 (optional section).
# The GPU machine has torch/transformers/accelerate but no diffusers and no network, so diffusers (and
# the optional peers) come from wheels in .whl/ (scripts/fetch_gpu_wheels.sh downloads them) and
# crossgate itself from src/ via PYTHONPATH. Output (markdown, CSV, PNG, log) goes to "$OUT" if set,
# else ./bench-gpu. At most 7 files are written (the device tool returns 8).
#
#   bash scripts/gpu_bench.sh            # env: OUT, PYTHON, REPEATS (default 7)
# A dry run of the same code path on a CPU machine (seconds, tiny models, wheels force-installed):
#   DEVICE=cpu DTYPE=float32 CORE_MODELS="tiny tiny-sdxl" PEER_MODEL=tiny STEPS=4 REPEATS=1 FORCE_WHEELS=1 \
#     PYTHON=.venv/bin/python bash scripts/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench-gpu}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_bench.log"
PY="${PYTHON:-python3}"
REPEATS="${REPEATS:-7}"
DEVICE="${DEVICE:-cuda}"
DTYPE="${DTYPE:-float16}"
CORE_MODELS="${CORE_MODELS:-sd15 sdxl}"
PEER_MODEL="${PEER_MODEL:-sd15}"
STEPS="${STEPS:-25}"
export PYTHONUNBUFFERED=1
START=$SECONDS
log() { echo "[gpu_bench +$((SECONDS - START))s] $*" | tee -a "$LOG"; }
: >"$LOG"

log "section 1/4: environment and dependencies"
if [ -n "${FORCE_WHEELS:-}" ] || ! "$PY" -c "import diffusers" 2>/dev/null; then
  if ! compgen -G ".whl/diffusers-*.whl" >/dev/null; then
    log "ERROR: diffusers is not installed and .whl/ holds no diffusers wheel; run scripts/fetch_gpu_wheels.sh here and carry .whl"
    exit 1
  fi
  timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/crossgate-site .whl/*.whl 2>&1 | tee -a "$LOG"
  export PYTHONPATH="/tmp/crossgate-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  DEVICE="$DEVICE" timeout 120 "$PY" - <<'EOF'
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

log "section 2/4: core table, SD-1.5 @512 and SDXL @1024, fp16, plain vs crossgate m=10, m=5 (cap 330 s)"
# shellcheck disable=SC2086  # CORE_MODELS is a word list on purpose
timeout 330 "$PY" -m crossgate.cli bench --device "$DEVICE" --dtype "$DTYPE" --model $CORE_MODELS --steps "$STEPS" \
  --gate-step 10 5 --peers --repeats "$REPEATS" --warmup 2 --out "$OUT_DIR/core" 2>&1 | tee -a "$LOG"

log "section 3/4: peers on SD-1.5 @512 (optional, cap 120 s): official tgate v1/v2, DeepCache, ToMe, PAB"
set +e
timeout 120 "$PY" -m crossgate.cli bench --device "$DEVICE" --dtype "$DTYPE" --model "$PEER_MODEL" --steps "$STEPS" \
  --gate-step 10 --peers tgate tgate-v2 deepcache tomesd pab --repeats "$REPEATS" --warmup 2 \
  --out "$OUT_DIR/peers" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
set -e
[ "$status" -eq 0 ] || log "peers section ended with status $status (124 = hit its time cap); core table is unaffected"

log "section 4/4: done; files:"
find "$OUT_DIR" -type f | sort | tee -a "$LOG"
