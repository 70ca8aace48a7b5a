"""The ops: for each one, its geometry, its plain reference, its tuned CPU path (if any) and
its device launches, one folder hop from its kernel and its test.

| op                          | kernel (kernels/)                 | here                  | tests/ops/          |
|-----------------------------|-----------------------------------|-----------------------|---------------------|
| conv2d (+ bias, ReLU)       | im2col.cu, sgemm.cu, conv_reduce.cu | conv/ (reference, cpu, device) | test_conv.py |
| conv2d + ReLU + max-pool    | (composed)                        | conv/cpu_fused.py     | test_fused.py       |
| max/avg/LP pooling          | pool.cu                           | pool/ (reference, cpu, device) | test_pool.py |
| GEMM                        | sgemm.cu                          | gemm.py               | test_gemm.py        |
| linear (+ ReLU)             | sgemm.cu, conv_reduce.cu          | linear.py             | test_linear.py      |
| ReLU, dropout               | activation.cu                     | activation.py         | test_activation.py  |
| softmax cross-entropy       | loss.cu                           | loss.py               | test_loss.py        |
| local response norm         | lrn.cu                            | lrn.py                | test_lrn.py         |
| SGD / Adam updates          | optim.cu                          | optim.py              | test_optim.py       |

Backends (:mod:`gpucnn.backends`) validate arguments once (``base.py``) and call these in one
line each: ``reference`` the plain definitions, ``numpy`` the tuned CPU paths, ``cuda``/``emu``
the device launches (helpers in ``launch.py``). Ops import the toolchain (block sizes, limits)
and the CPU runtime (:mod:`gpucnn.cpu`), never a backend.
"""
