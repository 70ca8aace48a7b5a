"""PyTorch's arithmetic matching each of our precisions (gpucnn/ops/precision.py), for the
benchmarks that compare the two: ``gpucnn bench --compare torch --precision P`` (its PyTorch
process, gpucnn/bench/torch_side.py) and bench/gpu_compare.py (bench/gpu_validate.sh).

Modes: ``off`` (TF32 off for matmul and cuDNN convolutions: full float32), ``on`` (TF32 on
for both), ``bf16`` (``torch.autocast(device, dtype=torch.bfloat16)``, operands held in
bfloat16, as an autocast training step holds its activations). fp32 and 3xtf32 (FP32-accurate;
PyTorch has no 3xTF32 mode for cuDNN) compare with ``off``, tf32 with ``on``, bf16 with
``bf16``. The TF32 switches only act on CUDA; on the CPU they are recorded, not felt.

PyTorch is passed in, never imported here: it is not a dependency of gpucnn.
"""
from __future__ import annotations

__all__ = ["TORCH_MODES", "TORCH_MODE", "TORCH_MODE_NAME", "MODE_PRECISION", "set_tf32",
           "tf32_state", "set_mode", "under_mode", "mode_dtype"]

TORCH_MODES = ("off", "on", "bf16")
TORCH_MODE = {"fp32": "off", "tf32": "on", "3xtf32": "off", "bf16": "bf16"}
MODE_PRECISION = {"off": "fp32", "on": "tf32", "bf16": "bf16"}   # a mode's own precision
TORCH_MODE_NAME = {"off": "TF32 off", "on": "TF32 on", "bf16": "bf16 autocast"}


def _new_tf32_api(torch):
    """PyTorch >= 2.9's successors of the allow_tf32 flags (fp32_precision), or None."""
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        return matmul, conv
    return None


def set_tf32(torch, on):
    """TF32 for matmul (cuBLAS) and convolutions (cuDNN) to ``on``; the switches as read
    back. Where PyTorch has fp32_precision ('tf32' / 'ieee': allow_tf32 True / False) only it
    is used: mixing it with the old flags is an error there."""
    new = _new_tf32_api(torch)
    if new:
        for switch in new:
            switch.fp32_precision = "tf32" if on else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
    return tf32_state(torch)


def tf32_state(torch):
    """The TF32 switches as PyTorch reports them."""
    new = _new_tf32_api(torch)
    if new:
        return {"torch.backends.cuda.matmul.fp32_precision": new[0].fp32_precision,
                "torch.backends.cudnn.conv.fp32_precision": new[1].fp32_precision}
    return {"torch.backends.cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "torch.backends.cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32)}


def set_mode(torch, device, mode):
    """Put PyTorch in ``mode`` (off / on / bf16): the settings as read back. bf16 runs with
    TF32 off (nothing it times multiplies in float32) under autocast."""
    if mode not in TORCH_MODES:
        raise ValueError(f"PyTorch mode must be one of {', '.join(TORCH_MODES)}, not {mode!r}")
    state = set_tf32(torch, mode == "on")
    if mode == "bf16":
        state = {**state, "autocast": f"torch.autocast({device!r}, dtype=torch.bfloat16), "
                                      f"operands held in bfloat16"}
    return state


def under_mode(torch, device, mode, fn):
    """``fn`` run under ``mode``'s autocast (bf16), or ``fn`` itself."""
    if mode != "bf16":
        return fn

    def run(*args):
        with torch.autocast(device, dtype=torch.bfloat16):
            return fn(*args)
    return run


def mode_dtype(torch, mode):
    """The dtype ``mode`` holds a layer's operands in (None: float32, as given)."""
    return torch.bfloat16 if mode == "bf16" else None
