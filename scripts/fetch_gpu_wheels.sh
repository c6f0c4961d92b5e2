#!/usr/bin/env bash
# Downloads the pure-Python wheels scripts/gpu_bench.sh installs on the GPU machine (which has torch,
# transformers and accelerate but no diffusers and no network) into .whl/ (git-ignored).
# Peers (tgate, DeepCache, tomesd) are optional: the bench marks them "not installed" without them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
# One version of each package only (two versions of one name stop the install there).
for spec in diffusers==0.42.1 importlib_metadata tgate==1.0.0 DeepCache==0.1.1 tomesd==0.1.3; do
  name=${spec%%==*}
  if compgen -G ".whl/${name}-*.whl" >/dev/null; then
    echo "have $(ls .whl/${name}-*.whl)"
    continue
  fi
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl "$spec"
done
ls -l .whl
