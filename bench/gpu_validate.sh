#!/usr/bin/env bash
# gpu_validate.sh -- the first command on a lent GPU machine: does gpucnn work on this GPU, and
# how fast is it, in one call with a bounded running time.
#
#     bash bench/gpu_validate.sh --out "$OUT"          # quick mode: at most 5 minutes
#     bash bench/gpu_validate.sh --full --out "$OUT"   # longer bounds, more cases: < 10 minutes
#
# Options:
#   --out DIR            report folder (default gpu_validate_<time>); at most 8 files of at
#                        most 16 MiB each end up there
#   --full               the longer mode (bounds below)
#   --limit STEP=S       another time bound for one step, in seconds (repeatable)
#   --maxfail N          the device tests stop after N failures (default 10)
#   --cuda-root DIR      the CUDA toolkit CUDA_PATH is set to when CuPy finds no CUDA headers
#                        (default /usr/local/cuda)
#   --pytest-args "..."  more pytest arguments for the device tests
#   --venv DIR, --install  run in (or create) a virtual environment / pip install what is
#                        missing first (needs a network)
#
# Run from a session with a lent GPU (offline, the project used from this checkout through
# PYTHONPATH, nothing installed), from the repository root. Steps, in order, each under its own
# time bound (seconds, quick / full); a step that fails or runs out of time does not stop the
# next ones, and each step appends its part to summary.md as soon as it ends:
#
#   kernels   -/45   (--full only) the static kernel report for this GPU's architecture (NVRTC)
#                    and its gates
#   start     40/60  1. does the cuda backend start: probe kernel, every kernel compiled (when
#                    CuPy finds no CUDA headers, retried with CUDA_PATH=--cuda-root), the
#                    driver's view of each kernel, gpucnn info
#   tests     60/150 2. do the device tests pass on the GPU: pytest -m "device and not slow"
#                    (--full: -m device) --device-backend cuda --maxfail N -> pytest_cuda.xml
#   compare   60/120 3. our SGEMM at 4096^3 and the AlexNet and LeNet-5 layers at batch 128,
#                    forward and backward, in each precision (fp32, tf32, 3xtf32, bf16) against
#                    cuBLAS and PyTorch/cuDNN with TF32 off, TF32 on and under bf16 autocast,
#                    each of ours against PyTorch's mode of the same arithmetic, and how many
#                    AlexNet conv passes are within 1.5x of cuDNN per precision
#                    (bench/gpu_compare.py). Quick mode: all four precisions on the SGEMM and
#                    AlexNet's convolutions, the other layers in fp32; --full: every layer in
#                    all four, then AlexNet per convolution algorithm
#   train     35/55  4. LeNet-5 and AlexNet-CIFAR training steps at batch 128, images/s, in fp32,
#                    tf32 and bf16 (--full: and 3xtf32): eager, and replayed as a graph where
#                    this gpucnn has graph mode (gpucnn train --help lists --cuda-graphs)
#                    (bench/gpu_train.py)
#   sanitizer 60/120 5. compute-sanitizer memcheck and racecheck, half the bound each, on SGEMM
#                    and implicit-GEMM convolution launches with CuPy's memory pool off
#                    (bench/gpu_sanitize.py)
#
# Quick mode's bounds add up to 255 s, plus 3 s of grace per step and a few seconds of
# bookkeeping: under 5 minutes. The timing steps share their bound inside (--budget):
# gpu_compare.py gets the compare bound less 4 s (--full: 55% of it, then 18% for each of the
# two per-algorithm runs of ours alone), ours start no new measurement after 65% of that and
# the PyTorch process gets the rest, less 3 s (it too starts nothing new past it);
# gpu_train.py starts no new (precision, net) after 3/4 of the train bound. What a budget left
# out is listed in summary.md. A step past its bound gets SIGINT (pytest then still writes its
# XML, the timing helpers their results so far), and SIGKILL 3 s later. The steps after
# "start" are skipped when the backend does not start.
#
# Files in the report folder: summary.md, gpu_validate.log (every step's output, each step's
# share capped at 2 MiB), report.json, pytest_cuda.xml, sanitizer.log. Exit status: 0 when the
# backend started and the device tests passed (--full: and the kernel gates), 1 otherwise,
# 2 on bad usage or when no NVIDIA GPU is visible.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
OUT=""
FULL=0
INSTALL=0
VENV=""
PYTEST_EXTRA=""
MAXFAIL=10
CUDA_ROOT=/usr/local/cuda
GRACE=3                          # seconds between a step's SIGINT and its SIGKILL
MAX_FILE_BYTES=$((16 * 1024 * 1024 - 4096))   # what one file in $OUT may hold
STEP_LOG_BYTES=$((2 * 1024 * 1024))           # a step's share of gpu_validate.log
SANITIZER_LOG_BYTES=$((4 * 1024 * 1024))
MAX_FILES=8
QUICK_BUDGET_S=300
STEP_NAMES=(kernels start tests compare train sanitizer)
declare -A QUICK_LIMIT=([start]=40 [tests]=60 [compare]=60 [train]=35 [sanitizer]=60)
declare -A FULL_LIMIT=([kernels]=45 [start]=60 [tests]=150 [compare]=120 [train]=55
                       [sanitizer]=120)
declare -A OVERRIDE=()

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
bad_usage() { echo "gpu_validate.sh: $*" >&2; usage >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || bad_usage "--out needs a folder"; OUT=$2; shift 2 ;;
    --full) FULL=1; shift ;;
    --limit)
      [[ ${2:-} =~ ^([a-z]+)=([1-9][0-9]*)$ ]] \
        || bad_usage "--limit needs STEP=SECONDS, got '${2:-}'"
      OVERRIDE[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}; shift 2 ;;
    --maxfail)
      [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || bad_usage "--maxfail needs a positive number"
      MAXFAIL=$2; shift 2 ;;
    --cuda-root) [ $# -ge 2 ] || bad_usage "--cuda-root needs a folder"; CUDA_ROOT=$2; shift 2 ;;
    --install) INSTALL=1; shift ;;
    --no-install) INSTALL=0; shift ;;  # the default; kept for older callers
    --venv) [ $# -ge 2 ] || bad_usage "--venv needs a folder"; VENV=$2; shift 2 ;;
    --pytest-args) [ $# -ge 2 ] || bad_usage "--pytest-args needs a string"
      PYTEST_EXTRA=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) bad_usage "unknown argument $1" ;;
  esac
done

# ---- the time bounds --------------------------------------------------------------------------
declare -A LIMIT=()
if [ "$FULL" = 1 ]; then
  for s in "${!FULL_LIMIT[@]}"; do LIMIT[$s]=${FULL_LIMIT[$s]}; done
else
  for s in "${!QUICK_LIMIT[@]}"; do LIMIT[$s]=${QUICK_LIMIT[$s]}; done
fi
for s in "${!OVERRIDE[@]}"; do
  [ -n "${LIMIT[$s]:-}" ] || bad_usage "--limit $s: no such step in this mode (steps:" \
    "$(for n in "${STEP_NAMES[@]}"; do [ -n "${LIMIT[$n]:-}" ] && printf '%s ' "$n"; done))"
  LIMIT[$s]=${OVERRIDE[$s]}
done
BOUND_S=0
for s in "${!LIMIT[@]}"; do BOUND_S=$((BOUND_S + LIMIT[$s] + GRACE)); done

OUT=${OUT:-"$ROOT/gpu_validate_$(date -u +%Y%m%dT%H%M%SZ)"}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)  # intermediate files: only the final ones go to $OUT
LOG="$OUT/gpu_validate.log"
SUMMARY="$OUT/summary.md"
FOREIGN=$(find "$OUT" -mindepth 1 -maxdepth 1 ! -name summary.md ! -name gpu_validate.log \
          ! -name report.json ! -name pytest_cuda.xml ! -name sanitizer.log | wc -l)
rm -f "$OUT/pytest_cuda.xml" "$OUT/sanitizer.log" "$OUT/report.json"  # not from an older run
: > "$LOG"
: > "$WORK/steps.tsv"
CURRENT=""
FINISHED=0
T_START=$SECONDS

log() { echo "$*" | tee -a "$LOG"; }

# cap_append SRC DEST MAXBYTES: append SRC to DEST, at most MAXBYTES of it (its start and, for
# the most part, its end: the end of a log says how a step ended).
cap_append() {
  local size keep
  size=$(wc -c < "$1")
  if [ "$size" -le "$3" ]; then
    cat "$1" >> "$2"
  else
    keep=$(($3 - 200))
    head -c $((keep / 4)) "$1" >> "$2"
    printf '\n[... %d bytes cut here: over the cap of %d bytes ...]\n' \
      $((size - keep)) "$3" >> "$2"
    tail -c $((keep - keep / 4)) "$1" >> "$2"
  fi
}

# cap_file FILE MAXBYTES: cut FILE in place the same way.
cap_file() {
  [ -f "$1" ] && [ "$(wc -c < "$1")" -gt "$2" ] || return 0
  cap_append "$1" "$WORK/capped" "$2" && mv "$WORK/capped" "$1"
  echo "$(basename "$1") was cut to $2 bytes"
}

# The report folder as a lent machine hands it back: at most $MAX_FILES files of at most
# $MAX_FILE_BYTES bytes. Ours are five; anything else in --out counts too.
enforce_out_limits() {
  local f n
  for f in "$OUT"/*; do [ -f "$f" ] && cap_file "$f" "$MAX_FILE_BYTES"; done
  n=$(find "$OUT" -mindepth 1 -maxdepth 1 | wc -l)
  if [ "$n" -gt "$MAX_FILES" ]; then
    echo "**$OUT holds $n entries, more than the $MAX_FILES a lent machine returns:" \
         "$(cd "$OUT" && ls | tr '\n' ' ')**" >> "$SUMMARY"
  fi
}

on_exit() {
  if [ "$FINISHED" != 1 ] && [ -f "$SUMMARY" ]; then
    printf '\n**gpu_validate.sh stopped early%s: the sections above are complete; later steps' \
      "${CURRENT:+ during step $CURRENT}" >> "$SUMMARY"
    printf ' did not run.**\n' >> "$SUMMARY"
    enforce_out_limits >/dev/null 2>&1
  fi
  rm -rf "$WORK"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- python ---------------------------------------------------------------------------------
PY=${PYTHON:-python3}
if [ -n "$VENV" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" || { echo "cannot create $VENV" >&2; exit 2; }
  PY="$VENV/bin/python"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the checkout, not an installed copy
# ... and its kernels: an editable install elsewhere would map gpucnn.kernels to its own
export GPUCNN_KERNELS="$ROOT/kernels"
PY_VERSION=$("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])' 2>&1) \
  || { echo "gpu_validate.sh: $PY does not run: $PY_VERSION" >&2; exit 2; }

# ---- the GPU --------------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_validate.sh: no NVIDIA GPU visible (nvidia-smi missing or failing); nothing to" \
       "validate. The CPU-side checks are: pytest tests/ and python -m gpucnn.toolchain" >&2
  echo "# gpucnn GPU validation: no GPU visible on $(hostname) at $(date -u)" > "$SUMMARY"
  FINISHED=1
  exit 2
fi
GPU_LINE=$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total \
           --format=csv,noheader 2>/dev/null | head -1)
DRIVER_CUDA=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\)\.\([0-9]*\).*/\1/p' | head -1)
CUDA_EXTRA=cuda12
[ "${DRIVER_CUDA:-12}" -ge 13 ] 2>/dev/null && CUDA_EXTRA=cuda13
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
ARCH="sm_${ARCH:-90}"
CXX_NAME=${GPUCNN_EMU_CXX:-g++}
if command -v "$CXX_NAME" >/dev/null 2>&1; then
  CXX_NOTE="$CXX_NAME: $(command -v "$CXX_NAME")"
else
  CXX_NOTE="$CXX_NAME: ABSENT (the device tests do not need it; tests that do skip under"
  CXX_NOTE+=" --device-backend cuda)"
fi
SANITIZER=$(command -v compute-sanitizer 2>/dev/null)
[ -z "$SANITIZER" ] && [ -x "$CUDA_ROOT/bin/compute-sanitizer" ] \
  && SANITIZER="$CUDA_ROOT/bin/compute-sanitizer"
export PY ROOT OUT WORK FULL PYTEST_EXTRA MAXFAIL ARCH CUDA_ROOT GRACE SANITIZER

if [ "$INSTALL" = 1 ]; then
  log "install: pip install -e .[$CUDA_EXTRA,test,bench]"
  "$PY" -m pip install -q -e ".[$CUDA_EXTRA,test,bench]" 2>&1 | tee -a "$LOG"
fi

{
  echo "# gpucnn GPU validation ($([ "$FULL" = 1 ] && echo full || echo quick) mode)"
  echo
  echo "- when: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  echo "- GPU: ${GPU_LINE:-?} (driver's CUDA ${DRIVER_CUDA:-?}, $ARCH)"
  echo "- python: $PY_VERSION; checkout: $ROOT" \
       "($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
  echo "- CUDA_PATH: ${CUDA_PATH:-(unset)}; $CXX_NOTE; compute-sanitizer: ${SANITIZER:-absent}"
  echo "- time bounds (s): $(for s in "${STEP_NAMES[@]}"; do
        [ -n "${LIMIT[$s]:-}" ] && printf '%s %s, ' "$s" "${LIMIT[$s]}"; done)in all at most" \
       "$BOUND_S s with the grace periods"
  [ "$FULL" = 0 ] && [ "$BOUND_S" -gt "$QUICK_BUDGET_S" ] \
    && echo "- **the bounds add up to more than quick mode's $QUICK_BUDGET_S s**"
  [ "$FOREIGN" -gt 0 ] && echo "- $OUT already held $FOREIGN other entries (they count" \
       "against the $MAX_FILES files a lent machine returns)"
  echo
  echo "Each step's section is written when the step ends; the verdict comes last."
} > "$SUMMARY"
log "gpu_validate.sh: report in $OUT; python: $PY_VERSION; GPU: ${GPU_LINE:-?}"

# ---- running a step ---------------------------------------------------------------------------
say() { echo "@summary $*"; }   # a line for summary.md

# write_report: report.json from what the steps have left so far (after every step, so that
# a run stopped later still leaves it).
write_report() {
  timeout -k 2 20 "$PY" "$ROOT/bench/gpu_steps.py" report "$WORK" "$OUT/report.json" \
    --mode "$([ "$FULL" = 1 ] && echo full || echo quick)" --arch "$ARCH" \
    --junit "$OUT/pytest_cuda.xml" >> "$LOG" 2>&1
}

# section NAME TITLE VERDICT: the step's part of summary.md: its verdict, then the @summary
# lines of its log (or, when it printed none, its last lines).
section() {
  local name=$1 title=$2 verdict=$3 lines
  lines=$(grep '^@summary' "$WORK/$name.log" 2>/dev/null | sed 's/^@summary \{0,1\}//' \
          | head -400)
  {
    echo
    echo "## $title"
    echo
    echo "$verdict"
    echo
    if [ -n "$lines" ]; then
      echo "$lines"
    elif [ -s "$WORK/$name.log" ]; then
      echo "last lines of its output:"
      echo '```'
      grep -v '^\s*$' "$WORK/$name.log" | tail -8 | cut -c1-300
      echo '```'
    fi
  } >> "$SUMMARY"
}

# run_step NAME TITLE FUNCTION [POST]: FUNCTION in a child shell under the step's time bound,
# its output to the console and (capped) the log; then POST (reads what FUNCTION left, with
# its own short bound, so it also reports on a step stopped at its limit), then the step's
# section of summary.md and report.json.
run_step() {
  local name=$1 title=$2 fn=$3 post=${4:-} limit=${LIMIT[$1]} t0=$SECONDS rc verdict
  CURRENT=$name
  echo "== $name: $title (bound ${limit} s)"
  STEP_LIMIT=$limit timeout -s INT -k "$GRACE" "$limit" bash -c "$(declare -f); $fn" 2>&1 \
    | tee "$WORK/$name.log"
  rc=${PIPESTATUS[0]}
  if [ -n "$post" ]; then
    timeout -k 2 20 bash -c "$(declare -f); $post" 2>&1 | tee -a "$WORK/$name.log"
  fi
  local secs=$((SECONDS - t0))
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$limit" >> "$WORK/steps.tsv"
  STATUS[$name]=$rc
  case $rc in
    0) verdict="passed: exit 0 after $secs s (bound $limit s)" ;;
    124|137) verdict="**STOPPED at its bound of $limit s** (exit $rc); what it left is below" ;;
    *) verdict="**FAILED: exit $rc** after $secs s (bound $limit s)" ;;
  esac
  echo "== $name: ${verdict//\*/}"
  echo "== $name: $title (bound $limit s)" >> "$LOG"
  cap_append "$WORK/$name.log" "$LOG" "$STEP_LOG_BYTES"
  echo "== $name: ${verdict//\*/}" >> "$LOG"
  section "$name" "$title" "$verdict"
  write_report
  CURRENT=""
}

skip_step() {  # NAME TITLE WHY
  echo "== $1: skipped: $3" | tee -a "$LOG"
  printf '\n## %s\n\nskipped: %s\n' "$2" "$3" >> "$SUMMARY"
}
declare -A STATUS=()

# ---- the steps (each runs in a child shell: variables come through the environment) ----------
kernels_step() {
  local args=(--targets "$ARCH")
  command -v nvcc >/dev/null 2>&1 && args+=(--nvcc --nvcc-targets "$ARCH")
  "$PY" -m gpucnn.toolchain "${args[@]}" --json "$WORK/kernel_report.json"
}
kernels_post() {
  grep -E '^(all gates passed|gate failures)' -A12 "$WORK/kernels.log" | sed 's/^/@summary /'
}

start_step() {
  "$PY" bench/gpu_steps.py start --json "$WORK/start.json"
  local rc=$?
  if [ "$rc" = 3 ] && [ -z "${CUDA_PATH:-}" ] && [ -d "$CUDA_ROOT/include" ]; then
    say "retrying with CUDA_PATH=$CUDA_ROOT (a CUDA toolkit with headers is there)"
    CUDA_PATH=$CUDA_ROOT "$PY" bench/gpu_steps.py start --json "$WORK/start.json"
    rc=$?
    # the later steps run with it too (the main script reads this file)
    [ "$rc" = 0 ] && echo "$CUDA_ROOT" > "$WORK/cuda_path"
  elif [ "$rc" = 3 ]; then
    if [ -n "${CUDA_PATH:-}" ]; then
      say "no retry: CUDA_PATH=$CUDA_PATH is set already, and CuPy finds no headers there"
    else
      say "no retry: $CUDA_ROOT/include does not exist (--cuda-root)"
    fi
    say "to fix: pip install 'cupy-cuda13x[ctk]' (or cupy-cuda12x[ctk]), or set CUDA_PATH"
  fi
  [ "$rc" = 0 ] || return 1
  [ -f "$WORK/cuda_path" ] && export CUDA_PATH && CUDA_PATH=$(cat "$WORK/cuda_path")
  "$PY" -m gpucnn info --backend cuda || say "gpucnn info failed (exit $?)"
}

tests_selection() { if [ "$FULL" = 1 ]; then echo "device"; else echo "device and not slow"; fi; }
tests_step() {
  local extra=()
  read -r -a extra <<< "${PYTEST_EXTRA:-}"
  # -v: when the bound stops a hung test, the log's last line names it
  GPUCNN_CUDA_POISON=1 "$PY" -m pytest -v -ra -p no:cacheprovider -m "$(tests_selection)" \
    --device-backend cuda --maxfail="$MAXFAIL" --junitxml="$OUT/pytest_cuda.xml" \
    ${extra[@]+"${extra[@]}"} tests/
}
tests_post() {
  "$PY" bench/gpu_steps.py junit "$OUT/pytest_cuda.xml" \
    --selection "-m '$(tests_selection)' --device-backend cuda --maxfail=$MAXFAIL"
}

# Each gpu_compare.py run gets a --budget inside the step's bound (ours, then PyTorch's share).
compare_step() {
  if [ "$FULL" = 1 ]; then
    "$PY" bench/gpu_compare.py --repeat 20 --rotate 4 --budget $((STEP_LIMIT * 55 / 100)) \
      --json "$WORK/compare.json"
    local algo
    for algo in im2col implicit; do  # ours only, AlexNet: PyTorch ran above
      GPUCNN_CONV_ALGO=$algo "$PY" bench/gpu_compare.py --gemm-n 0 --torch none --repeat 10 \
        --layers alexnet --precision-layers alexnet.conv --budget $((STEP_LIMIT * 18 / 100)) \
        --json "$WORK/compare_$algo.json"
    done
  else
    # all four precisions on the SGEMM and AlexNet's convolutions (the 1.5x goal), fp32
    # elsewhere
    "$PY" bench/gpu_compare.py --precision-layers alexnet.conv --budget $((STEP_LIMIT - 4)) \
      --json "$WORK/compare.json"
  fi
}
compare_post() {
  local f
  for f in "$WORK"/compare*.json; do
    [ -f "$f" ] || { say "no results: the step stopped before its first measurement"; continue; }
    say ""  # a paragraph of its own: markdown would run one file's table into the next
    "$PY" bench/gpu_compare.py --summarize "$f"
  done
}

train_step() {
  # no new (precision, net) after three quarters of the bound: the one under way ends in it
  local args=(--json "$WORK/train.json" --budget $((STEP_LIMIT * 3 / 4)))
  if [ "$FULL" = 1 ]; then
    args+=(--repeat 30 --precisions fp32,tf32,3xtf32,bf16)
  else
    args+=(--precisions fp32,tf32,bf16)
  fi
  # graph mode is timed where gpucnn train offers it
  if "$PY" -m gpucnn train --help 2>/dev/null | grep -q -- '--cuda-graphs'; then
    args+=(--graphs)
  else
    say "graph mode: not in this gpucnn (gpucnn train --help has no --cuda-graphs)"
  fi
  "$PY" bench/gpu_train.py "${args[@]}"
}
train_post() {
  if [ -f "$WORK/train.json" ]; then
    "$PY" bench/gpu_train.py --summarize "$WORK/train.json"
  else
    say "no results: the step stopped before its first measurement"
  fi
}

# sanitize_with TOOL BOUND [OPTIONS...]: one compute-sanitizer run of the driver; its verdict.
sanitize_with() {
  local tool=$1 bound=$2 rc out="$WORK/san_$1.txt"
  shift 2
  local cases=quick
  [ "$FULL" = 1 ] && cases=full
  echo "-- compute-sanitizer --tool $tool $* (bound $bound s)"
  # --plain: the driver's verdict goes into this tool's summary line below, not on its own
  timeout -s INT -k "$GRACE" "$bound" "$SANITIZER" --tool "$tool" --error-exitcode 3 \
    --print-limit 20 "$@" "$PY" bench/gpu_sanitize.py --cases "$cases" --plain 2>&1 \
    | tee "$out"
  rc=${PIPESTATUS[0]}
  if [ "$rc" != 0 ] && [ $# -gt 0 ] \
      && grep -q -i -E "unrecogni[sz]ed option|unknown option|invalid option" "$out"; then
    echo "this compute-sanitizer does not know one of $*: again without them"
    sanitize_with "$tool" "$bound"
    return
  fi
  cat "$out" >> "$WORK/sanitizer.log"
  local tally
  tally=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^driver \(" "$out" | sed 's/^=* *//' \
          | paste -s -d ';' | sed 's/;/; /g' | cut -c1-400)
  case $rc in
    0) say "$tool: clean ($tally)" ;;
    3) say "$tool: **ERRORS FOUND** ($tally): sanitizer.log" ;;
    124|137) say "$tool: **stopped at its bound of $bound s** ($tally)" ;;
    *) if grep -q -E "Device not supported|error 999|not supported on this" "$out"; then
         say "$tool: the runtime refused the device (exit $rc); going on"
       else
         say "$tool: **exit $rc** ($tally)"
       fi ;;
  esac
  [ "$rc" = 0 ]
}
sanitizer_step() {
  if [ -z "$SANITIZER" ]; then
    say "compute-sanitizer is neither on the PATH nor in $CUDA_ROOT/bin: not run"
    return 0
  fi
  # each tool its own half of the step's bound, so a slow memcheck leaves racecheck its time
  local each=$(( (STEP_LIMIT - 2 * GRACE - 2) / 2 )) ok=0
  # --padding: an overrun lands in a gap, not in the next buffer; --report-api-errors no:
  # what is checked is our kernels' memory accesses, not the CUDA calls CuPy makes to probe
  # the device (some fail by design), and a failed launch fails the driver anyway
  sanitize_with memcheck "$each" --padding 32 --report-api-errors no || ok=1
  sanitize_with racecheck "$each" --report-api-errors no || ok=1
  grep -h -m1 '^driver kernels' "$WORK"/san_*.txt | head -1 | sed 's/^/@summary /'
  return $ok
}

# ---- the run ----------------------------------------------------------------------------------
if [ "$FULL" = 1 ]; then
  run_step kernels "Static kernel report ($ARCH)" kernels_step kernels_post
fi
run_step start "1. Does the cuda backend start" start_step
if [ -f "$WORK/cuda_path" ]; then
  export CUDA_PATH
  CUDA_PATH=$(cat "$WORK/cuda_path")
  log "CUDA_PATH=$CUDA_PATH for the remaining steps (CuPy found no CUDA headers without it)"
fi
LATER=("tests|2. Device tests on the GPU|tests_step|tests_post"
       "compare|3. SGEMM and layers per precision vs cuBLAS and PyTorch/cuDNN|compare_step|\
compare_post"
       "train|4. Training steps per precision (images/s)|train_step|train_post"
       "sanitizer|5. compute-sanitizer|sanitizer_step|")
for entry in "${LATER[@]}"; do
  IFS='|' read -r name title fn post <<< "$entry"
  if [ "${STATUS[start]}" = 0 ]; then
    run_step "$name" "$title" "$fn" "$post"
  else
    skip_step "$name" "$title" "the cuda backend did not start (step 1)"
  fi
done
if [ -f "$WORK/sanitizer.log" ]; then
  cap_append "$WORK/sanitizer.log" "$OUT/sanitizer.log" "$SANITIZER_LOG_BYTES"
fi
write_report

fail=0
for s in kernels start tests; do
  [ -n "${LIMIT[$s]:-}" ] || continue
  [ "${STATUS[$s]:-1}" = 0 ] || fail=1
done
{
  echo
  echo "## Verdict"
  echo
  if [ "$fail" = 0 ]; then
    echo "**PASS**: the backend starts and the device tests pass"
  else
    echo "**FAIL**: $(for s in kernels start tests; do [ -n "${LIMIT[$s]:-}" ] \
      && [ "${STATUS[$s]:-1}" != 0 ] && printf '%s ' "$s"; done)did not pass"
  fi
  echo
  echo "$((SECONDS - T_START)) s in all. Files: $(cd "$OUT" && ls | tr '\n' ' ')"
} >> "$SUMMARY"
enforce_out_limits | tee -a "$LOG"
FINISHED=1
echo
cat "$SUMMARY"
exit $fail
