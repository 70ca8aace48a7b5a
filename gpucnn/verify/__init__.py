"""``gpucnn verify``: does the device compute what the CPU computes, for *this* model?

    from gpucnn.verify import verify_model
    result = verify_model("lenet5", backend="emu", batch=2)     # or a checkpoint path
    result.passed, result.exit_status, result.to_dict()          # {"layers", "summary", ...}

Modules: :mod:`.compare` (the layer-by-layer comparison, tolerances), :mod:`.source` (model
name, checkpoint or built model; the copies per backend), :mod:`.results` (figures, verdict),
:mod:`.report` (table, JSON, environment), :mod:`.command` (the command line:
:func:`add_arguments`, :func:`run`, :func:`main`; ``python -m gpucnn.verify`` runs
:func:`main`).
"""
from .command import add_arguments, main, run
from .compare import (ORDERS, PASSES, TOLERANCES, switch_mismatches, tied_windows, verify_model,
                      weights_digest)
from .report import format_table, to_json
from .results import LayerResult, VerifyResult

__all__ = ["verify_model", "VerifyResult", "LayerResult", "TOLERANCES", "ORDERS", "PASSES",
           "switch_mismatches", "tied_windows", "weights_digest", "format_table", "to_json",
           "add_arguments", "run", "main"]
