"""The suite's own rules (tests/harness.py, tests/conftest.py): stable seeds that a failure
prints, a GPU gpucnn cannot use failing the GPU tests rather than skipping them, and the
element-wise check of gpucnn.testing.assert_close."""
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from gpucnn.backends import BackendUnavailable, GpuUnusable
from harness import EMU_CXX, NATIVE_CXX, cuda_backend, stable_seed

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _pytest(args, cwd, plugin_dir=None):
    """pytest in a child process with this checkout's gpucnn (and ``plugin_dir``) importable."""
    path = [str(ROOT)] + ([str(plugin_dir)] if plugin_dir else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# ---- seeds ---------------------------------------------------------------------------------
def test_the_rng_seed_is_the_crc32_of_the_test_id(request, rng):
    seed = zlib.crc32(request.node.nodeid.encode())
    assert stable_seed(request.node.nodeid) == seed
    assert rng.random() == np.random.default_rng(seed).random()


def test_a_failing_test_prints_its_seed_and_a_passing_one_does_not(tmp_path):
    for name in ("conftest.py", "harness.py"):
        (tmp_path / name).write_text((TESTS / name).read_text())
    (tmp_path / "test_seeded.py").write_text(textwrap.dedent("""
        def test_fails(rng):
            assert rng.random() < 0

        def test_passes(rng):
            assert rng.random() >= 0

        def test_fails_without_rng():
            assert False
        """))
    runs = [_pytest(["test_seeded.py", *extra], tmp_path)
            for extra in ([], ["--show-capture=no"])]
    seed = zlib.crc32(b"test_seeded.py::test_fails")
    for out in runs:
        assert "2 failed, 1 passed" in out.stdout, out.stdout + out.stderr
        assert out.stdout.count("rng seed") == 1, out.stdout
        assert f"rng seed {seed} (zlib.crc32 of the test id" in out.stdout
        assert "python -m pytest 'test_seeded.py::test_fails'" in out.stdout


# ---- GPU tests: skip without a GPU, fail on one gpucnn cannot use ---------------------------
def _raises(exc):
    def get():
        raise exc
    return get


def test_an_unusable_gpu_fails_instead_of_skipping():
    with pytest.raises(pytest.fail.Exception, match="GPU is present.*probe kernel failed"):
        cuda_backend(_raises(GpuUnusable("the probe kernel failed to compile")))


def test_no_gpu_skips_with_the_reason():
    with pytest.raises(pytest.skip.Exception, match="no GPU or driver.*reports 0 GPUs"):
        cuda_backend(_raises(BackendUnavailable("the driver reports 0 GPUs")))


def test_no_gpu_fails_when_cuda_was_asked_for_by_name():
    with pytest.raises(pytest.fail.Exception, match="--device-backend cuda.*no GPU.*0 GPUs"):
        cuda_backend(_raises(BackendUnavailable("the driver reports 0 GPUs")), required=True)


def test_a_usable_backend_is_returned():
    backend = object()
    assert cuda_backend(lambda: backend) is backend


UNUSABLE_GPU_PLUGIN = """
from gpucnn.backends import GpuUnusable, cuda

def unusable():
    raise GpuUnusable("the probe kernel failed to compile or run on the GPU: fake")

cuda.make_cuda_backend = unusable
"""


@pytest.mark.parametrize("args", [
    ["tests/test_cuda_backend.py", "-k", "test_gpu_small_ops_match_numpy"],
    ["tests/ops/test_activation.py", "-k", "test_relu_device and forward and shape0",
     "--device-backend", "cuda"],
], ids=["cuda_backend fixture", "--device-backend cuda"])
def test_the_real_fixtures_fail_on_an_unusable_gpu(tmp_path, args):
    (tmp_path / "unusable_gpu.py").write_text(UNUSABLE_GPU_PLUGIN)
    out = _pytest(["-p", "unusable_gpu", "-rA", *args], ROOT, plugin_dir=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "skipped" not in text, text
    assert "GPU is present but the cuda backend cannot use it" in text and "fake" in text
    assert "During handling" not in text  # one line, not the exception chain


# ---- a missing tool fails, in one line naming it --------------------------------------------
@pytest.mark.parametrize("variable,test,tool", [
    ("GPUCNN_CXX", "ops/test_conv_direct.py::test_fused_backward_rejects_bad_switches",
     NATIVE_CXX),
    ("GPUCNN_CXX", "cpu/test_native.py::test_builds_once_and_reuses_the_cached_library",
     NATIVE_CXX),
    ("GPUCNN_EMU_CXX", "ops/test_activation.py::test_relu_device[forward-shape0]", EMU_CXX),
], ids=["direct conv", "native build", "emulator"])
def test_a_missing_compiler_fails_with_one_line_naming_it(tmp_path, monkeypatch, variable, test,
                                                          tool):
    monkeypatch.setenv(variable, str(tmp_path / "no-such-g++"))
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(tmp_path / "cache"))  # nothing built before
    out = _pytest([f"tests/{test}", "tests/toolchain/test_required_tools.py"], ROOT)
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "skipped" not in text, text
    lines = [line for line in text.splitlines() if line.startswith(f"{tool} is missing")]
    assert len(lines) == 2, text  # the test that needs it, and test_required_tools
    assert all("no-such-g++" in line and "test_required_tools.py" in line for line in lines)
    assert "Traceback" not in text and "_ _ _" not in text  # no stack, just the line
