"""The null device (gpucnn.backends.null) and ``gpucnn bench --host-overhead``.

No timing is asserted: the benchmark's figures are checked for consistency only.
"""
from __future__ import annotations

import json
import types

import numpy as np
import pytest

from gpucnn.backends.device import DeviceBackend
from gpucnn.backends.null import NullModule, make_null_backend
from gpucnn.bench import cli as bench_cli
from gpucnn.bench.host_overhead import run_host_overhead
from gpucnn.toolchain import kernel_signatures

REQUIRED = ("model", "launches_per_step", "host_us_per_step", "host_us_per_launch",
            "cuda_graphs", "cpu")
ONES = np.ones(8, np.float32)


def _relu_args(n=8, dtype=np.float32):
    return [np.ones(n, dtype), np.empty(n, np.float32), np.int32(n)]


def test_null_module_has_the_real_kernels():
    mod = NullModule()
    assert mod.kernel_names() == sorted(kernel_signatures())
    assert mod.poison_outputs is False
    k = mod.get_function("relu_forward")
    assert mod.get_function("relu_forward") is k
    assert [p.name for p in k.params] == [p.name for p in kernel_signatures()["relu_forward"]]
    with pytest.raises(KeyError, match="no kernel named 'nope'"):
        mod.get_function("nope")


@pytest.mark.parametrize("entry", ["__call__", "check"])
def test_null_kernel_catches_a_planted_wrong_argument(entry):
    mod = NullModule()
    k = mod.get_function("relu_forward")
    wrong = {"float64 array": (_relu_args(dtype=np.float64), "expected an array of float32"),
             "Python int": (_relu_args()[:2] + [8], "expected np.int32"),
             "missing argument": (_relu_args()[:2], "expected 3 arguments"),
             "not an ndarray": ([np.ones(8, np.float32).tolist()] + _relu_args()[1:],
                                "expected an array"),
             "another array type": ([types.SimpleNamespace(dtype=np.dtype(np.float32),
                                                           shape=(8,), flags=ONES.flags)]
                                    + _relu_args()[1:], "take NumPy arrays")}
    for what, (args, match) in wrong.items():
        with pytest.raises(TypeError, match=match):
            getattr(k, entry)((1, 1, 1), (256, 1, 1), args)
    with pytest.raises(ValueError, match="1024 threads"):
        getattr(k, entry)(1, (64, 32), _relu_args())
    assert mod.launches == 0 and mod.checks == 0     # refused launches count for nothing


def test_null_kernel_counts_checks_and_launches():
    mod = NullModule()
    k = mod.get_function("relu_forward")
    checked = k.check(2, 256, _relu_args())
    assert checked[:2] == ((2, 1, 1), (256, 1, 1)) and checked[3] == 0
    assert (mod.launches, mod.checks) == (0, 1)
    k.launch(*checked)
    k.launch((1, 1, 1), (256, 1, 1), ("anything",))  # launch checks nothing
    assert (mod.launches, mod.checks) == (2, 1)
    k(2, 256, _relu_args())
    assert (mod.launches, mod.checks) == (3, 2)
    mod.reset()
    assert (mod.launches, mod.checks) == (0, 0)


def test_null_backend_runs_ops_through_the_device_backend():
    B = make_null_backend()
    assert isinstance(B, DeviceBackend) and B.name == "null" and B.xp is np
    assert B.conv_policy == "heuristic" and B.max_blocks == min(65535, 32 * 132)
    assert "none run" in B.describe()
    x = B.asarray(np.ones((4, 8), np.float32))
    y = B.relu(x)
    assert y.shape == x.shape and isinstance(y, np.ndarray)
    assert B.module.launches >= 1 and B.module.checks >= 1


@pytest.mark.parametrize("model", ["lenet5", "alexnet_cifar"])
def test_host_overhead_cli_writes_its_json(tmp_path, capsys, model):
    path = tmp_path / "host.json"
    rc = bench_cli.main(["--host-overhead", "--model", model, "--warmup", "1", "--repeat",
                         "3", "--quiet", "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "host time per launch" in out and "launches per step" in out
    res = json.loads(path.read_text())
    assert all(k in res for k in REQUIRED), sorted(res)
    assert res["model"] == model and res["batch_size"] == 128
    n = res["launches_per_step"]
    assert isinstance(n, int) and n > 0
    assert 0 <= res["checks_per_step"] <= n
    assert res["host_us_per_step"] > 0
    assert res["host_us_per_launch"] * n == pytest.approx(res["host_us_per_step"])
    assert res["cuda_graphs"] is False and isinstance(res["cpu"], str) and res["cpu"]
    assert res["steps_timed"] == 3 and len(res["samples_us"]) == 3
    assert res["spread_us"]["min"] <= res["host_us_per_step"] <= res["spread_us"]["max"]


@pytest.mark.parametrize("argv, message", [
    (["--model", "alexnet"], "lenet5 or alexnet_cifar"),
    (["--backend", "numpy"], "not --backend"),
    (["--warmup", "0"], "at least 1 warm-up step"),
])
def test_host_overhead_cli_refuses_what_it_cannot_do(capsys, argv, message):
    assert bench_cli.main(["--host-overhead", "--repeat", "1", *argv]) == 2
    assert message in capsys.readouterr().err


def test_graph_replay_host_overhead_counts_the_same_launches(tmp_path):
    """--cuda-graphs: one replay per timed step, the kernels still counted per step; no
    timing assertion (a benchmark)."""
    out = tmp_path / "graphs.json"
    assert bench_cli.main(["--host-overhead", "--cuda-graphs", "--model", "lenet5", "--repeat",
                           "5", "--warmup", "2", "--quiet", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    eager = run_host_overhead("lenet5", repeat=5, warmup=2)
    assert res["cuda_graphs"] is True and eager["cuda_graphs"] is False
    assert res["launches_per_step"] == eager["launches_per_step"] > 0
    assert res["checks_per_step"] == 0
