"""CUDA C sources (shipped as package data: gpucnn.kernels)."""
