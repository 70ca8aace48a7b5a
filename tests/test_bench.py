"""``gpucnn bench``: tiny runs of every mode, the JSON schema, telemetry (absent and faked),
the roofline arithmetic and the CLI entry. Shapes are tiny: the whole file runs in seconds."""
import json
import math
import os
import statistics
import types

import numpy as np
import pytest

from gpucnn.bench import cli as bench_cli
from gpucnn.bench import layers as L
from gpucnn.bench import roofline as R
from gpucnn.bench import telemetry as T
from gpucnn.bench.report import REQUIRED_KEYS
from gpucnn.bench.timing import Runner, WallTimer, quantile, run_interleaved, summarize

# Small, fast, no GPU telemetry unless a test asks for it.
TINY = ["--quick", "--backend", "numpy", "--repeat", "2", "--warmup", "1", "--gemm-size", "64",
        "--quiet"]
TIMING_KEYS = {"median_ms", "min_ms", "max_ms", "q1_ms", "q3_ms", "iqr_ms", "n", "samples_ms"}


def _run(tmp_path, *extra, nvml=None, name="out.json"):
    path = tmp_path / name
    rc = bench_cli.main([*TINY, *extra, "--json", str(path)], nvml=nvml)
    return rc, (json.loads(path.read_text()) if path.exists() else None)


def _check_schema(res):
    for key, typ in REQUIRED_KEYS.items():
        assert key in res, key
        assert isinstance(res[key], typ), (key, type(res[key]))
    assert res["schema"] == "gpucnn-bench/1"
    env = res["environment"]
    for key in ("cpu_model", "cpu_count", "threads", "blas", "versions", "backend"):
        assert key in env, key
    assert isinstance(env["threads"]["blas"], int)
    for key in ("numpy", "torch", "cupy", "python"):
        assert key in env["versions"]
    gemm = res["peak"]["gemm"]
    assert gemm["gflops"] > 0 and TIMING_KEYS <= set(gemm["timing"])
    for e in res["layers"]:
        for key in ("layer", "pass", "kind", "batch", "flops", "min_bytes", "framework",
                    "backend", "timing", "gflops", "gbps_min_bytes", "pct_gemm_peak"):
            assert key in e, key
        assert TIMING_KEYS <= set(e["timing"])
        t = e["timing"]
        assert t["min_ms"] <= t["q1_ms"] <= t["median_ms"] <= t["q3_ms"] <= t["max_ms"]
        assert t["n"] == len(t["samples_ms"]) >= 1
    for e in res["nets"]:
        for key in ("net", "mode", "batch", "framework", "backend", "timing", "ms_per_iter",
                    "images_per_s"):
            assert key in e, key
        assert math.isclose(e["images_per_s"], e["batch"] / e["ms_per_iter"] * 1e3)
    rf = res["roofline"]
    assert rf["reference_device"]["peak_gflops"] == pytest.approx(67e3)
    assert "datasheet" in rf["reference_device"]["source"]
    assert isinstance(rf["rows"], list)


def test_layers_mode_numpy(tmp_path):
    rc, res = _run(tmp_path, "--layers", "tiny", "--nets", "none", "--no-telemetry")
    assert rc == 0
    _check_schema(res)
    got = {(e["layer"], e["pass"]) for e in res["layers"]}
    assert got == {("tiny.conv", "fwd"), ("tiny.conv", "bwd_data"), ("tiny.conv", "bwd_weights"),
                   ("tiny.pool", "fwd"), ("tiny.pool", "bwd"), ("tiny.fc", "fwd"),
                   ("tiny.fc", "bwd")}
    assert res["nets"] == [] and res["errors"] == []
    assert all(e["timing"]["n"] == 2 for e in res["layers"])
    # the roofline rows cover the same layer passes, with measured times
    assert {(r["layer"], r["pass"]) for r in res["roofline"]["rows"]} == got
    assert all("pct_of_floor" in r for r in res["roofline"]["rows"])


def test_nets_mode_numpy(tmp_path, capsys):
    rc, res = _run(tmp_path, "--layers", "none", "--nets", "lenet5", "--batch-size", "2",
                   "--no-telemetry")
    assert rc == 0
    _check_schema(res)
    assert [(e["net"], e["mode"]) for e in res["nets"]] == [
        ("lenet5", "forward"), ("lenet5", "forward_backward"), ("lenet5", "train_step")]
    assert all(e["batch"] == 2 and e["images_per_s"] > 0 for e in res["nets"])
    out = capsys.readouterr().out
    assert "Networks on numpy" in out and "train_step" in out


def test_compare_torch_tiny(tmp_path):
    pytest.importorskip("torch")
    rc, res = _run(tmp_path, "--layers", "tiny", "--nets", "lenet5", "--batch-size", "2",
                   "--modes", "train_step", "--compare", "torch", "--threads", "1",
                   "--no-telemetry")
    assert rc == 0, res["errors"]
    _check_schema(res)
    fws = {(e["layer"], e["pass"], e["framework"]) for e in res["layers"]}
    assert ("tiny.conv", "bwd_weights", "torch") in fws
    assert ("tiny.conv", "bwd_weights", "gpucnn") in fws
    assert {e["framework"] for e in res["nets"]} == {"gpucnn", "torch"}
    tenv = res["environment"]["torch"]
    assert tenv["num_threads"] == 1
    # the fair method: PyTorch in processes of its own (2 alternated rounds with --quick
    # defaults), with the environment we were given (nothing set for it)
    assert tenv["process"] == "own" and tenv["pid"] != os.getpid()
    assert tenv["processes"] == 2
    assert tenv["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY")
    # ours in fp32 (the default): PyTorch keeps its own defaults, recorded
    assert tenv["precision"]["precision"] == "fp32" and tenv["precision"]["mode"] == "defaults"
    comps = res["comparisons"]
    assert len(comps) == 7 + 1  # 7 layer passes, one net mode
    for c in comps:
        assert c["ratio_speed_ours_over_torch"] == pytest.approx(
            c["torch_median_ms"] / c["ours_median_ms"])
        assert len(c["ratio_per_round"]) == 2
        assert c["ratio_min"] <= c["ratio_max"]


@pytest.mark.parametrize("precision, mode, tf32_on", [("bf16", "bf16 autocast", False),
                                                      ("tf32", "TF32 on", True)])
def test_compare_torch_matches_the_precision(tmp_path, capsys, precision, mode, tf32_on):
    """With a tensor-core precision, PyTorch's process runs the same arithmetic (TF32 on, or
    bf16 autocast with bfloat16 operands), and says so."""
    torch = pytest.importorskip("torch")
    rc, res = _run(tmp_path, "--backend", "reference", "--precision", precision, "--layers",
                   "tiny", "--nets", "none", "--compare", "torch", "--threads", "1",
                   "--no-telemetry")
    assert rc == 0, res["errors"]
    assert res["environment"]["backend"]["precision"] == precision
    tp = res["environment"]["torch"]["precision"]
    assert tp["precision"] == precision and tp["mode"] == mode
    flags = [v for k, v in tp["settings"].items() if k != "autocast"]
    assert flags and all(v in (tf32_on, "tf32" if tf32_on else "ieee") for v in flags), tp
    assert ("autocast" in tp["settings"]) == (precision == "bf16")
    assert {e["framework"] for e in res["layers"]} == {"gpucnn", "torch"}
    assert f"torch in {mode}" in capsys.readouterr().out
    assert torch.backends.cuda.matmul.allow_tf32 is False  # only the child's settings moved


def test_compare_torch_without_torch_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """No PyTorch: exit status 2 and one line saying what is missing, before any timing."""
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    rc, res = _run(tmp_path, "--layers", "tiny", "--nets", "none", "--compare", "torch",
                   "--no-telemetry")
    assert rc == 2 and res is None
    err = capsys.readouterr().err
    assert "--compare torch needs PyTorch, which is not installed" in err


def test_torch_layer_passes_match_backend():
    """Ours and PyTorch's pass compute the same thing (so the comparison is fair)."""
    torch = pytest.importorskip("torch")
    from gpucnn.backends import get_backend
    B = get_backend("numpy")
    rng = np.random.default_rng(0)
    for spec in L.layer_set("tiny"):
        data = L.host_data(spec, rng, rotate=1)
        for p in spec.passes:
            ours = L.gpucnn_pass(spec, p, B, data)(0)
            theirs = L.torch_pass(spec, p, torch, "cpu", data)(0)
            ours = [a for a in (ours if isinstance(ours, tuple) else (ours,)) if a is not None]
            theirs = [a for a in (theirs if isinstance(theirs, tuple) else (theirs,))
                      if a is not None]
            if spec.kind == "pool" and p == "fwd":   # switches differ in encoding: values only
                ours, theirs = ours[:1], theirs[:1]
            assert len(ours) == len(theirs), (spec.name, p)
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(np.asarray(a), b.numpy(), rtol=1e-4, atol=1e-4,
                                           err_msg=f"{spec.name} {p}")


def test_nvml_absent_message_and_run_continues(tmp_path, capsys):
    class Broken:
        @staticmethod
        def nvmlInit():
            raise RuntimeError("NVML Shared Library Not Found")

    rc = bench_cli.main(["--quick", "--backend", "numpy", "--repeat", "1", "--warmup", "0",
                         "--gemm-size", "32", "--layers", "tiny", "--nets", "none",
                         "--json", str(tmp_path / "o.json")], nvml=Broken)
    assert rc == 0
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith("telemetry: off")]
    assert len(lines) == 1 and "NVML could not be initialised" in lines[0]
    res = json.loads((tmp_path / "o.json").read_text())
    assert res["telemetry"] == {"available": False, "reason": lines[0].split("— ")[1].split(
        "; benchmarks")[0]}
    assert res["layers"] and all(e["telemetry"] is None for e in res["layers"])


def make_fake_nvml(values):
    """A pynvml stand-in whose readings step through ``values`` (one per sample)."""
    state = {"i": 0, "init": 0, "shutdown": 0}

    def cur():
        return values[min(state["i"], len(values) - 1)]

    def memory(h):
        return types.SimpleNamespace(used=cur() * 2**20, total=80 * 2**30, free=0)

    def temperature(h, kind):
        v = 40 + cur()
        state["i"] += 1   # temperature is read last in every sample: advance here
        return v

    fake = types.SimpleNamespace(
        NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2, NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: state.__setitem__("init", state["init"] + 1),
        nvmlShutdown=lambda: state.__setitem__("shutdown", state["shutdown"] + 1),
        nvmlDeviceGetHandleByIndex=lambda i: ("gpu", i),
        nvmlDeviceGetName=lambda h: b"Fake H100",
        nvmlSystemGetDriverVersion=lambda: "999.1",
        nvmlSystemGetCudaDriverVersion=lambda: 12040,
        nvmlDeviceGetMemoryInfo=memory,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=cur(), memory=cur() / 2),
        nvmlDeviceGetClockInfo=lambda h, kind: 1000 + cur() if kind == 1 else 2600,
        nvmlDeviceGetMaxClockInfo=lambda h, kind: 1980,
        nvmlDeviceGetPowerUsage=lambda h: 1000 * (100 + cur()),
        nvmlDeviceGetTemperature=temperature,
        nvmlDeviceGetPowerManagementLimit=lambda h: 700000,
    )
    return fake, state


def test_fake_nvml_sampler_summary():
    values = [10, 50, 30, 20, 40]
    fake, state = make_fake_nvml(values)
    s = T.NvmlSampler(nvml=fake, interval_s=10)   # no thread: samples taken by hand
    info = s.device_info()
    assert info["name"] == "Fake H100" and info["driver_version"] == "999.1"
    assert info["cuda_driver_version"] == "12.4" and info["power_limit_w"] == 700
    s.sample_once()                                # outside any section: not filed
    state["i"] = 0
    with s.section("bench"):                       # samples values[0] (start) ...
        for _ in range(3):
            s.sample_once()                        # ... values[1..3] ...
    # ... and values[4] at the end
    summ = s.summary("bench")
    assert summ["samples"] == 5
    assert summ["memory_used_mib"] == {"min": 10, "median": 30, "max": 50}
    assert summ["gpu_util_pct"] == {"min": 10, "median": 30, "max": 50}
    assert summ["power_w"] == {"min": 110, "median": 130, "max": 150}
    assert summ["sm_clock_mhz"]["median"] == 1030
    assert summ["temperature_c"]["max"] == 90
    assert summ["mem_clock_mhz"] == {"min": 2600, "median": 2600, "max": 2600}
    s.close()
    assert state["shutdown"] == 1


def test_fake_nvml_in_a_run(tmp_path):
    fake, _ = make_fake_nvml([5, 15, 25])
    rc, res = _run(tmp_path, "--layers", "tiny", "--nets", "lenet5", "--batch-size", "2",
                   "--modes", "forward", "--telemetry-interval", "0.001", nvml=fake)
    assert rc == 0
    assert res["telemetry"]["available"] is True
    assert res["telemetry"]["device"]["name"] == "Fake H100"
    assert "device-wide" in res["telemetry"]["memory_note"]
    for e in res["layers"] + res["nets"]:
        nv = e["telemetry"]["nvml"]
        assert nv["samples"] >= 2
        for q in ("memory_used_mib", "gpu_util_pct", "sm_clock_mhz", "power_w",
                  "temperature_c"):
            assert nv[q]["min"] <= nv[q]["median"] <= nv[q]["max"]


def test_roofline_arithmetic_alexnet_conv1():
    spec = L.layer_set("alexnet", 128)[0]
    assert spec.name == "alexnet.conv1"
    g = spec.geom()
    assert (g.Ho, g.Wo) == (55, 55)
    flops = 2 * 128 * 64 * 55 * 55 * 3 * 11 * 11
    assert all(spec.flops(p) == flops for p in spec.passes)
    x, w, b, y = 128 * 3 * 224 * 224, 64 * 3 * 11 * 11, 64, 128 * 64 * 55 * 55
    assert spec.min_bytes("fwd") == 4 * (x + w + b + y)
    assert spec.min_bytes("bwd_data") == 4 * (y + w + x)
    assert spec.min_bytes("bwd_weights") == 4 * (y + x + w + b)
    rows = {r["pass"]: r for r in R.roofline_rows([spec])}
    fwd = rows["fwd"]
    expect = max(flops / 67e12, 4 * (x + w + b + y) / 3.35e12) * 1e3
    assert fwd["reference_floor_ms"] == pytest.approx(expect)
    assert fwd["reference_floor_ms"] == pytest.approx(flops / 67e12 * 1e3)  # compute-bound
    assert fwd["reference_bound"] == "compute"
    assert fwd["intensity_flop_per_byte"] == pytest.approx(flops / (4 * (x + w + b + y)))
    # a measured device and time give the % of the floor
    dev = R.DevicePeaks("test", 1e12, 1e11, "test")
    rows = R.roofline_rows([spec], measured=dev, timings={("alexnet.conv1", "fwd"): 100.0})
    r = rows[0]
    assert r["measured_floor_ms"] == pytest.approx(max(flops / 1e12, 4 * (x + w + b + y) / 1e11)
                                                   * 1e3)
    assert r["pct_of_floor"] == pytest.approx(r["measured_floor_ms"])  # 100 ms measured


def test_roofline_linear_and_pool_bytes():
    fc = [s for s in L.layer_set("alexnet", 16) if s.kind == "linear"][0]
    assert fc.flops("fwd") == 2 * 16 * 9216 * 4096 and fc.flops("bwd") == 2 * fc.flops("fwd")
    pool = [s for s in L.layer_set("alexnet", 16) if s.kind == "pool"][0]
    g = pool.geom()
    assert (g.Ho, g.Wo) == (27, 27)
    assert pool.min_bytes("fwd") == 4 * 16 * 64 * (55 * 55 + 2 * 27 * 27)
    row = R.roofline_rows([pool])[0]
    assert row["reference_bound"] == "memory"
    assert row["reference_floor_ms"] == pytest.approx(pool.min_bytes("fwd") / 3.35e12 * 1e3)


def test_kernel_report_failure_is_tolerated():
    def boom(targets):
        raise RuntimeError("no NVRTC")
    recs, reason = R.kernel_records(collect=boom)
    assert recs == [] and "no NVRTC" in reason
    assert "no NVRTC" in R.format_kernels(recs, reason)


def test_kernel_records_from_collect():
    rec = types.SimpleNamespace(kernel="sgemm", as_dict=lambda: {
        "kernel": "sgemm", "file": "sgemm.cu", "target": "sm_90", "compiler": "nvrtc",
        "registers": 95, "spill_stores": 0, "spill_loads": 0, "smem": 17408, "block": 256,
        "dyn_smem": 0, "blocks_per_sm": 2, "occupancy": 0.25, "limiter": "registers",
        "ok": True})
    star = types.SimpleNamespace(kernel="*")
    recs, reason = R.kernel_records(collect=lambda targets: ([star, rec], []))
    assert reason is None and len(recs) == 1 and recs[0]["registers"] == 95
    text = R.format_kernels(recs)
    assert "sgemm" in text and "25%" in text


def test_timing_summary_and_interleaving():
    s = summarize([0.004, 0.001, 0.003, 0.002, 0.005])
    assert s["median_ms"] == pytest.approx(3) and s["min_ms"] == pytest.approx(1)
    assert s["q1_ms"] == pytest.approx(2) and s["q3_ms"] == pytest.approx(4)
    assert s["iqr_ms"] == pytest.approx(2) and s["n"] == 5
    assert quantile([1.0, 2.0], 0.5) == 1.5
    order = []
    a = Runner("a", lambda i: order.append(("a", i)), WallTimer())
    b = Runner("b", lambda i: order.append(("b", i)), WallTimer())
    out = run_interleaved([a, b], warmup=1, repeat=2)
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert out["a"]["n"] == out["b"]["n"] == 2
    assert statistics.median(out["a"]["samples_ms"]) == out["a"]["median_ms"]


def test_emu_smoke(tmp_path):
    rc, res = _run(tmp_path, "--backend", "emu", "--layers", "tiny", "--nets", "lenet5",
                   "--modes", "train_step", "--repeat", "1", "--warmup", "0",
                   "--no-telemetry")
    assert rc == 0, res["errors"]
    assert res["config"]["backend"] == "emu"
    assert any("smoke run" in n for n in res["notes"])
    assert {e["backend"] for e in res["layers"] + res["nets"]} == {"emu"}


def test_bad_arguments_exit_2(capsys):
    assert bench_cli.main(["--nets", "resnet"]) == 2
    assert "unknown net" in capsys.readouterr().err
    assert bench_cli.main(["--help"]) == 0


def test_plot_written(tmp_path):
    png = tmp_path / "b.png"
    rc = bench_cli.main([*TINY, "--layers", "tiny", "--nets", "lenet5", "--batch-size", "2",
                         "--modes", "forward", "--no-telemetry", "--plot", str(png)])
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpucnn_cli_entry(tmp_path):
    """``gpucnn bench ...`` through the top-level CLI returns 0 and writes the JSON."""
    from gpucnn.cli import main
    path = tmp_path / "cli.json"
    rc = main(["bench", "--quick", "--backend", "numpy", "--layers", "tiny", "--nets", "none",
               "--repeat", "1", "--warmup", "0", "--gemm-size", "32", "--no-telemetry",
               "--quiet", "--json", str(path)])
    assert rc == 0
    res = json.loads(path.read_text())
    _check_schema(res)
    assert res["argv"][:1] == ["--quick"]


def test_bench_cli_accepts_separator(tmp_path):
    """``gpucnn bench -- --opts`` (argparse hands the ``--`` through) works too."""
    path = tmp_path / "sep.json"
    rc = bench_cli.main(["--", "--quick", "--backend", "numpy", "--layers", "none", "--nets",
                         "none", "--gemm-size", "32", "--no-telemetry", "--quiet", "--json",
                         str(path)])
    assert rc == 0 and json.loads(path.read_text())["schema"] == "gpucnn-bench/1"


def test_cupy_event_timer_with_fake_cupy():
    """The GPU timer records events around the call and reads their elapsed time."""
    from gpucnn.bench.timing import CupyEventTimer
    calls = []

    class Event:
        def record(self):
            calls.append("record")

        def synchronize(self):
            calls.append("event-sync")

    class Device:
        def synchronize(self):
            calls.append("device-sync")

    cuda = types.SimpleNamespace(Event=Event, Device=Device,
                                 get_elapsed_time=lambda a, b: 12.5)  # milliseconds
    timer = CupyEventTimer(types.SimpleNamespace(cuda=cuda))
    assert timer.time(lambda i: calls.append(f"run{i}"), 3) == pytest.approx(0.0125)
    assert calls == ["device-sync", "record", "run3", "record", "event-sync"]



def test_threads_option_limits_and_restores_blas(monkeypatch, tmp_path):
    """--threads: torch gets N threads; with threadpoolctl the BLAS is limited during the run
    and restored afterwards (a fake threadpoolctl records the calls)."""
    import sys
    calls = []

    class Limits:
        def __init__(self, limits, user_api):
            calls.append(("limit", limits, user_api))

        def restore_original_limits(self):
            calls.append(("restore",))

    fake = types.SimpleNamespace(
        threadpool_limits=Limits,
        threadpool_info=lambda: [{"user_api": "blas", "internal_api": "openblas",
                                  "version": "x", "num_threads": 3, "filepath": "f"}])
    monkeypatch.setitem(sys.modules, "threadpoolctl", fake)
    rc, res = _run(tmp_path, "--layers", "none", "--nets", "none", "--threads", "1",
                   "--no-telemetry")
    assert rc == 0
    assert calls == [("limit", 1, "blas"), ("restore",)]
    assert res["environment"]["blas"]["source"] == "threadpoolctl"
    assert res["environment"]["threads"]["blas"] == 3   # what the fake reports
    assert any("threadpoolctl" in n for n in res["notes"])


def test_conv_algorithm_roofline_estimate():
    """im2col's estimated traffic is the compulsory bytes plus writing and reading its column
    matrix once; implicit's is the compulsory bytes (AlexNet conv2, batch 128)."""
    from gpucnn.bench.layers import layer_set
    conv2 = next(s for s in layer_set("alexnet", 128) if s.name == "alexnet.conv2")
    cols = 4 * 64 * 5 * 5 * 27 * 27 * 128
    for p in conv2.passes:
        assert R.conv_algo_bytes(conv2, p, "implicit") == conv2.min_bytes(p)
        assert R.conv_algo_bytes(conv2, p, "im2col") - conv2.min_bytes(p) == 2 * cols
    rows = R.conv_algo_rows([conv2])
    assert len(rows) == 3 and all(r["im2col_bytes"] > r["implicit_bytes"] for r in rows)
    h200 = f"implicit_floor_ms[{R.H200_SXM.name}]"
    assert rows[0][h200] == pytest.approx(1e3 * conv2.flops("fwd") / 67e12)
    assert "| alexnet.conv2 | fwd |" in R.format_conv_algos(rows)
