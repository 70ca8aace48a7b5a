"""The kernels/ folder ships inside the installed package as gpucnn.kernels."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_kernels_and_emulator_sources(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("gpucnn-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    cu = {Path(n).name for n in names if n.startswith("gpucnn/kernels/") and n.endswith(".cu")}
    expected = {p.name for p in (ROOT / "kernels").glob("*.cu")}
    assert expected and cu == expected
    assert any(n.startswith("gpucnn/backends/emu/") and n.endswith(".h") for n in names)
    assert "gpucnn/cli.py" in names
