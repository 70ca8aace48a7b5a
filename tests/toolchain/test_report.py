"""gpucnn.toolchain.report: the resource table, the JSON report and the command line
(``python -m gpucnn.toolchain``, ``gpucnn kernels --report``, and the old
``python -m gpucnn.kernel_report``)."""
import json
import subprocess
import sys

from gpucnn.toolchain.report import main

from .helpers import write


def test_report_cli(tmp_path, capsys, nvrtc):
    good = write(tmp_path, "good.cu", '// gpucnn: block=128\nextern "C" __global__ void '
                  'inc(float* y, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; '
                  'if (i < n) y[i] += 1.0f; }\n')
    bad = write(tmp_path, "bad.cu", 'extern "C" __global__ void k(float* y) '
                 '{ y[0] = INFINITY; }\n')
    out_json = tmp_path / "r" / "report.json"
    assert main([str(good), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "good:inc" in text and "all gates passed" in text
    data = json.loads(out_json.read_text())
    assert data["ok"] is True and data["toolchain"]["nvrtc"]["version"]
    assert {(r["kernel"], r["target"]) for r in data["records"]} == {("inc", "sm_80"),
                                                                     ("inc", "sm_90")}
    assert main([str(good), str(bad), "--targets", "sm_90"]) == 1
    text = capsys.readouterr().out
    assert "gate failures" in text and "INFINITY" in text


def test_entry_points_run_the_same_report(tmp_path):
    import gpucnn.kernel_report as old
    from gpucnn import cli
    assert old.main is main
    p = write(tmp_path, "empty.cu", "// no kernels\n")
    for argv in (["-m", "gpucnn.toolchain"], ["-m", "gpucnn.kernel_report"]):
        out = subprocess.run([sys.executable, *argv, "--no-nvrtc", str(p)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "all gates passed" in out.stdout
    assert cli.main(["kernels", "--report", "--no-nvrtc", str(p)]) == 0
