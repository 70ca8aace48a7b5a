"""``gpucnn verify`` (gpucnn/verify/): a model's layers on the device backend against the
float64 reference — the table, the verdict and exit status, broken backends caught in the
layer they break, checkpoints, the JSON document and bad usage."""
import argparse
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from gpucnn.backends.device import DeviceBackend, make_emu_backend
from gpucnn.checkpoint import load_checkpoint, save_checkpoint
from gpucnn.models import build_model
from gpucnn.train import TrainConfig, train
from gpucnn.verify import (ORDERS, PASSES, TOLERANCES, add_arguments, main, run,
                           switch_mismatches, tied_windows, verify_model, weights_digest)

# lenet5's rows: its layers as Sequential runs them (fused members in the range), then the loss
LENET_ROWS = ["0-2", "3-5", "6", "7-8", "9-10", "11", "loss"]
POOL_ROWS = {"0-2", "3-5"}
BATCH = ["--batch", "2"]  # small: the whole file stays well under a minute


def _args(*argv):
    parser = argparse.ArgumentParser(prog="gpucnn verify")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _rows(text):
    """{row index: its cells} of a printed table (cells split on runs of 2+ spaces)."""
    rows = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0] in LENET_ROWS and len(cells) >= 8:
            rows[cells[0]] = cells
    return rows


def _failed(doc):
    return {l["layer"] for l in doc["layers"] if not l["passed"]}


def _row_index(layer):
    return f"{layer['index']}-{layer['members'][-1]}" if layer["members"] else str(layer["index"])


def _check_schema(doc, n_layers, orders=("forward",)):
    """The documented JSON layout: every figure per layer and per run, summary, environment."""
    assert set(doc) == {"layers", "summary", "environment"}
    assert len(doc["layers"]) == n_layers
    num = (int, float, type(None))
    for l in doc["layers"]:
        assert isinstance(l["index"], int) or l["index"] == "loss"
        assert all(isinstance(m, int) for m in l["members"])
        assert isinstance(l["layer"], str) and l["layer"]
        assert all(isinstance(d, int) and d > 0 for d in l["output_shape"])
        for key in ("forward_error", "input_grad_error", "param_grad_error",
                    "switch_mismatches", "switch_ties", "tied_windows"):
            assert isinstance(l[key], num), key
        assert isinstance(l["tolerance"], float) and l["tolerance"] > 0
        assert all(isinstance(v, float) for v in l["param_grad_errors"].values())
        assert isinstance(l["passed"], bool) and isinstance(l["errors"], list)
        assert isinstance(l["conv_algorithms"], dict)
        # one run per (order, pass), each with its own figures
        assert sorted((r["order"], r["inputs"]) for r in l["runs"]) == sorted(
            (o, p) for o in orders for p in PASSES)
        for r in l["runs"]:
            assert {"forward_error", "input_grad_error", "param_grad_errors",
                    "switch_mismatches", "switch_ties", "tied_windows", "error"} <= set(r)
    s = doc["summary"]
    for key in ("model", "model_config", "weights_sha256", "backend", "device", "precision",
                "tolerance", "orders", "passes", "batch", "input_shape", "seed", "algo",
                "end_to_end", "seconds", "passed", "layers", "failed", "worst_forward_error",
                "worst_input_grad_error", "worst_param_grad_error", "worst_switch_mismatches"):
        assert key in s, key
    assert s["layers"] == n_layers and s["orders"] == list(orders)
    assert set(s["end_to_end"]) == set(orders)
    env = doc["environment"]
    for key in ("backend", "device", "driver", "cupy", "nvrtc", "conv_algorithms", "host"):
        assert key in env, key
    assert env["backend"] == s["backend"]


def _strict_json(path):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


# ---- a healthy backend passes ------------------------------------------------------------------
@pytest.mark.device  # reads --device-backend itself (no device fixture marks it)
def test_lenet5_verifies_with_a_per_layer_table(request, tmp_path, capsys):
    backend = request.config.getoption("--device-backend")  # emu here; cuda on a GPU
    out = tmp_path / "verify.json"
    assert main(["lenet5", "--backend", backend, *BATCH, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "forward" in text and "input grad" in text and "param grad" in text
    rows = _rows(text)
    assert list(rows) == LENET_ROWS
    assert all(r[-1] == "PASS" for r in rows.values()), text
    assert rows["0-2"][2] == "2x6x14x14" and rows["loss"][2] == "scalar"
    assert text.rstrip().splitlines()[-1].startswith("PASS: all 7 layers within tolerance")
    doc = _strict_json(out)
    _check_schema(doc, len(LENET_ROWS))
    assert doc["summary"]["passed"] and doc["summary"]["failed"] == []
    assert doc["summary"]["tolerance"] == TOLERANCES["fp32"][0]
    for l in doc["layers"]:
        integer = [r for r in l["runs"] if r["inputs"] == "integer"]
        if l["index"] != "loss":
            # integer inputs and 4-bit weights: every sum is exact in float32
            assert all(r["forward_error"] == 0.0 for r in integer), l["layer"]
        if _row_index(l) in POOL_ROWS:
            # ties were there to decide, and every switch matched the reference's
            assert all(r["tied_windows"] > 0 and r["switch_mismatches"] == 0 for r in integer)


def test_orders_repeat_the_run_in_each_thread_order(tmp_path):
    out = tmp_path / "orders.json"
    assert main(["lenet5", "--backend", "emu", *BATCH, "--orders", "forward,reverse,random",
                 "--json", str(out)]) == 0
    doc = _strict_json(out)
    _check_schema(doc, len(LENET_ROWS), orders=ORDERS)
    assert doc["environment"]["emulator_orders"] == list(ORDERS)
    assert doc["environment"]["emulator_checks"] is True


def test_a_built_model_verifies_through_the_api():
    model = build_model("lenet5", backend="numpy", seed=5)
    result = verify_model(model, backend="emu", batch=1, seed=5)
    assert result.passed and result.exit_status == 0
    doc = result.to_dict()
    assert doc["summary"]["model"] == "lenet5"
    assert doc["summary"]["weights_sha256"] == weights_digest(model.state_dict())


# ---- broken backends: exactly the broken layer fails ------------------------------------------
class _Broken(DeviceBackend):
    """The emu backend (checks on) with one op of one layer spoiled by ``spoil``: its one
    way to run an op (``plan``) wraps the implementation the layer would get."""

    def __init__(self, spoil):
        base = make_emu_backend(checks=True, seed=3)
        super().__init__(base.module, np, "emu", base.max_blocks, base.device_name)
        self.spoil = spoil

    def plan(self, op, setup, *specs):
        plan = super().plan(op, setup, *specs)
        run, spoil = plan.run, getattr(self, "_SPOILERS", {}).get((op.name, self.spoil))
        if spoil is not None:
            plan.run = lambda *args: spoil(self, run, *args)
        return plan

    def _linear(self, run, x, w, b):
        y = run(x, w, b)
        if w.shape[0] == 84 and self.spoil == "output":
            y = y.copy()
            y.flat[3] += 1.0 + abs(y).max()  # one wrong element in Linear(120->84)'s output
        if w.shape[0] == 84 and self.spoil == "out of bounds":
            # a real kernel writing one element past the end of its output buffer
            short = self.empty((y.size - 1,), np.float32)
            self.ctx.kernel("relu_forward")((1, 1, 1), (64, 1, 1),
                                            (y.reshape(-1), short, np.int32(y.size)))
        return y

    def _conv_pool(self, run, x, w, b):
        y, sw = run(x, w, b)
        if w.shape[0] == 16:
            # the second conv's first window with a positive maximum (so a gradient flows
            # through it): point at its neighbour column (2x2 windows start on even columns
            # of a 10-wide plane, so index ^ 1 stays in the window)
            sw = sw.copy()
            sw.flat[np.flatnonzero(y > 0)[0]] ^= 1
        return y, sw

    def _conv_pool_backward(self, run, dy, switches, y, x, w, *grad_outs):
        dx, dw, db = run(dy, switches, y, x, w, *grad_outs)
        if w.shape[0] == 6:
            dw = dw * 1.01
        return dx, dw, db

    _SPOILERS = {("linear", "output"): _linear, ("linear", "out of bounds"): _linear,
                 ("conv2d_relu_maxpool", "switch"): _conv_pool,
                 ("conv2d_relu_maxpool_backward", "weight grad"): _conv_pool_backward}


@pytest.mark.parametrize("spoil,row,figure", [
    ("output", "9-10", "forward_error"),
    ("switch", "3-5", "switch_mismatches"),
    ("weight grad", "0-2", "param_grad_error"),
])
def test_a_broken_op_fails_exactly_its_layer(spoil, row, figure, tmp_path, capsys):
    args = _args("lenet5", *BATCH, "--json", str(tmp_path / "broken.json"))
    args.backend = _Broken(spoil)
    assert run(args) == 1
    rows = _rows(capsys.readouterr().out)
    assert {k for k, r in rows.items() if r[-1] == "FAIL"} == {row}
    doc = _strict_json(tmp_path / "broken.json")
    bad = next(l for l in doc["layers"] if _row_index(l) == row)
    limit = 0 if figure == "switch_mismatches" else bad["tolerance"]
    assert bad[figure] > limit, bad
    # the other figures of that layer are clean: the fault is pinned to what was spoiled
    for other in {"forward_error", "input_grad_error", "param_grad_error"} - {figure}:
        assert bad[other] is None or bad[other] <= bad["tolerance"], (other, bad)
    assert not doc["summary"]["passed"] and doc["summary"]["failed"] == [bad["layer"]]


def test_an_out_of_bounds_access_is_reported_in_its_layer(capsys):
    args = _args("lenet5", *BATCH)
    args.backend = _Broken("out of bounds")
    assert run(args) == 1
    out = capsys.readouterr().out
    assert {k for k, r in _rows(out).items() if r[-1] == "FAIL"} == {"9-10"}
    notes = [line for line in out.splitlines() if line.startswith("  layer 9-10:")]
    assert notes and all("EmuMemoryError" in n and "relu_forward" in n for n in notes), out


def test_switch_mismatches_tell_near_ties_from_broken_conventions():
    pool_in = np.array([1.0, 1.0, 0.5, 0.5 + 1e-9]).reshape(1, 1, 1, 4)
    ref = np.array([0, 3], np.int32).reshape(1, 1, 1, 2)  # windows [0, 1] and [2, 3]
    dev = np.array([1, 2], np.int32).reshape(1, 1, 1, 2)
    # window 1: an exact tie decided against the first-maximum rule is a mismatch; window 2:
    # values 1e-9 apart are a near-tie float32 may decide either way, unless inputs are exact
    assert switch_mismatches(dev, ref, pool_in, exact=False, tol=1e-4) == (1, 1)
    assert switch_mismatches(dev, ref, pool_in, exact=True, tol=1e-4) == (2, 0)
    wild = np.array([0, 99], np.int32).reshape(1, 1, 1, 2)  # outside the plane
    assert switch_mismatches(wild, ref, pool_in, exact=False, tol=1e-4) == (1, 0)
    assert switch_mismatches(ref, ref, pool_in, exact=True, tol=1e-4) == (0, 0)


def test_tied_windows_counts_windows_whose_maximum_repeats():
    from gpucnn.nn import MaxPool2d
    x = np.array([[3, 3, 1, 2], [0, 1, 0, 0]], np.float64).reshape(1, 1, 2, 4)
    assert tied_windows(x, MaxPool2d(2)) == 1  # [3 3; 0 1] holds its 3 twice, [1 2; 0 0] not
    assert tied_windows(np.zeros((1, 1, 2, 4)), MaxPool2d(2)) == 2


# ---- checkpoints ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A real `gpucnn train` checkpoint: one epoch on 64 Fashion-MNIST images."""
    path = tmp_path_factory.mktemp("ckpt") / "lenet5.npz"
    train(TrainConfig(model="lenet5", dataset="fashion-mnist", epochs=1, batch_size=32,
                      limit=64, test_limit=64, backend="numpy", checkpoint=str(path),
                      progress=False))
    return path


def test_a_checkpoint_verifies_with_its_own_weights(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "ckpt.json"
    assert main([str(trained_checkpoint), "--backend", "emu", *BATCH, "--json", str(out)]) == 0
    assert all(r[-1] == "PASS" for r in _rows(capsys.readouterr().out).values())
    doc = _strict_json(out)
    _check_schema(doc, len(LENET_ROWS))
    arrays, _ = load_checkpoint(trained_checkpoint)
    trained = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    assert doc["summary"]["model"] == str(trained_checkpoint)
    assert doc["summary"]["model_config"]["name"] == "lenet5"
    assert doc["summary"]["weights_sha256"] == weights_digest(trained)
    fresh = build_model("lenet5", backend="numpy", seed=0).state_dict()
    assert weights_digest(trained) != weights_digest(fresh)  # training moved them


# ---- bad usage: exit status 2 and a message naming the problem --------------------------------
def _misfit_checkpoint(tmp_path):
    params = build_model("lenet5", backend="numpy").state_dict()
    params["0.weight"] = np.zeros((6, 1, 3, 3), np.float32)  # lenet5's conv1 is 5x5
    path = tmp_path / "misfit.npz"
    save_checkpoint(path, {f"model/{k}": v for k, v in params.items()},
                    {"schema_version": 2, "model": {"name": "lenet5", "kwargs": {},
                                                    "input_shape": [1, 28, 28]}})
    return path


@pytest.mark.parametrize("argv,message", [
    (["nosuchnet"], "MODEL must be one of lenet5"),
    (["lenet5", "--input", "1,28"], "--input: expected C,H,W"),
    (["lenet5", "--input", "3,32,32"], "input_shape (--input) 3,32,32 does not fit lenet5"),
    (["{tmp}/missing.npz"], "no such checkpoint file"),
    (["{misfit}"], "does not fit its model lenet5"),
    (["lenet5", "--backend", "cuda", "--orders", "forward,reverse"],
     "--orders: thread orders can be chosen only on the emulator"),
    (["lenet5", "--orders", "sideways"], "--orders: expected a comma-separated list"),
    (["lenet5", "--tolerance", "0"], "--tolerance: expected a finite number > 0"),
    (["lenet5", "--batch", "0"], "--batch: expected an integer >= 1"),
    (["lenet5", "--json", "{tmp}"], ": is a directory; give a file name"),
])
def test_bad_usage_exits_2_with_a_clear_message(argv, message, tmp_path, capsys):
    fill = {"tmp": tmp_path, "misfit": _misfit_checkpoint(tmp_path) if "{misfit}" in argv
            else None}
    assert main([a.format(**fill) for a in argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("algo", ["im2col", "implicit"])
def test_algo_checks_that_algorithm_and_records_it_per_layer(algo, tmp_path, capsys):
    assert main(["lenet5", "--backend", "emu", *BATCH, "--algo", "nosuch"]) == 2
    assert "--algo) must be one of auto" in capsys.readouterr().err
    out = tmp_path / "algo.json"
    assert main(["lenet5", "--backend", "emu", *BATCH, "--algo", algo, "--json", str(out)]) == 0
    doc = _strict_json(out)
    assert doc["summary"]["algo"] == algo
    for l in doc["layers"]:
        ran = set(l["conv_algorithms"].values())
        # the conv rows ran the algorithm asked for, forward and backward; the others none
        assert ran == ({algo} if _row_index(l) in POOL_ROWS else set()), l["layer"]
        assert all(k.startswith(("forward", "backward")) for k in l["conv_algorithms"])
    assert set(doc["environment"]["conv_algorithms"].values()) == {algo}


# ---- help ---------------------------------------------------------------------------------------
def test_help_states_every_default_and_the_tolerance_table(capsys):
    parser = argparse.ArgumentParser(prog="gpucnn verify")
    add_arguments(parser)
    for a in parser._actions:
        if a.option_strings and a.dest != "help":
            assert "default" in (a.help or ""), a.option_strings
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for precision, (tol, _) in TOLERANCES.items():
        assert f"{precision:<10} {tol:<10.0e}" in text
    assert "integer" in text and "normal" in text  # which inputs the two passes use


def test_python_dash_m_runs_the_command():
    done = subprocess.run([sys.executable, "-m", "gpucnn.verify", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: gpucnn verify")
