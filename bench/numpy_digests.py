"""Print SHA-256 digests of two training steps of LeNet-5 and AlexNet-CIFAR on the numpy
backend (batch 16): every parameter after the steps, each step's loss, the last logits.

Run it in the worktree whose code you want measured, old and new in the same sitting, and
diff the outputs (the numpy backend's direct.cpp is built with -march=native and its thread
split follows the machine, so these digests are not stored anywhere):

    git worktree add /tmp/old <old commit>
    (cd /tmp/old && python /path/to/gpucnn/bench/numpy_digests.py > /tmp/old.txt)
    python bench/numpy_digests.py > /tmp/new.txt
    diff /tmp/old.txt /tmp/new.txt

The step itself (seeds 3 for the model, 7 for the data; SGD lr 1e-3, momentum 0.9, weight
decay 1e-4; dropout on) is ``train_arrays`` of this checkout's tests/test_step_digests.py (it
uses only the public API), run on the gpucnn of the current directory.
"""
import os
import sys

sys.path.insert(0, os.getcwd())  # measure the gpucnn of the current directory

import importlib.util  # noqa: E402 - after the path is set

BATCH = 16
MODELS = ("lenet5", "alexnet_cifar")
# Settings the numpy backend reads that change which code runs (and so the bits): printed in
# the header so that two outputs made under different settings do not look comparable.
ENV = ("GPUCNN_CONV_ALGO", "GPUCNN_WORKSPACE_MB", "GPUCNN_NUMPY_THREADS", "GPUCNN_NATIVE_FLAGS")


def load_helper():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests",
                        "test_step_digests.py")
    spec = importlib.util.spec_from_file_location("step_digests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def main():
    helper, path = load_helper()
    import gpucnn
    from gpucnn.backends import get_backend
    print(f"# gpucnn from {os.path.dirname(gpucnn.__file__)}", file=sys.stderr)
    print(f"# step helper from {path}", file=sys.stderr)
    B = get_backend("numpy")
    env = " ".join(f"{k}={os.environ[k]}" for k in ENV if k in os.environ) or "(none set)"
    print(f"# numpy backend: {B.describe()}; batch {BATCH}; env: {env}")
    for model in MODELS:
        arrays = helper.train_arrays(B, model, BATCH)
        for name, digest in helper.digests(arrays).items():
            print(f"{model} {name} {digest}")
    # Which convolution algorithm ran per layer shape (both models): the first thing to look
    # at when the digests differ.
    for key, algo in sorted(B.conv_algorithms().items()):
        print(f"conv_algo {key}: {algo}")


if __name__ == "__main__":
    main()
