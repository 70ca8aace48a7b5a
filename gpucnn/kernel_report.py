"""Moved to :mod:`gpucnn.toolchain`; this name stays because scripts and older notes run
``python -m gpucnn.kernel_report`` (the same report as ``python -m gpucnn.toolchain``)."""
import sys

__all__ = ["collect", "evaluate", "gate_failures", "main", "render_table", "report_dict"]

from .toolchain.gates import collect, evaluate, gate_failures
from .toolchain.report import main, render_table, report_dict

if __name__ == "__main__":
    sys.exit(main())
