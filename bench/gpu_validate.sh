#!/usr/bin/env bash
# gpu_validate.sh -- validate gpucnn on a machine with an NVIDIA GPU, in one call:
#
#     bash bench/gpu_validate.sh                      # current python, report in gpu_validate_<time>/
#     bash bench/gpu_validate.sh --out DIR --torch    # also install/compare against PyTorch
#     bash bench/gpu_validate.sh --venv .venv-gpu     # create/use a virtualenv first
#     bash bench/gpu_validate.sh --no-install         # offline: use what is installed
#
# From a session with a lent GPU machine (no network there), run from the repository root:
#     bash bench/gpu_validate.sh --no-install --out "$OUT/gpu_validate"
#
# Steps (each one logs to DIR/<step>.log; a failing step does not stop the others):
#   env      nvidia-smi, `python -m gpucnn info`, package versions
#   install  pip install -e ".[cudaXX,test,bench]" (XX from the driver's CUDA version) and torch
#            with --torch; only what does not import already; skipped with --no-install
#   kernels  python -m gpucnn.toolchain (NVRTC sm_80/sm_90, plus nvcc when present) -> JSON
#   attrs    the driver's view of every compiled kernel (registers, local memory, max threads
#            per block) next to the static report's numbers for this GPU's architecture
#   tests    GPUCNN_CUDA_POISON=1 pytest -m "not slow" --device-backend cuda tests/
#            (the kernel equivalence suite on the GPU, plus the `gpu`-marked tests; the
#            compile gates are left to the kernels step)
#   bench    python -m gpucnn bench --backend cuda [--compare torch] --json DIR/bench.json
#            (tolerated when the bench CLI is absent)
# Then DIR/summary.md. Exit status: 0 when kernels + tests passed, 1 otherwise, 2 on bad usage
# or when no NVIDIA GPU is visible.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
OUT=""
VENV=""
TORCH=0
INSTALL=1
PYTEST_EXTRA=()
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    --torch) TORCH=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    --pytest-args) read -r -a PYTEST_EXTRA <<< "$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_validate.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
OUT=${OUT:-"$ROOT/gpu_validate_$(date -u +%Y%m%dT%H%M%SZ)"}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.md"
declare -A STATUS
STEPS=()

log() { echo "== $*" | tee -a "$OUT/gpu_validate.log"; }

# run_step NAME CMD...: runs CMD, output to $OUT/NAME.log (and the console), records rc.
run_step() {
  local name=$1; shift
  local t0=$SECONDS
  log "$name: $*"
  "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  STATUS[$name]="$rc $((SECONDS - t0))"
  STEPS+=("$name")
  log "$name: exit $rc after $((SECONDS - t0)) s"
  return $rc
}

# ---- python ---------------------------------------------------------------------------------
PY=${PYTHON:-python3}
if [ -n "$VENV" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" || { echo "cannot create venv $VENV" >&2; exit 2; }
  fi
  PY="$VENV/bin/python"
fi
log "python: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

# ---- the GPU --------------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_validate.sh: no NVIDIA GPU visible (nvidia-smi missing or failing); nothing to" \
       "validate. The CPU-side checks are: pytest tests/ and python -m gpucnn.toolchain" >&2
  echo "# gpucnn GPU validation: no GPU visible on $(hostname) at $(date -u)" > "$SUMMARY"
  exit 2
fi
DRIVER_CUDA=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\)\.\([0-9]*\).*/\1/p' | head -1)
CUDA_EXTRA=cuda12
[ "${DRIVER_CUDA:-12}" -ge 13 ] 2>/dev/null && CUDA_EXTRA=cuda13

env_step() {
  nvidia-smi
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm \
    --format=csv
  "$PY" -m gpucnn info || true
  "$PY" -m pip list 2>/dev/null | grep -i -E '^(cupy|numpy|torch|nvidia-|pytest)' || true
  echo "CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-~/.cupy/kernel_cache (default)}"
}
run_step env env_step

# ---- install --------------------------------------------------------------------------------
install_step() {
  local rc=0
  if ! "$PY" -c 'import gpucnn, sys; sys.exit(0 if gpucnn.__file__.startswith(sys.argv[1]) else 1)' \
       "$ROOT" 2>/dev/null; then
    "$PY" -m pip install -q -e ".[$CUDA_EXTRA,test,bench]" || rc=1
  fi
  "$PY" -c 'import cupy' 2>/dev/null || "$PY" -m pip install -q "cupy-${CUDA_EXTRA}x" || rc=1
  "$PY" -c 'import pynvml' 2>/dev/null || "$PY" -m pip install -q nvidia-ml-py || rc=1
  "$PY" -c 'import pytest' 2>/dev/null || "$PY" -m pip install -q pytest || rc=1
  if [ "$TORCH" = 1 ]; then
    "$PY" -c 'import torch' 2>/dev/null || "$PY" -m pip install -q torch || rc=1
  fi
  return $rc
}
if [ "$INSTALL" = 1 ]; then
  run_step install install_step
else
  log "install: skipped (--no-install)"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# ---- static kernel report -------------------------------------------------------------------
kernels_step() {
  local nvcc_flag=()
  command -v nvcc >/dev/null 2>&1 && nvcc_flag=(--nvcc)
  "$PY" -m gpucnn.toolchain ${nvcc_flag[@]+"${nvcc_flag[@]}"} --json "$OUT/kernel_report.json"
}
run_step kernels kernels_step

# ---- the driver's view of the kernels -------------------------------------------------------
attrs_step() {
  "$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
from gpucnn.backends import get_backend
out = Path(sys.argv[1])
B = get_backend("cuda")
print("backend:", B.describe())
attrs = B.module.attributes()
cc = "sm_%d%d" % B.compute_capability
static = {}
rep = out / "kernel_report.json"
if rep.exists():
    for r in json.loads(rep.read_text())["records"]:
        if r["compiler"] == "nvrtc" and r["target"] == cc:
            static[r["kernel"]] = r
print(f"{'kernel':28s} {'regs(driver)':>12s} {'regs(' + cc + ')':>12s} {'local B':>8s} "
      f"{'smem B':>7s} {'max thr/blk':>11s}")
for name, a in sorted(attrs.items()):
    s = static.get(name, {})
    print(f"{name:28s} {a.get('num_regs', '?'):>12} {str(s.get('registers', '-')):>12s} "
          f"{a.get('local_size_bytes', '?'):>8} {a.get('shared_size_bytes', '?'):>7} "
          f"{a.get('max_threads_per_block', '?'):>11}")
(out / "kernel_attributes.json").write_text(json.dumps(
    {"device": B.describe(), "arch": cc, "attributes": attrs}, indent=2, default=str))
PYEOF
}
run_step attrs attrs_step

# ---- the equivalence suite on the GPU -------------------------------------------------------
tests_step() {
  # the compile gates are CPU-only and already ran in the kernels step (nvcc may be absent)
  GPUCNN_CUDA_POISON=1 "$PY" -m pytest -m "not slow" --device-backend cuda -ra \
    --ignore=tests/toolchain --junitxml="$OUT/pytest_cuda.xml" ${PYTEST_EXTRA[@]+"${PYTEST_EXTRA[@]}"} tests/
}
run_step tests tests_step

# ---- benchmarks -----------------------------------------------------------------------------
bench_step() {
  if ! "$PY" -c 'import gpucnn.bench.cli' >/dev/null 2>&1; then
    echo "the gpucnn bench CLI is not available in this checkout (import gpucnn.bench.cli" \
         "failed: $("$PY" -c 'import gpucnn.bench.cli' 2>&1 | tail -1)); skipping the benchmarks"
    return 0
  fi
  local compare=()
  if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
       2>/dev/null; then
    compare=(--compare torch)
  else
    echo "torch with CUDA is not importable: benchmarking without --compare torch" \
         "(use --torch to install it)"
  fi
  "$PY" -m gpucnn bench --backend cuda ${compare[@]+"${compare[@]}"} --json "$OUT/bench.json"
}
run_step bench bench_step

# ---- summary ------------------------------------------------------------------------------
{
  echo "# gpucnn GPU validation"
  echo
  echo "- when: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  echo "- GPU: $(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | head -1)"
  echo "- python: $("$PY" -c 'import sys; print(sys.version.split()[0])'); checkout: $ROOT" \
       "($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
  echo "- report folder: $OUT"
  echo
  echo "| step | exit | seconds | last line |"
  echo "| --- | --- | --- | --- |"
  for s in "${STEPS[@]}"; do
    read -r rc secs <<< "${STATUS[$s]}"
    last=$(grep -v '^\s*$' "$OUT/$s.log" | tail -1 | cut -c1-160 | tr '|' '/')
    echo "| $s | $rc | $secs | $last |"
  done
  echo
  echo "## kernel gates"
  echo '```'
  grep -E '^(all gates passed|gate failures)' -A20 "$OUT/kernels.log" | head -25
  echo '```'
  echo "## tests"
  echo '```'
  grep -E '^(FAILED|ERROR|SKIPPED)|passed|failed' "$OUT/tests.log" | tail -25
  echo '```'
  [ -f "$OUT/bench.json" ] && echo "bench results: bench.json"
} > "$SUMMARY"
cat "$SUMMARY"

fail=0
for s in kernels tests; do
  read -r rc _ <<< "${STATUS[$s]:-1 0}"
  [ "$rc" = 0 ] || fail=1
done
exit $fail
