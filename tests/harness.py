"""The suite's rules for reproducing and never hiding a failure (issue 16), as plain functions
so tests/test_harness.py can check them directly; tests/conftest.py wires them into fixtures
and hooks.

- Seeds come from the test's node id through zlib.crc32, so a test sees the same inputs on
  every run and on every machine (``hash()`` of a str is salted per process).
- The cuda backend: a machine without a GPU or driver skips the GPU tests, but a GPU that
  gpucnn cannot use fails them (that is the bug the tests are there to catch).
- A tool the suite needs (g++, nvcc, NVRTC, nvdisasm, the Fashion-MNIST files) that is
  missing fails the tests that need it, with one line naming the tool -- except g++ in a
  ``--device-backend cuda`` run, which skips them (:func:`missing_compiler`).
"""
import subprocess
import zlib

import pytest

SEED_KEY = pytest.StashKey[int]()
REQUIRED_TOOLS_TEST = "tests/toolchain/test_required_tools.py"
NATIVE_CXX = "g++ ($GPUCNN_CXX), which builds the native CPU kernels"
EMU_CXX = "g++ ($GPUCNN_EMU_CXX), which builds the CUDA emulator's kernels"


def stable_seed(nodeid):
    return zlib.crc32(nodeid.encode())


def seed_note(nodeid, seed):
    """The line a failed test's report gets: the seed, and how to get the same inputs."""
    return (f"rng seed {seed} (zlib.crc32 of the test id, so every run draws the same "
            f"inputs): python -m pytest '{nodeid}'")


def cuda_backend(get_cuda, required=False):
    """``get_cuda()`` (the cuda backend), or the test's verdict when it raises: a present but
    unusable GPU (GpuUnusable) fails; no GPU or driver skips, or fails when ``required``
    (the run asked for cuda by name, so skipping every test would hide that nothing ran)."""
    from gpucnn.backends import BackendUnavailable, GpuUnusable
    try:
        return get_cuda()
    except GpuUnusable as exc:
        fail, why = True, f"a GPU is present but the cuda backend cannot use it: {exc}"
    except BackendUnavailable as exc:
        fail, why = required, f"no GPU or driver for the cuda backend: {exc}"
        if required:
            why = f"--device-backend cuda was asked for, but {why}"
    # outside the except clause, so the report is this one line, not the exception chain
    if fail:
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


def missing_tool(tool, reason):
    """Fail the current test because ``tool`` (its name and what needs it) is unusable."""
    pytest.fail(f"{tool} is missing or unusable: {reason} (the suite needs it; "
                f"{REQUIRED_TOOLS_TEST} lists every required tool)", pytrace=False)


def missing_compiler(tool, reason, device_backend):
    """A test needs g++ (``tool``, for the emulator or the native CPU kernels), which is
    unusable: it fails (:func:`missing_tool`), as the CPU suite promises -- except in a
    ``--device-backend cuda`` run, where the GPU is what is under test and a lent GPU machine
    may have no compiler: there the test is skipped, naming the tool, so that one missing
    compiler does not end the GPU run (bench/gpu_validate.sh) in failures unrelated to it."""
    if device_backend == "cuda":
        pytest.skip(f"{tool} is missing or unusable: {reason} (skipped, not failed, in a "
                    f"--device-backend cuda run: the GPU tests do not need it)")
    missing_tool(tool, reason)


def compiler_problem(cxx):
    """Why ``cxx --version`` does not run (None when it does)."""
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{cxx!r} cannot be run: {exc}"
    return None if out.returncode == 0 else f"{cxx} --version failed: {out.stderr.strip()}"


def training_update(model, loss, opt):
    """The trainer's step as a function ``update(x, y) -> (loss, probs)``: forward, loss,
    backward, the optimiser's update (what GraphSteps captures)."""
    def update(x, y):
        out = loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step()
        return out, loss.probs
    return update
