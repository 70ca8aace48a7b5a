"""bench/gpu_validate.sh and its helpers (bench/gpu_steps.py, gpu_compare.py, gpu_tables.py,
gpu_train.py, gpu_sanitize.py) without a GPU.

The script runs end to end against fakes: ``nvidia-smi`` and ``compute-sanitizer`` scripts on
the PATH, a fake CuPy (tests/test_cuda_backend.py's) on PYTHONPATH, and an interpreter wrapper
given as $PYTHON that records every call, fakes pytest on cuda and the graph-mode switch of
``gpucnn train --help``, and runs the rest for real: the start probe (against the fake CuPy, so
the missing-headers error and the CUDA_PATH retry are CuPy's message going through the real
code), the layer and training-step timings (graph replays included) in every precision the
quick mode asks for (fp32, tf32, 3xtf32, bf16 on the SGEMM and the convolution; fp32, tf32,
bf16 for the training steps: the emulator runs the tensor-core kernels) and the sanitizer
driver on the emulator at tiny sizes, every summary and the report.
What this checks is the script's control flow: the order of the steps, their time bounds, a
summary section per step written as each ends (also when one fails or is stopped), the file
count and size limits of the report folder, the retry with CUDA_PATH, graph-mode detection,
the device-test selection, the g++-absent path, the precision arguments each timing step
gets (and its --budget inside the step's bound), a precision recorded in every JSON row.
The tables are built by pure functions (bench/gpu_tables.py, gpu_train.summarize) fed fake
GPU timings here: the precision column, each precision against PyTorch's mode of the same
arithmetic (fp32 and 3xtf32 with TF32 off, tf32 with TF32 on, bf16 with bf16 autocast), the
1.5x goal per precision, rows skipped by the budget or by a fallback to fp32. PyTorch's three
modes run for real on the CPU where torch is installed (bf16 autocast on the CPU).

Not checked here (no GPU): that the real steps fit their bounds on an H100/H200 (how long
NVRTC takes for the WMMA modules, cuDNN's start-up and PyTorch's import on a cold machine:
the budgets inside the compare and train steps are estimates), that ``torch.autocast('cuda',
dtype=torch.bfloat16)`` and the fp32_precision switches pick the cuDNN/cuBLAS kernels we
assume, that a GPU below compute capability 8.0 falls back as the fake result says, CuPy 14's
exact words when it finds no headers, compute-sanitizer's own behaviour and options, the
numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_validate.sh"
sys.path.insert(0, str(ROOT / "bench"))

import gpu_compare  # noqa: E402
import gpu_steps  # noqa: E402
import gpu_tables  # noqa: E402
import gpu_train  # noqa: E402

MiB = 2**20
CUPY_NO_HEADERS = ("Failed to auto-detect CUDA root directory. Please specify `CUDA_PATH` "
                   "environment variable if you are using CUDA versions not yet supported by "
                   "CuPy.")

FAKE_CUPY = f'''
"""A fake CuPy: tests/test_cuda_backend.py's, whose kernels compile only with CUDA_PATH
set when FAKE_HEADERS=missing (CuPy 14 without the [ctk] headers)."""
import os, sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from test_cuda_backend import make_fake_cupy
_cp = make_fake_cupy()
if os.environ.get("FAKE_HEADERS") == "missing" and not os.environ.get("CUDA_PATH"):
    def _no_headers(*args, **kwargs):
        raise RuntimeError({CUPY_NO_HEADERS!r})
    _cp.RawKernel = _no_headers
_cp.__version__ = "14.2.0 (fake)"
sys.modules[__name__] = _cp
'''

FAKE_NVIDIA_SMI = '''#!/usr/bin/env bash
[ "${FAKE_NO_GPU:-}" = 1 ] && { echo "NVIDIA-SMI has failed" >&2; exit 9; }
case "$*" in
  -L) echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-fake)" ;;
  *name,compute_cap*) echo "NVIDIA H100 80GB HBM3, 9.0, 580.65, 81559 MiB" ;;
  *compute_cap*) echo "9.0" ;;
  *) echo "| NVIDIA-SMI 580.65   Driver Version: 580.65   CUDA Version: 13.0 |" ;;
esac
'''

# FAKE_SANITIZER: clean (default), errors (memcheck finds one), flood (5 MiB of output),
# nopadding (an older compute-sanitizer without --padding)
FAKE_SANITIZER = '''#!/usr/bin/env bash
printf 'compute-sanitizer %s\\n' "$*" >> "$FAKE_CALLS"
tool=memcheck
while [[ ${1:-} == --* ]]; do
  case $1 in
    --tool) tool=$2; shift 2 ;;
    --padding) [ "${FAKE_SANITIZER:-}" = nopadding ] && {
                 echo "========= Error: Unrecognized option '--padding'"; exit 1; }
               shift 2 ;;
    --error-exitcode|--print-limit|--report-api-errors) shift 2 ;;
    *) shift ;;
  esac
done
echo "========= COMPUTE-SANITIZER"
"$@"
rc=$?
if [ "${FAKE_SANITIZER:-}" = flood ]; then
  yes "========= Invalid __shared__ read of size 16 bytes (flood line)" | head -c 5242880
fi
if [ "$tool" = memcheck ] && [ "${FAKE_SANITIZER:-}" = errors ]; then
  echo "========= Invalid __global__ read of size 16 bytes at sgemm_nn+0x1f0"
  echo "========= ERROR SUMMARY: 1 error"
  exit 3
fi
[ "$tool" = racecheck ] \
  && echo "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"
echo "========= ERROR SUMMARY: 0 errors"
exit $rc
'''

# The interpreter given to the script. FAKE_TESTS: pass | fail | hang; FAKE_COMPARE: run |
# hang | fp32 (the timing steps in fp32 only, no SGEMM: for tests about other steps);
# FAKE_GRAPHS: "" | train (gpucnn train --help lists --cuda-graphs).
FAKE_PYTHON = '''#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$FAKE_CALLS"
real=@REAL@
case "$*" in
  "-m pytest "*)
    [ "${FAKE_TESTS:-pass}" = hang ] && { echo $$ > "$FAKE_CALLS.pid"; exec sleep 60; }
    exec "$real" @TOOLS@ pytest "$@" ;;
  "bench/gpu_compare.py --summarize "*) exec "$real" "$@" ;;
  "bench/gpu_compare.py "*)
    [ "${FAKE_COMPARE:-run}" = hang ] && exec sleep 30
    fast=()
    [ "${FAKE_COMPARE:-run}" = fp32 ] && fast=(--precisions fp32 --gemm-n 0)
    exec "$real" "$@" --backend emu --gemm-n 64 --layers tiny --batch 2 --warmup 0 \\
      --repeat 1 --torch none --precision-layers tiny.conv "${fast[@]}" ;;
  "-m gpucnn train --help")
    echo "usage: gpucnn train [--model MODEL]"
    [ -n "${FAKE_GRAPHS:-}" ] && echo "  --cuda-graphs         capture each step in a CUDA graph"
    exit 0 ;;
  "bench/gpu_train.py --summarize "*) exec "$real" "$@" ;;
  "bench/gpu_train.py "*)
    fast=()
    [ "${FAKE_COMPARE:-run}" = fp32 ] && fast=(--precisions fp32)
    exec "$real" "$@" --backend emu --nets lenet5 --batch 2 --warmup 0 --repeat 1 \\
      "${fast[@]}" ;;
  "bench/gpu_sanitize.py "*) exec "$real" "$@" --backend emu ;;
  *) exec "$real" "$@" ;;
esac
'''

FAKE_TOOLS = '''
"""pytest as the fake interpreter plays it with --device-backend cuda."""
import json, os, sys

def value(args, name):
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name:
            return args[i + 1]

def pytest(args):
    fail = os.environ.get("FAKE_TESTS") == "fail"
    cases = ['<testcase classname="tests.ops.test_gemm" name="test_sgemm[forward-large]"/>',
             '<testcase classname="tests.ops.test_gemm" name="test_sgemm[reverse-large]">'
             '<skipped message="thread order is only controllable on the emulator"/>'
             '</testcase>']
    if fail:
        cases.append('<testcase classname="tests.ops.test_conv" name="test_fwd[forward]">'
                     '<failure message="AssertionError: y: relative error 0.5 &gt; 1e-05">'
                     'trace</failure></testcase>')
    # FAKE_XML_MB: that much captured output in the file (the 16 MiB limit of a returned file)
    out = "x" * int(float(os.environ.get("FAKE_XML_MB", 0)) * 2**20)
    with open(value(args, "--junitxml"), "w") as f:
        f.write(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="0" '
                f'failures="{int(fail)}" skipped="1" tests="{len(cases)}" time="1.5">'
                + "".join(cases) + f"<system-out>{out}</system-out></testsuite></testsuites>")
    print("FAILED tests/ops/test_conv.py::test_fwd[forward]" if fail else "2 passed")
    return 1 if fail else 0

sys.exit({"pytest": pytest}[sys.argv[1]](sys.argv[2:]))
'''


class Run:
    def __init__(self, proc, out, calls):
        self.rc, self.stdout, self.out = proc.returncode, proc.stdout + proc.stderr, out
        self.summary = (out / "summary.md").read_text() if (out / "summary.md").exists() \
            else ""
        self.calls = calls.read_text().splitlines() if calls.exists() else []

    def section(self, title):
        """The summary section whose heading starts with ``title`` (up to the next one)."""
        m = re.search(rf"^## {re.escape(title)}.*?(?=^## |\Z)", self.summary, re.M | re.S)
        assert m, f"no section {title!r} in summary.md:\n{self.summary}"
        return m.group(0)


class FakeGpu:
    """The fakes in ``tmp_path``; ``run(*args, **env)`` runs the script against them with
    its report folder there."""

    def __init__(self, tmp_path):
        self.tmp_path, self.bin, self.pkgs = tmp_path, tmp_path / "bin", tmp_path / "pkgs"
        (self.pkgs / "cupy").mkdir(parents=True)
        self.bin.mkdir()
        (self.pkgs / "cupy" / "__init__.py").write_text(FAKE_CUPY)
        tools = tmp_path / "fake_tools.py"
        tools.write_text(FAKE_TOOLS)
        for name, text in (("nvidia-smi", FAKE_NVIDIA_SMI),
                           ("compute-sanitizer", FAKE_SANITIZER),
                           ("python", FAKE_PYTHON.replace("@REAL@", sys.executable)
                            .replace("@TOOLS@", str(tools)))):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        self.calls = tmp_path / "calls.txt"

    def env(self, **env):
        e = {k: v for k, v in os.environ.items()
             if k != "CUDA_PATH" and not k.startswith("FAKE_")}
        path = os.pathsep.join(filter(None, (str(self.pkgs), e.get("PYTHONPATH"))))
        e.update(PATH=f"{self.bin}:{e['PATH']}", PYTHON=str(self.bin / "python"),
                 PYTHONPATH=path, FAKE_CALLS=str(self.calls), **env)
        self.calls.write_text("")
        return e

    def command(self, out, *args):
        return ["bash", str(SCRIPT), "--out", str(self.tmp_path / out), *args]

    def __call__(self, *args, out="out", **env):
        proc = subprocess.run(self.command(out, *args), env=self.env(**env),
                              capture_output=True, text=True, timeout=120)
        return Run(proc, self.tmp_path / out, self.calls)


@pytest.fixture
def fake_gpu(tmp_path):
    return FakeGpu(tmp_path)


def _check_folder(out):
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8, files
    for p in out.iterdir():
        assert p.stat().st_size <= 16 * MiB, (p.name, p.stat().st_size)
    return files


# ---- the script against the fakes -------------------------------------------------------------
def test_quick_run_end_to_end_with_the_cuda_path_retry(fake_gpu):
    root = fake_gpu.tmp_path / "cuda"
    (root / "include").mkdir(parents=True)
    r = fake_gpu("--cuda-root", str(root), FAKE_HEADERS="missing")
    assert r.rc == 0, r.stdout
    assert _check_folder(r.out) == ["gpu_validate.log", "pytest_cuda.xml", "report.json",
                                    "sanitizer.log", "summary.md"]
    # the steps in order, each with its section, the verdict last
    titles = re.findall(r"^## (.*)$", r.summary, re.M)
    assert [t.split(".")[0] for t in titles] == ["1", "2", "3", "4", "5", "Verdict"], titles
    start = r.section("1.")
    assert "auto-detect CUDA root" in start and f"retrying with CUDA_PATH={root}" in start
    assert "backend: cuda (Fake GPU" in start and f"CUDA_PATH={root}" in start
    # gpucnn info, and every later step, ran with CUDA_PATH set: the fake CuPy compiles
    # only with it
    assert "gpucnn info failed" not in start and "Fake GPU" in r.stdout.split("gpucnn 0.")[1]
    assert f"CUDA_PATH={root} for the remaining steps" in r.stdout
    tests = r.section("2.")
    assert "1 passed, 0 failed, 0 errors, 1 skipped, of 2" in tests
    assert "skipped 1: thread order is only controllable on the emulator" in tests
    pytest_call, = [c for c in r.calls if c.startswith("-m pytest")]
    assert "-m device and not slow --device-backend cuda --maxfail=10" in pytest_call
    assert "tests/" in pytest_call.split() and " -x" not in pytest_call
    compare = r.section("3.")
    # the SGEMM and the conv in all four precisions (the quick mode's --budget kept them),
    # the other layers in fp32 only
    for prec, kernel in (("fp32", "sgemm_small_nn"), ("tf32", "sgemm_tf32_nn"),
                         ("3xtf32", "sgemm_3xtf32_nn"), ("bf16", "sgemm_bf16_nn")):
        assert re.search(rf"^\| {kernel} \| {prec} \| [\d.]+ \|", compare, re.M), compare
        for p in ("fwd", "bwd_data", "bwd_weights"):
            assert re.search(rf"^\| tiny\.conv {p} \| {prec} \| [\d.]+ \| ", compare, re.M)
    assert re.findall(r"^\| tiny\.fc fwd \| (\w+) \|", compare, re.M) == ["fp32"]
    assert "PyTorch: not asked for" in compare and "time budget" not in compare
    train = r.section("4.")
    assert "graph mode: not in this gpucnn" in train
    for prec in ("fp32", "tf32", "bf16"):  # the quick mode's precisions
        assert re.search(rf"^\| lenet5 \| {prec} \| 2 \| eager \| [\d.]+ \| \d+ \|", train,
                         re.M), train
    assert "| 3xtf32 |" not in train and "| graph |" not in train
    san = r.section("5.")
    assert "memcheck: clean" in san and "racecheck: clean" in san
    assert "all 10 match the float64 reference" in san
    assert [c.split("--tool ")[1].split()[0] for c in r.calls
            if c.startswith("compute-sanitizer")] == ["memcheck", "racecheck"]
    assert "--padding 32" in [c for c in r.calls if "memcheck" in c][0]
    assert "**PASS**" in r.section("Verdict")
    report = json.loads((r.out / "report.json").read_text())
    assert set(report["steps"]) == {"start", "tests", "compare", "train", "sanitizer"}
    assert all(s["exit"] == 0 for s in report["steps"].values()), report["steps"]
    assert report["tests"]["passed"] == 1 and report["start"]["cuda_path"] == str(root)
    assert [(e["net"], e["precision"]) for e in report["train"]["nets"]] == [
        ("lenet5", "fp32"), ("lenet5", "tf32"), ("lenet5", "bf16")]
    # every row of the JSON records its precision, asked for and in force
    compare = report["compare"]["compare"]
    assert compare["schema"] == "gpucnn-gpu-compare/2"
    assert {(e["layer"], e["precision"], e["in_force"]) for e in compare["layers"]} == {
        ("tiny.conv", p, p) for p in ("fp32", "tf32", "3xtf32", "bf16")} | {
        ("tiny.pool", "fp32", "fp32"), ("tiny.fc", "fp32", "fp32")}
    assert [g["precision"] for g in compare["gemm"]["rows"]] == ["fp32", "tf32", "3xtf32",
                                                                  "bf16"]
    assert compare["budget_s"] == 56 and compare["precision_layers"] == ["tiny.conv"]
    compare_call, = [c for c in r.calls
                     if c.startswith("bench/gpu_compare.py") and "--summarize" not in c]
    assert "--precision-layers alexnet.conv --budget 56" in compare_call
    train_call, = [c for c in r.calls if c.startswith("bench/gpu_train.py --json")]
    assert "--budget 26 --precisions fp32,tf32,bf16" in train_call


@pytest.mark.slow
def test_failures_and_time_bounds_leave_every_section(fake_gpu):
    """A failing test step, a step stopped at its bound, sanitizer errors and a flood of
    output: every step still writes its section, the files stay within the limits, exit 1."""
    t0 = time.monotonic()
    r = fake_gpu("--limit", "compare=2", FAKE_TESTS="fail", FAKE_COMPARE="hang",
                 FAKE_SANITIZER="flood", FAKE_XML_MB="17")
    assert r.rc == 1, r.stdout
    assert time.monotonic() - t0 < 60
    tests = r.section("2.")
    assert "**FAILED: exit 1**" in tests
    assert "FAILURE tests.ops.test_conv::test_fwd[forward]: AssertionError: y: relative" in tests
    assert "**STOPPED at its bound of 2 s**" in r.section("3.")
    assert "no results: the step stopped before its first measurement" in r.section("3.")
    assert "memcheck: clean" in r.section("5.")  # a flood is not an error
    assert "**FAIL**: tests did not pass" in r.section("Verdict")
    _check_folder(r.out)
    assert (r.out / "sanitizer.log").stat().st_size <= 4 * MiB
    assert "bytes cut here" in (r.out / "sanitizer.log").read_text()
    assert (r.out / "gpu_validate.log").stat().st_size < 16 * MiB
    assert "pytest_cuda.xml was cut" in r.stdout  # 17 MiB: cut to the limit
    report = json.loads((r.out / "report.json").read_text())
    assert report["steps"]["compare"]["stopped_at_limit"] is True
    assert report["steps"]["compare"]["seconds"] <= 2 + 3 + 1  # its bound and the grace
    assert report["steps"]["tests"]["exit"] == 1


@pytest.mark.slow
def test_sections_appear_as_steps_end(fake_gpu):
    """summary.md has step 1's section while step 2 still runs, and a run stopped then says
    so under the sections it completed."""
    proc = subprocess.Popen(fake_gpu.command("live", "--limit", "tests=50"),
                            env=fake_gpu.env(FAKE_TESTS="hang"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    pidfile = Path(f"{fake_gpu.calls}.pid")
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        summary = (fake_gpu.tmp_path / "live" / "summary.md").read_text()
        assert "## 1. Does the cuda backend start" in summary and "passed: exit 0" in summary
        assert "## 2." not in summary and proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the script: it acts once the step ends, ...
        if pidfile.exists():                  # ... which the hung fake pytest does now
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        proc.wait(30)
    summary = (fake_gpu.tmp_path / "live" / "summary.md").read_text()
    assert "stopped early during step tests" in summary and "## 2." not in summary


@pytest.mark.slow
def test_graph_mode_is_timed_where_gpucnn_train_has_it(fake_gpu):
    """The replay of the captured step, on the emulator, next to the eager step."""
    r = fake_gpu(FAKE_GRAPHS="train")
    assert r.rc == 0, r.stdout
    train = r.section("4.")
    assert "not in this gpucnn" not in train and "graph mode: timed" in train
    assert re.search(r"^\| lenet5 \| fp32 \| 2 \| graph \| [\d.]+ \| \d+ \| [\d.]+x the eager "
                     r"speed \|", train, re.M), train
    for prec in ("tf32", "bf16"):  # graph mode in the tensor-core precisions too
        assert re.search(rf"^\| lenet5 \| {prec} \| 2 \| graph \| [\d.]+ \| \d+ \| [\d.]+x the "
                         rf"eager speed; [\d.]+x fp32's eager speed \|", train, re.M), train
    assert any(c.startswith("bench/gpu_train.py") and "--graphs" in c for c in r.calls)


@pytest.mark.slow
def test_backend_that_does_not_start(fake_gpu):
    """No CUDA_PATH retry without a toolkit to point it at; the GPU steps are skipped."""
    r = fake_gpu("--cuda-root", str(fake_gpu.tmp_path / "nowhere"), FAKE_HEADERS="missing",
                 GPUCNN_EMU_CXX="no-such-g++")
    assert r.rc == 1
    assert "g++: ABSENT" in r.summary  # said, and nothing in the selected steps needs it
    start = r.section("1.")
    assert "no retry:" in start and "does not exist" in start
    assert "cupy-cuda13x[ctk]" in start
    for n in "2345":
        assert "skipped: the cuda backend did not start" in r.section(f"{n}.")
    assert not any(c.startswith("-m pytest") for c in r.calls)
    _check_folder(r.out)


@pytest.mark.slow
def test_sanitizer_without_padding_option_and_with_errors(fake_gpu):
    r = fake_gpu(FAKE_SANITIZER="nopadding", FAKE_COMPARE="fp32")
    assert "does not know one of --padding 32 --report-api-errors no: again without" \
        in r.stdout
    assert "memcheck: clean" in r.section("5.")
    r = fake_gpu(FAKE_SANITIZER="errors", FAKE_COMPARE="fp32", out="out2")
    san = r.section("5.")
    assert "memcheck: **ERRORS FOUND**" in san and "1 error" in san
    assert "racecheck: clean" in san
    assert r.rc == 0  # the verdict is start + tests; the sanitizer's is in its section
    assert "Invalid __global__ read" in (r.out / "sanitizer.log").read_text()


def test_no_gpu_and_bad_usage(fake_gpu):
    r = fake_gpu(FAKE_NO_GPU="1")
    assert r.rc == 2 and "no NVIDIA GPU visible" in r.stdout
    assert "no GPU visible" in r.summary
    for args, msg in ((["--limit", "tests"], "--limit needs STEP=SECONDS"),
                      (["--limit", "kernels=9"], "--limit kernels: no such step in this mode"),
                      (["--maxfail", "0"], "--maxfail needs a positive number"),
                      (["--bogus"], "unknown argument --bogus")):
        r = fake_gpu(*args)
        assert r.rc == 2 and msg in r.stdout, (args, r.stdout)


def test_quick_bounds_fit_five_minutes():
    """The quick bounds plus grace stay under 5 minutes with room to spare; --full's under
    the 10 minutes one command may take."""
    text = SCRIPT.read_text()

    def bounds(name):
        body = re.search(rf"declare -A {name}=\((.*?)\)\n", text, re.S).group(1)
        return {k: int(v) for k, v in re.findall(r"\[(\w+)\]=(\d+)", body)}
    grace = int(re.search(r"^GRACE=(\d+)", text, re.M).group(1))
    quick, full = bounds("QUICK_LIMIT"), bounds("FULL_LIMIT")
    assert set(quick) == {"start", "tests", "compare", "train", "sanitizer"}
    assert sum(quick.values()) + grace * len(quick) <= 300 - 30
    assert sum(full.values()) + grace * len(full) <= 600 - 30
    for step, q in quick.items():  # the script's header states them
        assert re.search(rf"^#   {step}\s+{q}/{full[step]}\s", text, re.M), step
    assert re.search(rf"^#   kernels\s+-/{full['kernels']}\s", text, re.M)


# ---- the helpers ------------------------------------------------------------------------------
@pytest.mark.parametrize("message,code", [
    (CUPY_NO_HEADERS, gpu_steps.HEADERS_MISSING),
    ('nvrtc: catastrophic error: cannot open source file "cuda_fp16.h"',
     gpu_steps.HEADERS_MISSING),
    ("no usable CUDA device: cudaErrorNoDevice", 1)])
def test_start_exit_code_names_missing_headers(message, code, capsys):
    from gpucnn.backends import GpuUnusable

    def failing():
        raise GpuUnusable(f"the probe kernel failed: RuntimeError: {message}")
    assert gpu_steps.start(None, get_cuda=failing) == code
    assert "@summary the cuda backend does NOT start" in capsys.readouterr().out


def test_junit_summary_counts_and_failures(tmp_path, capsys):
    xml = tmp_path / "x.xml"
    xml.write_text('<testsuites><testsuite tests="4" failures="1" errors="1" skipped="1" '
                   'time="2.0"><testcase classname="a" name="ok"/>'
                   '<testcase classname="a" name="bad"><failure message="boom">t</failure>'
                   '</testcase><testcase classname="b" name="err"><error message="setup"/>'
                   '</testcase><testcase classname="b" name="s"><skipped message="why"/>'
                   '</testcase></testsuite></testsuites>')
    assert gpu_steps.junit_summary(xml) == 1
    out = capsys.readouterr().out
    assert "1 passed, 1 failed, 1 errors, 1 skipped, of 4 in 2.0 s" in out
    assert "FAILURE a::bad: boom" in out and "ERROR b::err: setup" in out
    assert "skipped 1: why" in out
    assert gpu_steps.junit_summary(tmp_path / "absent.xml") == 1
    assert "pytest did not finish writing it" in capsys.readouterr().out


# ---- the tables from fake timings (bench/gpu_tables.py, gpu_train.summarize) ----------------
def _st(ms):
    return {"median_ms": ms, "min_ms": ms, "n": 5}


def test_which_layers_run_in_which_precision_and_against_which_torch_mode():
    plan = gpu_tables.precision_plan
    every = list(gpu_tables.PRECISIONS)
    assert plan("alexnet.conv2", "conv", every, ["alexnet.conv"]) == every
    assert plan("alexnet.fc6", "linear", every, ["alexnet.conv"]) == ["fp32"]
    assert plan("alexnet.pool1", "pool", every, ["all"]) == ["fp32"]  # no precision
    assert plan("lenet5.conv1", "conv", every, ["all"]) == every
    assert plan("lenet5.conv1", "conv", ["tf32"], ["alexnet.conv"]) == []
    modes = gpu_tables.torch_modes_for
    assert modes(["fp32"], ["off", "on", "bf16"]) == ["off", "on"]
    assert modes(["fp32", "3xtf32"], ["off", "on", "bf16"]) == ["off", "on"]
    assert modes(every, ["off", "on", "bf16"]) == ["off", "on", "bf16"]
    assert modes(["bf16"], ["off", "bf16"]) == ["off", "bf16"]
    assert gpu_tables.TORCH_MODE == {"fp32": "off", "tf32": "on", "3xtf32": "off",
                                     "bf16": "bf16"}


def test_deadline_shares_the_budget():
    now = [100.0]
    d = gpu_tables.Deadline(60, clock=lambda: now[0])
    assert not d.passed(0.65) and d.left() == 60
    now[0] = 140.0
    assert d.passed(0.65) and not d.passed() and d.left() == 20
    none = gpu_tables.Deadline(0, clock=lambda: now[0])
    now[0] = 1e9
    assert not none.passed(0.01) and none.left() == float("inf")


def _fake_compare():
    """A quick-mode result as a GPU would leave it, with made-up timings: AlexNet conv2 in
    four precisions (one pass failed, one skipped by the budget), a pool in fp32, the SGEMM
    per precision, PyTorch in three modes."""
    layers = [{"layer": "alexnet.conv2", "pass": p, "precision": prec, "in_force": prec,
               "ours": _st(ms)}
              for p, times in (("fwd", (2.0, 1.0, 1.5, 0.5)),
                               ("bwd_data", (3.0, 1.2, 2.5, 0.9)))
              for prec, ms in zip(("fp32", "tf32", "3xtf32", "bf16"), times)]
    layers[-1] = {k: v for k, v in layers[-1].items() if k != "ours"}
    layers[-1]["error"] = "RuntimeError: launch failed"
    layers += [{"layer": "alexnet.conv2", "pass": "bwd_weights", "precision": "fp32",
                "in_force": "fp32", "ours": _st(2.0)},
               {"layer": "alexnet.conv2", "pass": "bwd_weights", "precision": "tf32",
                "in_force": "tf32", "skipped": "time budget"},
               {"layer": "alexnet.pool1", "pass": "fwd", "precision": "fp32",
                "in_force": "fp32", "ours": _st(0.4)}]
    torch = {"info": {"version": "2.11.0", "device": "cuda", "cuda": "13.0", "cudnn": 91000,
                      "cudnn.benchmark": False,
                      "defaults": {"torch.backends.cuda.matmul.allow_tf32": False,
                                   "torch.backends.cudnn.allow_tf32": True},
                      "settings": {"off": {"torch.backends.cudnn.allow_tf32": False},
                                   "on": {"torch.backends.cudnn.allow_tf32": True},
                                   "bf16": {"autocast": "torch.autocast('cuda', ...)"}}},
             "gemm": {"off": _st(2.5), "on": _st(1.0), "bf16": _st(0.5)},
             "layers": {"alexnet.conv2:fwd": {"off": _st(1.6), "on": _st(0.5),
                                              "bf16": _st(0.4)},
                        "alexnet.conv2:bwd_data": {"off": _st(2.0), "on": _st(1.0),
                                                   "bf16": _st(0.6)},
                        "alexnet.conv2:bwd_weights": {"off": _st(1.0), "on": _st(0.5)},
                        "alexnet.pool1:fwd": {"off": _st(0.2), "on": _st(0.2)}},
             "errors": {}, "skipped": ["alexnet.conv2:bwd_weights bf16"]}
    gemm = {"n": 4096, "flops": 2.0 * 4096 ** 3, "blas": "cupy.matmul (cuBLAS), TF32 off",
            "blas_stats": _st(2.4), "rows": [
                {"precision": "fp32", "in_force": "fp32", "kernel": "sgemm_nn",
                 "ours": _st(3.0), "max_rel_diff_vs_blas": 1e-6},
                {"precision": "tf32", "in_force": "tf32", "kernel": "sgemm_tf32_nn",
                 "ours": _st(1.1), "max_rel_diff_vs_blas": 4e-4},
                {"precision": "3xtf32", "in_force": "3xtf32", "error": "RuntimeError: x"},
                {"precision": "bf16", "in_force": "bf16", "skipped": "time budget"}]}
    return {"schema": gpu_compare.SCHEMA, "backend": "cuda (NVIDIA H100)", "conv_algo": "auto",
            "repeat": 5, "warmup": 2, "batch": 128, "budget_s": 56,
            "precisions": {p: {"in_force": p, "fallback": None}
                           for p in ("fp32", "tf32", "3xtf32", "bf16")},
            "layers": layers, "gemm": gemm, "torch": torch}


def test_compare_tables_have_a_precision_column_and_the_goal():
    res = _fake_compare()
    rows = gpu_tables.layer_rows(res)
    fwd = {r["precision"]: r for r in rows
           if r["pass"] == "fwd" and r["layer"] == "alexnet.conv2"}
    assert fwd["fp32"]["torch_mode"] == "off" and fwd["fp32"]["ratio"] == 2.0 / 1.6
    assert fwd["tf32"]["ratio"] == 1.0 / 0.5 and fwd["bf16"]["ratio"] == 0.5 / 0.4
    assert fwd["3xtf32"]["torch_mode"] == "off" and fwd["3xtf32"]["ratio"] == 1.5 / 1.6
    text = "\n".join(gpu_compare.summarize(res))
    assert ("| layer pass (batch 128) | precision | ours ms | PyTorch mode | torch ms | "
            "ours ÷ torch | 1.5x goal |") in text
    # each AlexNet conv row marked against the goal; ratio exactly 1.5 counts as met
    assert "| alexnet.conv2 fwd | fp32 | 2.000 | TF32 off | 1.600 | 1.25 | met |" in text
    assert "| alexnet.conv2 fwd | tf32 | 1.000 | TF32 on | 0.500 | 2.00 | **MISSED** |" in text
    assert "| alexnet.conv2 fwd | 3xtf32 | 1.500 | TF32 off | 1.600 | 0.94 | met |" in text
    assert "| alexnet.conv2 fwd | bf16 | 0.500 | bf16 autocast | 0.400 | 1.25 | met |" in text
    assert "| alexnet.conv2 bwd_data | fp32 | 3.000 | TF32 off | 2.000 | 1.50 | met |" in text
    assert ("| alexnet.conv2 bwd_data | bf16 | FAILED: RuntimeError: launch failed | "
            "bf16 autocast | 0.600 | - | no ratio |") in text
    assert ("| alexnet.conv2 bwd_weights | tf32 | skipped: time budget | TF32 on | 0.500 | - "
            "| no ratio |" in text)
    # the pool ran in fp32 only: PyTorch's TF32-on figure is shown, ours "not timed"; the
    # goal is about convolutions only
    assert "| alexnet.pool1 fwd | fp32 | 0.400 | TF32 off | 0.200 | 2.00 | - |" in text
    assert "| alexnet.pool1 fwd | tf32 | not timed | TF32 on | 0.200 | - | - |" in text
    # the goal, per precision, over the AlexNet conv passes timed on both sides
    assert ("- fp32 vs PyTorch TF32 off: 2 of 3 passes within 1.5x; worst alexnet.conv2 "
            "bwd_weights at 2.00x") in text
    assert ("- tf32 vs PyTorch TF32 on: 1 of 2 passes within 1.5x (1 not timed on both "
            "sides); worst alexnet.conv2 fwd at 2.00x") in text
    assert "- 3xtf32 vs PyTorch TF32 off: 2 of 2 passes within 1.5x" in text
    assert "- bf16 vs PyTorch bf16 autocast: 1 of 1 passes within 1.5x (1 not timed" in text
    assert "pool" not in "\n".join(gpu_tables.goal_lines(rows))
    # the SGEMM per precision against torch.matmul in the matching mode, and cuBLAS
    assert "| sgemm_nn | fp32 | 3.000 | 45.8 | 1e-06 | TF32 off | 2.500 | 55.0 | 1.20 |" in text
    assert ("| sgemm_tf32_nn | tf32 | 1.100 | 124.9 | 0.0004 | TF32 on | 1.000 | 137.4 | 1.10 |"
            in text)
    assert "| FAILED: RuntimeError: x | 3xtf32 | - | - | - | TF32 off | 2.500 |" in text
    assert "| skipped: time budget | bf16 | - | - | - | bf16 autocast | 0.500 |" in text
    assert "| cupy.matmul (cuBLAS), TF32 off | - | 2.400 | 57.3 |" in text
    assert "PyTorch timed with bf16 autocast: autocast = " in text
    assert "PyTorch skipped (time budget): alexnet.conv2:bwd_weights bf16" in text
    assert ("each compared with PyTorch's mode of the same arithmetic: fp32 with TF32 off, "
            "tf32 with TF32 on, 3xtf32 with TF32 off, bf16 with bf16 autocast") in text


def test_compare_summary_of_a_partial_run_and_a_fallback():
    """A run stopped after the SGEMM, on a GPU whose tensor-core precisions fell back to fp32:
    the tables say what exists, nothing raises."""
    why = "compute capability 7.5 has no TF32/BF16 tensor cores (they need 8.0)"
    res = {"backend": "cuda (T4)", "conv_algo": "auto", "repeat": 5, "warmup": 2,
           "batch": 128, "precisions": {"fp32": {"in_force": "fp32", "fallback": None},
                                        "bf16": {"in_force": "fp32", "fallback": why}},
           "layers": [{"layer": "alexnet.conv1", "pass": "fwd", "precision": "fp32",
                       "error": "MemoryError: x"}],
           "gemm": {"n": 4096, "flops": 2.0 * 4096 ** 3,
                    "blas": "cupy.matmul (cuBLAS), TF32 off", "blas_stats": _st(5.0),
                    "rows": [{"precision": "fp32", "in_force": "fp32", "kernel": "sgemm_nn",
                              "ours": _st(10.0), "max_rel_diff_vs_blas": 1e-6},
                             {"precision": "bf16", "in_force": "fp32",
                              "skipped": f"runs as fp32 here: {why}"}]}}
    text = "\n".join(gpu_compare.summarize(res))
    assert "PyTorch: not measured (the run stopped before it)" in text
    assert "| sgemm_nn | fp32 | 10.000 | 13.7 | 1e-06 | TF32 off | - | - | - |" in text
    assert "| skipped: runs as fp32 here: compute capability 7.5" in text
    assert f"precisions (ours): fp32, bf16 (runs as fp32: {why})" in text
    assert ("| alexnet.conv1 fwd | fp32 | FAILED: MemoryError: x | TF32 off | - | - | no ratio |"
            in text)
    assert "- fp32: no pass timed on both sides (1 rows)" in text


def test_compare_without_cuda_in_torch_degrades_to_ours_alone():
    """PyTorch without CUDA (a CPU wheel on the GPU machine): the child says so instead of
    timing on the CPU, and the tables keep our figures, no ratio, the goal unanswered."""
    pytest.importorskip("torch")
    import torch
    if torch.cuda.is_available():
        pytest.skip("this PyTorch has CUDA")
    child = gpu_compare.torch_child({"device": "cuda", "budget_s": None})
    assert set(child) == {"error"} and "has no usable CUDA here" in child["error"], child
    res = _fake_compare()
    res["torch"] = child
    text = "\n".join(gpu_compare.summarize(res))
    assert f"PyTorch: {child['error']}" in text
    assert "| alexnet.conv2 fwd | tf32 | 1.000 | TF32 on | - | - | no ratio |" in text
    assert "- tf32: no pass timed on both sides (3 rows)" in text
    assert "MISSED" not in text and "| met |" not in text


def test_ours_take_the_whole_budget_without_torch():
    ns = lambda modes: argparse.Namespace(torch_modes=modes)  # noqa: E731
    assert gpu_compare.ours_share(ns(["off", "on", "bf16"])) == gpu_compare.OURS_SHARE < 1
    assert gpu_compare.ours_share(ns([])) == 1.0


def test_script_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


def test_train_summary_per_precision():
    res = {"backend": "cuda (H100)", "graphs": "timed", "repeat": 10, "warmup": 2,
           "precisions": {"fp32": {"in_force": "fp32"}, "tf32": {"in_force": "tf32"},
                          "bf16": {"in_force": "bf16"}}, "nets": [
               {"net": "lenet5", "batch": 128, "precision": "fp32", "in_force": "fp32",
                "graph_error": "RuntimeError: capture refused",
                "eager": {"median_ms": 1.28, "min_ms": 1.2, "n": 10, "images_per_s": 1e5}},
               {"net": "alexnet_cifar", "batch": 128, "precision": "fp32", "in_force": "fp32",
                "error": "MemoryError: out of memory"},
               {"net": "lenet5", "batch": 128, "precision": "tf32", "in_force": "tf32",
                "eager": {"median_ms": 0.64, "min_ms": 0.6, "n": 10, "images_per_s": 2e5},
                "graph": {"median_ms": 0.32, "min_ms": 0.3, "n": 10, "images_per_s": 4e5}},
               {"net": "lenet5", "batch": 128, "precision": "bf16", "in_force": "bf16",
                "skipped": "time budget (26 s)"}]}
    text = "\n".join(gpu_train.summarize(res))
    assert "precisions: fp32, tf32, bf16" in text
    assert "| net | precision | batch | execution | ms per step | images/s | note |" in text
    assert "| lenet5 | fp32 | 128 | eager | 1.280 | 100000 |  |" in text
    assert ("| lenet5 | fp32 | 128 | graph | - | - | capture FAILED: RuntimeError: capture "
            "refused |") in text
    assert ("| alexnet_cifar | fp32 | 128 | - | - | - | FAILED: MemoryError: out of memory |"
            in text)
    assert "| lenet5 | tf32 | 128 | eager | 0.640 | 200000 | 2.00x fp32's eager speed |" in text
    assert ("| lenet5 | tf32 | 128 | graph | 0.320 | 400000 | 2.00x the eager speed; 4.00x "
            "fp32's eager speed |") in text
    assert "| lenet5 | bf16 | 128 | - | - | - | skipped: time budget (26 s) |" in text


def test_train_summary_of_a_version_1_result():
    """A result without precisions (gpucnn-gpu-train/1) reads as fp32."""
    res = {"nets": [{"net": "lenet5", "batch": 128, "eager": {
        "median_ms": 1.0, "min_ms": 1.0, "n": 1, "images_per_s": 128000.0}}]}
    assert "| lenet5 | fp32 | 128 | eager | 1.000 | 128000 |  |" in gpu_train.summarize(res)


def test_compare_budget_and_fallback_on_the_emulator(tmp_path, monkeypatch):
    """The real helper, its --budget spent before it starts: every row recorded with its
    precision and 'time budget', PyTorch not started. Then a precision that falls back to
    fp32 (as on a GPU below compute capability 8.0): its rows are skipped, saying so."""
    import gpucnn.backends as backends
    out = tmp_path / "c.json"
    base = ["--backend", "emu", "--gemm-n", "32", "--layers", "tiny", "--batch", "2",
            "--warmup", "0", "--repeat", "1", "--json", str(out)]
    assert gpu_compare.main(base + ["--budget", "0.001", "--precisions", "fp32,bf16",
                                    "--precision-layers", "tiny.conv"]) == 0
    res = json.loads(out.read_text())
    assert {(e["layer"], e["pass"], e["precision"]) for e in res["layers"]} == {
        ("tiny.conv", p, prec) for p in ("fwd", "bwd_data", "bwd_weights")
        for prec in ("fp32", "bf16")} | {("tiny.pool", p, "fp32") for p in ("fwd", "bwd")} | {
        ("tiny.fc", p, "fp32") for p in ("fwd", "bwd")}
    assert all(e["skipped"] == "time budget" for e in res["layers"])
    assert all(r["skipped"] == "time budget" for r in res["gemm"]["rows"])
    assert res["torch"] == {"error": "not measured: no time left in the budget"}

    real = backends.get_backend
    monkeypatch.setattr(backends, "get_backend",
                        lambda name, p=None: real(name, "fp32" if p == "tf32" else p))
    assert gpu_compare.main(base + ["--precisions", "fp32,tf32", "--torch", "none"]) == 0
    res = json.loads(out.read_text())
    assert res["precisions"]["tf32"]["in_force"] == "fp32"
    tf32 = [e for e in res["layers"] if e["precision"] == "tf32"]
    assert tf32 and all(e["skipped"].startswith("runs as fp32 here") for e in tf32)
    assert all("ours" in e for e in res["layers"] if e["precision"] == "fp32")


@pytest.mark.slow
def test_compare_with_torch_in_its_three_modes(tmp_path):
    """The real helper on the emulator with PyTorch on the CPU: TF32 off and on, read back
    and stated, and bf16 under autocast with bfloat16 operands; ours in all four precisions;
    every PyTorch mode matching one of ours timed."""
    pytest.importorskip("torch")
    out = tmp_path / "c.json"
    assert gpu_compare.main(["--backend", "emu", "--gemm-n", "32", "--layers", "tiny",
                             "--batch", "2", "--warmup", "0", "--repeat", "1",
                             "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    info = res["torch"]["info"]
    for tf, values in (("off", {False, "ieee"}), ("on", {True, "tf32"})):
        state = info["settings"][tf]
        assert len(state) == 2 and set(state.values()) <= values, (tf, state)
        assert {k.split(".")[2] for k in state} == {"cuda", "cudnn"}
    assert "torch.autocast('cpu', dtype=torch.bfloat16)" in info["settings"]["bf16"]["autocast"]
    assert set(res["torch"]["gemm"]) == {"off", "on", "bf16"}
    tl = res["torch"]["layers"]
    assert len(tl) == 7 and not res["torch"]["errors"] and not res["torch"]["skipped"]
    assert set(tl["tiny.conv:fwd"]) == set(tl["tiny.fc:bwd"]) == {"off", "on", "bf16"}
    assert set(tl["tiny.pool:fwd"]) == {"off", "on"}  # pools: fp32 only, no bf16 to match
    rows = gpu_tables.layer_rows(res)
    assert {r["precision"] for r in rows if r["ratio"] is not None} == {"fp32", "tf32",
                                                                        "3xtf32", "bf16"}
    text = "\n".join(gpu_compare.summarize(res))
    assert "its defaults: torch.backends.cuda.matmul." in text
    assert "PyTorch timed with TF32 off: torch.backends.cuda.matmul." in text
    assert re.search(r"^\| tiny\.conv bwd_weights \| bf16 \| [\d.]+ \| bf16 autocast \| "
                     r"[\d.]+ \| [\d.]+ \| - \|$", text, re.M), text


def test_sanitizer_driver_reaches_the_chosen_kernels(capsys):
    """On the emulator: every case matches the reference, and the launches include both
    SGEMM tiles and every implicit-convolution kernel, the dW split's sum included."""
    import gpu_sanitize
    assert gpu_sanitize.main(["--backend", "emu"]) == 0
    verdict, used = capsys.readouterr().out.strip().splitlines()[-2:]
    assert "all 10 match the float64 reference" in verdict
    kernels = set(used.split("driver kernels: ")[1].split(", "))
    assert {"sgemm_nn", "sgemm_tt", "sgemm_small_nn", "sgemm_small_tn", "conv_implicit_fprop",
            "conv_implicit_dgrad", "conv_implicit_wgrad", "sgemm_sum_partials"} <= kernels


# ---- the device marker --------------------------------------------------------------------------
def _pytest(*args, **env):
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_device_marker_selects_the_device_fixture_tests():
    r = _pytest("--collect-only", "-q", "-m", "device", "tests/ops/test_linear.py",
                "tests/test_cuda_backend.py", "tests/ops/test_launch.py")
    ids = [line for line in r.stdout.splitlines() if "::" in line]
    assert ids and all("test_linear.py" in i or "test_gpu_" in i for i in ids), ids
    assert any("test_gpu_lenet_training_step_stays_on_device" in i for i in ids)
    assert not any("test_launch.py" in i for i in ids)  # emulator-only, no device fixture


@pytest.mark.slow
def test_missing_compiler_skips_only_under_cuda():
    """Without g++, a test needing the native kernels fails on the CPU suite (as before) and
    is skipped in a --device-backend cuda run; device tests collect without it."""
    test = "tests/ops/test_conv_direct.py::test_fused_forward_nan_wins_its_window"
    cpu = _pytest("-q", test, GPUCNN_CXX="/no/such/g++")
    assert cpu.returncode == 1 and "1 error" in cpu.stdout, cpu.stdout
    gpu = _pytest("-q", "-rs", "--device-backend", "cuda", test, GPUCNN_CXX="/no/such/g++")
    assert gpu.returncode == 0 and "1 skipped" in gpu.stdout, gpu.stdout
    assert "skipped, not failed, in a --device-backend cuda run" in gpu.stdout
    col = _pytest("--collect-only", "-q", "-m", "device and not slow", "--device-backend",
                  "cuda", "tests/ops/test_gemm.py", GPUCNN_CXX="/no/such/g++",
                  GPUCNN_EMU_CXX="/no/such/g++")
    assert col.returncode == 0 and "error" not in col.stdout.lower(), col.stdout


@pytest.mark.slow
def test_sigint_lets_pytest_write_its_xml(tmp_path):
    """The script stops a step with SIGINT first: pytest then still writes its JUnit file."""
    (tmp_path / "test_hang.py").write_text(textwrap.dedent("""
        import time
        def test_quick():
            pass
        def test_hangs():
            time.sleep(60)
    """))
    xml = tmp_path / "x.xml"
    r = subprocess.run(["timeout", "-s", "INT", "-k", "5", "4", sys.executable, "-m", "pytest",
                        "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", "test_hang.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 124
    assert gpu_steps.junit_counts(xml)["tests"] >= 1
