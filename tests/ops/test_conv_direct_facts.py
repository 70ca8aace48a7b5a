"""direct.cpp and direct.py agree on what both spell out (the constants direct.py builds it
with, the layout of every struct it mirrors with ctypes), checked when the library loads: a
mismatch makes ``direct`` unavailable with the reason, and ``auto`` falls back to ``wide``."""
import subprocess
import sys
import textwrap

import pytest

from gpucnn.ops.conv import direct

_DOCTORED = """
import numpy as np
from gpucnn.backends.numpy_backend import NumpyBackend
from gpucnn.cpu import native
from gpucnn.ops.conv import direct

real = native.facts


def doctored(lib, symbol):  # direct.cpp as if {name} had changed on the C side only
    facts = real(lib, symbol)
    facts[{name!r}] += 8
    return facts


native.facts = doctored
print("AVAILABLE", direct.available())
print("REASON", direct.unavailable_reason())
B = NumpyBackend()
y = B.conv2d(np.ones((2, 3, 8, 8), np.float32), np.ones((4, 3, 3, 3), np.float32), padding=1)
assert float(y[0, 0, 4, 4]) == 27.0
print("AUTO", sorted(set(B.conv_algorithms().values())))
"""


def test_the_built_library_matches_direct_py(native_kernels):
    assert direct.unavailable_reason() is None  # the facts check ran when it loaded


@pytest.mark.parametrize("name,expected", [
    ("Planes.gn", "Planes.gn: the library has 72, Python 64"),
    ("sizeof Forward", "sizeof Forward: the library has 232, Python 224"),
    ("GPUCNN_DIRECT_FB_MAX", "GPUCNN_DIRECT_FB_MAX: the library has 16, Python 8")])
def test_a_mismatch_makes_direct_unavailable_naming_it(native_kernels, name, expected):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_DOCTORED.format(name=name))],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "AVAILABLE False" in out.stdout
    assert f"REASON direct.cpp does not match direct.py: {expected}" in out.stdout
    assert "AUTO ['wide']" in out.stdout
