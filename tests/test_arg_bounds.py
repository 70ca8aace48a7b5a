"""Resource bounds on command-line arguments (issue 22 part 5): sizes and counts beyond sane
maxima, NaN/inf, and sizes whose memory the machine cannot give are one clear error (exit 2)
before anything is allocated; `verify` never fails without a line saying why; `kernels` gates
only targets it knows. Every command runs in this process."""
import contextlib
import io

import numpy as np
import pytest

from gpucnn import cli
from gpucnn.bench import cli as bench_cli
from gpucnn.data import encode_idx
from gpucnn.verify import command as verify_command


def run(main, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


TRAIN = ["train", "--backend", "numpy", "--data-dir", "/nonexistent"]
BENCH = ["--backend", "numpy", "--quick", "--no-telemetry", "--quiet"]


@pytest.mark.parametrize("main, argv, message", [
    (cli.main, [*TRAIN, "--epochs", "10000000"], "--epochs: expected an integer >= 1 and <="),
    (cli.main, [*TRAIN, "--epochs", "9" * 5000], "--epochs: expected an integer >= 1"),
    (cli.main, [*TRAIN, "--batch-size", str(2 ** 40)], "--batch-size: expected an integer"),
    (cli.main, [*TRAIN, "--limit", str(2 ** 31)], "--limit: expected an integer >= 1 and"),
    (cli.main, [*TRAIN, "--test-limit", "0"], "--test-limit: expected an integer >= 1"),
    (cli.main, [*TRAIN, "--save-retry-s", "1e308"], "--save-retry-s: expected a finite number "
                                                    ">= 0 and <= 3600, got '1e308'"),
    (cli.main, [*TRAIN, "--save-retry-s", "nan"], "--save-retry-s: expected a finite number"),
    (cli.main, [*TRAIN, "--seed", str(2 ** 64)], "--seed: expected an integer >= 0 and <="),
    (cli.main, ["summary", "lenet5", "--input", "1,999999,1"], "--input: expected C,H,W"),
    (bench_cli.main, [*BENCH, "--gemm-size", "1000000"], "--gemm-size: expected an integer"),
    (bench_cli.main, [*BENCH, "--repeat", "0"], "--repeat: expected an integer >= 1"),
    (bench_cli.main, [*BENCH, "--telemetry-interval", "nan"], "--telemetry-interval: expected"),
    (bench_cli.main, [*BENCH, "--seed", "-1"], "--seed: expected an integer >= 0"),
    (bench_cli.main, [*BENCH, "--rotate", "100000"], "--rotate: expected an integer >= 1 and"),
    (verify_command.main, ["lenet5", "--batch", "1000000000"], "--batch: expected an integer "
                                                               ">= 1 and <= 4096"),
    (verify_command.main, ["lenet5", "--tolerance", "1e-300"], "below float32's resolution"),
    (verify_command.main, ["lenet5", "--tolerance", "1"], "passes any result"),
    (verify_command.main, ["lenet5", "--tolerance", "inf"], "expected a finite number > 0"),
    (verify_command.main, ["lenet5", "--seed", "nan"], "--seed: expected an integer"),
    (cli.main, ["kernels", "--report", "--targets", "bogus"], "sm_bogus: no limits known"),
    (cli.main, ["kernels", "--report", "--targets", ","], "--targets: expected comma-separated"),
    (cli.main, ["kernels", "--report", "--jobs", "0"], "--jobs: expected an integer >= 1"),
])
def test_out_of_range_arguments_are_usage_errors(main, argv, message):
    rc, out, err = run(main, argv)
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert "all gates passed" not in out


def test_sizes_beyond_memory_name_the_option_and_the_memory(monkeypatch):
    monkeypatch.setattr("gpucnn.membudget.host_available_bytes", lambda: 2 ** 30)
    rc, _, err = run(bench_cli.main, [*BENCH, "--gemm-size", "131072"])
    assert rc == 2 and "--gemm-size 131072 (four 131072 x 131072 float32 matrices) needs at " \
                       "least about 256.0 GiB, but only 1.0 GiB of host memory" in err
    rc, _, err = run(bench_cli.main, [*BENCH, "--nets", "lenet5", "--layers", "none",
                                      "--batch-size", "1000000"])
    assert rc == 2 and "--batch-size 1000000 of net lenet5 needs at least about" in err
    rc, _, err = run(bench_cli.main, [*BENCH, "--nets", "none", "--layers", "alexnet",
                                      "--batch-size", "100000"])
    assert rc == 2 and "batch 100000 of layer alexnet.conv1 needs" in err
    # verify: a real bound, whatever this machine has (4096 x 3 x 4096 x 4096 samples)
    rc, _, err = run(verify_command.main, ["lenet5", "--backend", "emu", "--batch", "4096",
                                           "--input", "3,4096,4096"])
    assert rc == 2 and "--batch 4096 at --input 3,4096,4096 needs at least about" in err
    assert len(err.strip().splitlines()) == 1


def test_train_batch_beyond_memory_is_refused_before_the_data_upload(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    for prefix, n in (("train", 32), ("t10k", 8)):
        (d / f"{prefix}-images-idx3-ubyte").write_bytes(
            encode_idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)))
        (d / f"{prefix}-labels-idx1-ubyte").write_bytes(
            encode_idx(rng.integers(0, 10, n, dtype=np.uint8)))
    monkeypatch.setattr("gpucnn.train.host_available_bytes", lambda: 64 * 1024)
    rc, out, err = run(cli.main, ["train", "--backend", "numpy", "--data-dir", tmp_path,
                                  "--batch-size", "32", "--no-progress"])
    assert rc == 2 and "--batch-size 32 (32 images of lenet5 per step) needs at least about" \
                       in err and "of host memory is available" in err
    assert "epoch 1" not in out


def test_a_failing_verify_says_why_on_stderr(monkeypatch):
    doc = {"layers": [{"index": 0, "members": [], "layer": "Conv2d", "passed": False,
                       "tolerance": 1e-4}],
           "summary": {"passed": False, "seconds": 0.5}, "environment": {}}

    class Failed:
        exit_status = 1

        def to_dict(self):
            return doc

    monkeypatch.setattr(verify_command, "verify_model", lambda *a, **k: Failed())
    monkeypatch.setattr(verify_command, "format_table", lambda d: "the table")
    rc, out, err = run(verify_command.main, ["lenet5", "--backend", "emu"])
    assert rc == 1 and out.strip() == "the table"
    assert err.strip() == ("gpucnn verify: FAIL: 1 of 1 layers out of tolerance or failing: "
                           "0 Conv2d; 0.5 s (tolerance 0.0001, relative)")
