"""``gpucnn bench``: layer and network throughput, measured peaks, roofline, GPU telemetry.

Modules: :mod:`.cli` (the command line; ``gpucnn bench ...`` calls :func:`.cli.main`),
:mod:`.suite` (runs a configuration, returns the JSON-able result), :mod:`.layers` (the
convnet-benchmarks AlexNet layer set and LeNet-5's layers), :mod:`.nets` (LeNet-5, AlexNet,
AlexNet-CIFAR: forward, forward+backward, training step), :mod:`.timing`, :mod:`.peak`
(measured SGEMM peak and copy bandwidth), :mod:`.roofline`, :mod:`.telemetry` (NVML sampler),
:mod:`.env`, :mod:`.report`, :mod:`.plot`.

Method: random inputs (never zeros) from a pool of buffers used in rotation; warm-up runs
excluded; the device synchronized (CUDA events on a GPU) around every timed run; median, min,
max and IQR of the repeated runs; PyTorch (imported only with ``--compare torch``) run
interleaved with ours, A B A B, with the same thread count.
"""
from .cli import main

__all__ = ["main"]
