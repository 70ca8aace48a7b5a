"""Every flag of every ``gpucnn`` command says what it does and its default."""
import argparse

from gpucnn import cli
from gpucnn.bench import cli as bench_cli
from gpucnn.toolchain import report


def _parsers():
    top = cli.build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    yield "gpucnn", top
    for name, p in sub.choices.items():
        if p.add_help:            # kernels and bench hand their arguments to their own parsers
            yield f"gpucnn {name}", p
    yield "gpucnn bench", bench_cli.build_parser()
    from gpucnn.bench import input_pipeline
    yield "gpucnn bench --input-pipeline", input_pipeline.build_parser()
    yield "gpucnn kernels --report", report.build_parser()


def test_every_flag_has_help_with_its_default():
    for prog, p in _parsers():
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._VersionAction,
                              argparse._SubParsersAction)):
                continue
            text = (a.help or "") % {"default": a.default, "prog": prog}
            assert a.help and len(text) > 10, f"{prog} {a.dest}: no help"
            if a.option_strings:
                assert "default" in text, f"{prog} {a.option_strings[0]}: help names no default"


def test_cli_backend_choices_are_the_backends():
    from gpucnn.argtypes import BACKEND_CHOICES
    from gpucnn.backends import BACKEND_NAMES
    assert sorted(BACKEND_CHOICES) == sorted(BACKEND_NAMES)
