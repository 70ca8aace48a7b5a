#!/usr/bin/env bash
# gpu_validate.sh -- validate gpucnn on a machine with an NVIDIA GPU, in one call.
#
#     bash bench/gpu_validate.sh                       # quick mode (at most ~4 minutes)
#     bash bench/gpu_validate.sh --full                # everything (longer: ~10 minutes)
#     bash bench/gpu_validate.sh --out DIR             # report folder (default gpu_validate_<time>)
#     bash bench/gpu_validate.sh --install             # pip install what is missing first
#
# From a session with a lent GPU (offline, the project used from the checkout, files back
# from $OUT only), from the repository root:
#     bash bench/gpu_validate.sh --out "$OUT"
#
# It answers, in this order (each step has a time limit; a failing step does not stop the
# others):
#   env        nvidia-smi, python -m gpucnn info, package versions
#   kernels    the static kernel report for this GPU's architecture (NVRTC; --full: all targets
#              and nvcc) with the gates
#   starts     the cuda backend starts (probe kernel, every kernel compiled), and the driver's
#              view of each kernel (registers, local memory) next to the static numbers
#   tests      the equivalence suite on the GPU: quick = tests/ops (every op vs the float64
#              reference on the main shapes); --full = the whole suite
#   timing     gpucnn bench on the cuda backend: layers and nets with each conv algorithm
#              (GPUCNN_CONV_ALGO=im2col / implicit), our SGEMM and GEMMs through cuBLAS
#              (GPUCNN_CUBLAS=1), and PyTorch/cuDNN on the same layers when torch has CUDA
#   sanitizer  compute-sanitizer memcheck and racecheck over a reduced device suite (says so
#              and goes on where the runtime refuses the device)
#
# Files in the report folder (at most 5): summary.md, gpu_validate.log (every step's output),
# report.json (kernel report, kernel attributes, timings, test counts), pytest_cuda.xml,
# sanitizer.log. Exit status: 0 when kernels, starts and tests passed, 1 otherwise, 2 on bad
# usage or when no NVIDIA GPU is visible.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
OUT=""
FULL=0
INSTALL=0
VENV=""
PYTEST_EXTRA=""
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --full) FULL=1; shift ;;
    --install) INSTALL=1; shift ;;
    --no-install) INSTALL=0; shift ;;  # the default; kept for older callers
    --venv) VENV=$2; shift 2 ;;
    --pytest-args) PYTEST_EXTRA=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_validate.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
OUT=${OUT:-"$ROOT/gpu_validate_$(date -u +%Y%m%dT%H%M%SZ)"}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)  # intermediate files: only the final ones go to $OUT
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT/gpu_validate.log"
: > "$LOG"
declare -A STATUS
STEPS=()
# Per-step limits (seconds): quick mode sums to 235 s, inside the 4 minutes a lent machine can
# spare (its start-up costs the rest of a 15-minute lease).

if [ "$FULL" = 1 ]; then
  declare -A LIMIT=([env]=60 [kernels]=300 [starts]=180 [tests]=600 [timing]=600 [sanitizer]=300)
else
  declare -A LIMIT=([env]=20 [kernels]=40 [starts]=40 [tests]=60 [timing]=45 [sanitizer]=30)
fi

log() { echo "== $*" | tee -a "$LOG"; }

# run_step NAME FUNCTION: runs it under its time limit, output to the console and the log.
run_step() {
  local name=$1 fn=$2 t0=$SECONDS
  log "$name (limit ${LIMIT[$name]} s)"
  timeout --kill-after=5 "${LIMIT[$name]}" bash -c "$(declare -f "$fn"); $fn" 2>&1 \
    | tee "$WORK/$name.log" | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && log "$name: stopped at its ${LIMIT[$name]} s limit"
  STATUS[$name]="$rc $((SECONDS - t0))"
  STEPS+=("$name")
  log "$name: exit $rc after $((SECONDS - t0)) s"
}

# ---- python ---------------------------------------------------------------------------------
PY=${PYTHON:-python3}
if [ -n "$VENV" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" || { echo "cannot create $VENV" >&2; exit 2; }
  PY="$VENV/bin/python"
fi
export PY ROOT OUT WORK FULL PYTEST_EXTRA  # the steps run in child shells (time limits)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the checkout, not an installed copy
log "python: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

# ---- the GPU --------------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_validate.sh: no NVIDIA GPU visible (nvidia-smi missing or failing); nothing to" \
       "validate. The CPU-side checks are: pytest tests/ and python -m gpucnn.toolchain" >&2
  echo "# gpucnn GPU validation: no GPU visible on $(hostname) at $(date -u)" > "$OUT/summary.md"
  exit 2
fi
DRIVER_CUDA=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\)\.\([0-9]*\).*/\1/p' | head -1)
CUDA_EXTRA=cuda12
[ "${DRIVER_CUDA:-12}" -ge 13 ] 2>/dev/null && CUDA_EXTRA=cuda13
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
export ARCH="sm_${ARCH:-90}"

if [ "$INSTALL" = 1 ]; then
  log "install: pip install -e .[$CUDA_EXTRA,test,bench]"
  "$PY" -m pip install -q -e ".[$CUDA_EXTRA,test,bench]" 2>&1 | tee -a "$LOG"
fi

env_step() {
  nvidia-smi
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm \
    --format=csv
  "$PY" -m gpucnn info || true
  "$PY" -m pip list 2>/dev/null | grep -i -E '^(cupy|numpy|torch|nvidia-|pytest)' || true
  command -v compute-sanitizer || echo "compute-sanitizer: not on the PATH"
}
run_step env env_step

# ---- static kernel report -------------------------------------------------------------------
kernels_step() {
  local args=(--targets "$ARCH")
  [ "$FULL" = 1 ] && args=() && command -v nvcc >/dev/null 2>&1 && args=(--nvcc)
  "$PY" -m gpucnn.toolchain ${args[@]+"${args[@]}"} --json "$WORK/kernel_report.json"
}
run_step kernels kernels_step

# ---- the backend starts, and the driver's view of the kernels --------------------------------
starts_step() {
  "$PY" - <<'PYEOF'
import json, os
from pathlib import Path
from gpucnn.backends import get_backend
work = Path(os.environ["WORK"])
B = get_backend("cuda")  # probe kernel + every kernel compiled, or a clear error (exit 1)
print("backend:", B.describe())
attrs = B.module.attributes()
cc = "sm_%d%d" % B.compute_capability
static = {}
rep = work / "kernel_report.json"
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
(work / "kernel_attributes.json").write_text(json.dumps(
    {"device": B.describe(), "arch": cc, "attributes": attrs}, default=str))
PYEOF
}
run_step starts starts_step

# ---- the equivalence suite on the GPU -------------------------------------------------------
tests_step() {
  local where=(tests/ops)
  [ "$FULL" = 1 ] && where=(--ignore=tests/toolchain tests/)
  # -x in quick mode: the first failure is the answer; the time limit stays for the rest
  local stop=(-x)
  [ "$FULL" = 1 ] && stop=()
  local extra=()
  read -r -a extra <<< "${PYTEST_EXTRA:-}"
  GPUCNN_CUDA_POISON=1 "$PY" -m pytest -q -m "not slow" --device-backend cuda -ra -p no:cacheprovider \
    ${stop[@]+"${stop[@]}"} --junitxml="$OUT/pytest_cuda.xml" \
    ${extra[@]+"${extra[@]}"} "${where[@]}"
}
run_step tests tests_step

# ---- timings ----------------------------------------------------------------------------------
timing_step() {
  local size=(--quick --layers alexnet --nets lenet5,alexnet_cifar --modes train_step)
  [ "$FULL" = 1 ] && size=(--full)
  local compare=()
  if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
       2>/dev/null; then
    compare=(--compare torch)
  else
    echo "torch with CUDA is not importable here: no PyTorch/cuDNN comparison"
  fi
  # each conv algorithm with our SGEMM (+ PyTorch/cuDNN once), then GEMMs through cuBLAS
  for algo in im2col implicit; do
    local cmp=()
    [ "$algo" = im2col ] && cmp=(${compare[@]+"${compare[@]}"})
    echo "-- conv algorithm $algo, our SGEMM ${cmp[*]:-}"
    GPUCNN_CONV_ALGO=$algo "$PY" -m gpucnn bench --backend cuda "${size[@]}" \
      ${cmp[@]+"${cmp[@]}"} --no-telemetry --json "$WORK/bench_$algo.json" \
      || echo "bench with GPUCNN_CONV_ALGO=$algo failed (exit $?)"
  done
  echo "-- conv algorithm im2col, GEMMs through cuBLAS"
  GPUCNN_CUBLAS=1 GPUCNN_CONV_ALGO=im2col "$PY" -m gpucnn bench --backend cuda "${size[@]}" \
    --no-telemetry --json "$WORK/bench_cublas.json" || echo "bench with cuBLAS failed (exit $?)"
}
run_step timing timing_step

# ---- compute-sanitizer ------------------------------------------------------------------------
sanitizer_step() {
  if ! command -v compute-sanitizer >/dev/null 2>&1; then
    echo "compute-sanitizer is not on the PATH: skipped"
    return 0
  fi
  local suite=(tests/ops/test_pool.py tests/ops/test_activation.py tests/ops/test_loss.py)
  [ "$FULL" = 1 ] && suite=(tests/ops)
  for tool in memcheck racecheck; do
    echo "-- compute-sanitizer --tool $tool"
    compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 \
      "$PY" -m pytest -q -x -m "not slow" --device-backend cuda -p no:cacheprovider \
      -k "device or gpu" "${suite[@]}" 2>&1 | tee "$WORK/san_$tool.txt"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" = 3 ]; then
      echo "compute-sanitizer $tool: ERRORS FOUND (above)"
    elif grep -q -E "Device not supported|error 999|not supported on this" "$WORK/san_$tool.txt"; then
      echo "compute-sanitizer $tool: the runtime refused the device; going on"
    else
      echo "compute-sanitizer $tool: exit $rc"
    fi
  done
}
run_step sanitizer sanitizer_step
cp "$WORK/sanitizer.log" "$OUT/sanitizer.log" 2>/dev/null

# ---- one report -------------------------------------------------------------------------------
"$PY" - "${STEPS[@]}" <<PYEOF
import json, os, sys
from pathlib import Path
work, out = Path(os.environ["WORK"]), Path(os.environ["OUT"])
status = {$(for s in "${STEPS[@]}"; do read -r rc secs <<< "${STATUS[$s]}"; echo "\"$s\": [$rc, $secs],"; done)}
def load(name):
    p = work / name
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None
report = {"mode": "full" if os.environ["FULL"] == "1" else "quick", "arch": os.environ["ARCH"],
          "steps": {k: {"exit": v[0], "seconds": v[1]} for k, v in status.items()},
          "kernel_report": load("kernel_report.json"),
          "kernel_attributes": load("kernel_attributes.json"),
          "timing": {k: load(f"bench_{k}.json") for k in ("im2col", "implicit", "cublas")}}
(out / "report.json").write_text(json.dumps(report, indent=1, default=str))
PYEOF

{
  echo "# gpucnn GPU validation ($([ "$FULL" = 1 ] && echo full || echo quick) mode)"
  echo
  echo "- when: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  echo "- GPU: $(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | head -1)"
  echo "- python: $("$PY" -c 'import sys; print(sys.version.split()[0])'); checkout: $ROOT" \
       "($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
  echo
  echo "| step | exit | seconds | last line |"
  echo "| --- | --- | --- | --- |"
  for s in "${STEPS[@]}"; do
    read -r rc secs <<< "${STATUS[$s]}"
    last=$(grep -v '^\s*$' "$WORK/$s.log" | tail -1 | cut -c1-160 | tr '|' '/')
    echo "| $s | $rc | $secs | $last |"
  done
  echo
  echo "## kernel gates"
  echo '```'
  grep -E '^(all gates passed|gate failures)' -A20 "$WORK/kernels.log" | head -25
  echo '```'
  echo "## tests"
  echo '```'
  grep -E '^(FAILED|ERROR)|passed|failed' "$WORK/tests.log" | tail -25
  echo '```'
  echo "## sanitizer"
  echo '```'
  grep -E '^compute-sanitizer|ERROR SUMMARY' "$WORK/sanitizer.log" | tail -10
  echo '```'
  echo "Timings, kernel report and attributes: report.json"
} > "$OUT/summary.md"
cat "$OUT/summary.md"

fail=0
for s in kernels starts tests; do
  read -r rc _ <<< "${STATUS[$s]:-1 0}"
  [ "$rc" = 0 ] || fail=1
done
exit $fail
