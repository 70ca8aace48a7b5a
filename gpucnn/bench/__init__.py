"""``gpucnn bench``: layer and network throughput, measured peaks, roofline, GPU telemetry.

Modules: :mod:`.cli` (the command line; ``gpucnn bench ...`` calls :func:`.cli.main`),
:mod:`.suite` (runs a configuration, returns the JSON-able result), :mod:`.layers` (the
convnet-benchmarks AlexNet layer set and LeNet-5's layers), :mod:`.nets` (LeNet-5, AlexNet,
AlexNet-CIFAR: forward, forward+backward, training step), :mod:`.timing`, :mod:`.peak`
(measured SGEMM peak and copy bandwidth), :mod:`.roofline`, :mod:`.telemetry` (NVML sampler),
:mod:`.env`, :mod:`.report`, :mod:`.plot`, :mod:`.torch_side` (PyTorch's own process).

Method: random inputs (never zeros) from a pool of buffers used in rotation; warm-up runs
excluded; the device synchronized (CUDA events on a GPU) around every timed run; median, min,
max and IQR of the repeated runs. PyTorch (``--compare torch``) runs the way a user would
compare: in its own process with its own default settings (nothing set in its environment),
the same thread count through its own API, processes alternated with our rounds (ours,
torch, torch, ours, ...); it is never imported into our process.
"""
from .cli import main

__all__ = ["main"]
