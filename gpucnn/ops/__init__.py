"""The ops: for each one, its geometry, its plain reference, its tuned CPU path (if any), its
device plans and its entry points, one folder hop from its kernel and its test.

| op                        | kernel (kernels/)                  | here                      | tests/ops/         |
|---------------------------|------------------------------------|---------------------------|--------------------|
| conv2d (+ bias, ReLU)     | im2col.cu, sgemm.cu, conv_reduce.cu, conv_implicit.cu, conv_implicit_tc.cu | conv/ | test_conv*.py |
| conv2d + ReLU + max-pool  | (composed; fused CPU paths)        | conv/api.py, wide_fused.py | test_fused.py      |
| max/avg/LP pooling        | pool.cu                            | pool/                     | test_pool.py       |
| GEMM                      | sgemm.cu, sgemm_tc.cu              | gemm.py (gemm_dtypes.py, gemm_host.py) | test_gemm.py |
| linear (+ ReLU)           | sgemm.cu, sgemm_tc.cu, conv_reduce.cu | linear.py              | test_linear*.py    |
| ReLU, dropout             | activation.cu                      | activation.py             | test_activation.py |
| softmax cross-entropy     | loss.cu                            | loss.py                   | test_loss.py       |
| local response norm       | lrn.cu                             | lrn.py                    | test_lrn.py        |
| SGD / Adam updates        | optim.cu                           | optim.py                  | test_optim.py      |
| input batches (gather)    | data.cu                            | data.py                   | test_gather.py     |
| float32 <-> bf16          | cast.cu                            | cast.py (storage.py)      | test_cast.py       |

Under precision bf16 the ops with ``_bf16io`` kernels (convolution, linear, ReLU, dropout,
max-pool, LRN) also take activations held in bf16 (:mod:`.storage`; tests/ops/test_*bf16io*.py).

Each op module registers its entry points (``B.conv2d``, ...: argument checks, then
``backend.plan``) and its implementations per backend kind (:mod:`.dispatch`): ``reference``
the plain definitions, ``cpu`` the tuned paths on a :class:`gpucnn.cpu.CpuRuntime`, ``device``
plans of launches (:mod:`.launch`) on a backend's DeviceContext. Ops import the toolchain
(block sizes, limits) and the CPU runtime, never a backend.
"""
