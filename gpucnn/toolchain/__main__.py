"""``python -m gpucnn.toolchain``: the kernel compile gates and resource report."""
import sys

from .report import main

sys.exit(main())
