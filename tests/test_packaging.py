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
    headers = {Path(n).name for n in names if n.startswith("gpucnn/kernels/") and n.endswith(".cuh")}
    assert headers == {p.name for p in (ROOT / "kernels").glob("*.cuh")} and headers
    assert expected and cu == expected
    assert any(n.startswith("gpucnn/backends/emu/") and n.endswith(".h") for n in names)
    assert "gpucnn/cli.py" in names
    # every subpackage of the source tree ships (find_packages in setup.py)
    for init in (ROOT / "gpucnn").rglob("__init__.py"):
        assert init.relative_to(ROOT).as_posix() in names, init
    # The GPU extras bring CuPy *with* the CUDA libraries it loads at run time ([ctk]), so a
    # machine with only a driver gets a working cuda backend.
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line.split(":", 1)[1].strip().replace(" ", "")
                for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    for extra, cupy in (("cuda12", "cupy-cuda12x"), ("cuda13", "cupy-cuda13x")):
        mine = [r for r in requires if r.endswith(f'extra=="{extra}"')]
        assert any(r.startswith(f"{cupy}[ctk]>=14") for r in mine), (extra, mine)
        assert any(r.startswith("nvidia-ml-py") for r in mine), (extra, mine)
