"""The fuzz test of issue 22 (part 7): mutants of a checkpoint written by ``gpucnn train``, of
IDX and CIFAR-10 files and of lock files, loaded through every path that reads them
(tests/fuzzing.py builds and classifies them). Each outcome must be a clean error, a load
that passes every check, or a CLI refusal; any other exception, a traceback, a signal, a hang
or memory over fuzzing.MEMORY_LIMIT fails the test, naming the seed and the case.

The campaign runs in a child process (a signal or a hang in C code ends it, not the suite);
CI runs the default counts (820 cases, ~20 s on 2 cores), ``-m slow`` ten times as many
(~3 min). A failing case is replayed with
``python tests/fuzzing.py --seed SEED --case KIND:INDEX``.
"""
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import fuzzing
from harness import SEED_KEY, stable_seed

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def seed(request):
    value = stable_seed(request.node.nodeid)
    request.node.stash[SEED_KEY] = value  # printed with a failure (tests/conftest.py)
    return value


def run_campaign(tmp_path, seed, scale, timeout_s):
    """The report of ``tests/fuzzing.py`` run with ``seed`` and the default counts times
    ``scale``; a campaign that dies of a signal or runs past ``timeout_s`` fails the test,
    naming the case it was on."""
    report, progress = tmp_path / "report.json", tmp_path / "progress"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    cmd = [sys.executable, str(ROOT / "tests" / "fuzzing.py"), "--seed", str(seed), "--scale",
           str(scale), "--json", str(report), "--progress", str(progress), "--workdir",
           str(tmp_path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT,
                              env=env)
        died = f"died of signal {-proc.returncode}" if proc.returncode < 0 else None
    except subprocess.TimeoutExpired:
        proc, died = None, f"ran past {timeout_s} s"
    if died or not report.exists():
        case = progress.read_text() if progress.exists() else "the setup"
        tail = proc.stderr[-3000:] if proc is not None else ""
        pytest.fail(f"the fuzz campaign (seed {seed}) {died or 'wrote no report'} at {case}; "
                    f"replay: python tests/fuzzing.py --seed {seed} --case {case}\n{tail}",
                    pytrace=False)
    return json.loads(report.read_text())


def failure_report(report):
    lines = [f"{len(report['failures'])} fuzz failures (seed {report['seed']}):"]
    for f in report["failures"][:15]:
        detail = f["detail"].strip().splitlines()
        lines.append(f"- {f['kind']}:{f['case']} via {f['path']} [{f['mutation'][:120]}]: "
                     f"{f['outcome']}: {detail[0] if detail else ''}\n    replay: python "
                     f"tests/fuzzing.py --seed {f['seed']} --case {f['kind']}:{f['case']}")
        lines += [f"    {line}" for line in detail[-3:][1:]]
    return "\n".join(lines)


def check_campaign(report, scale):
    counts = {k: {n: Counter(c) for n, c in v.items()} for k, v in report["counts"].items()}
    print(f"\nfuzz campaign, seed {report['seed']}: {sum(report['cases'].values())} cases in "
          f"{report['seconds']:.1f} s, peak RSS {report['peak_rss_mib']} MiB\n"
          + fuzzing.table(counts, report["bounds"]))
    assert not report["failures"], failure_report(report)
    # Every case of every kind was run through every path...
    for kind, n in fuzzing.DEFAULT_COUNTS.items():
        assert kind in counts, f"no {kind} case ran"
        for name, c in counts[kind].items():
            # (read_lock_owner cannot open a dangling or looping link: those it skips)
            assert sum(c.values()) == int(n * scale) or name == "read_lock_owner", (kind, name)
            # ...and the mutants are neither all refused (a broken base would do that) nor
            # all accepted (mutations that change nothing would): both happen on every path.
            accepted, refused = c[fuzzing.LOADED], c[fuzzing.CLEAN] + c[fuzzing.REFUSED]
            if name != "read_lock_owner":  # it reports any content, never refuses
                assert accepted and refused, (kind, name, dict(c))


def test_fuzz_the_loaders(tmp_path, seed):
    report = run_campaign(tmp_path, seed, 1.0, timeout_s=240)
    check_campaign(report, 1.0)


@pytest.mark.slow
def test_fuzz_the_loaders_longer(tmp_path, seed):
    report = run_campaign(tmp_path, seed, fuzzing.SLOW_FACTOR, timeout_s=3000)
    check_campaign(report, fuzzing.SLOW_FACTOR)


# ---- the classifier fails what it must (a fuzzer that cannot fail proves nothing) ----------
class ProjectError(ValueError):
    pass


@pytest.fixture
def bounded(monkeypatch):
    """attempt() as the campaign process runs it: an alarm per call, memory traced."""
    monkeypatch.setattr(fuzzing, "TIMEOUT_S", 0.5)
    previous = signal.signal(signal.SIGALRM, fuzzing._alarm)
    tracemalloc.start()
    yield lambda call, check=lambda r, m: None, mutant=fuzzing.Mutant("m", b""), cli=False: \
        fuzzing.attempt(fuzzing.LoadPath("p", call, (ProjectError,), check, cli), "f", mutant)
    tracemalloc.stop()
    signal.signal(signal.SIGALRM, previous)


def _raise(exc):
    raise exc


@pytest.mark.parametrize("call, outcome", [
    (lambda f: _raise(ProjectError("f: damaged")), fuzzing.CLEAN),
    (lambda f: _raise(ProjectError("f: damaged\nsecond line")), fuzzing.OTHER),
    (lambda f: _raise(KeyError("shape")), fuzzing.OTHER),
    (lambda f: _raise(RecursionError()), fuzzing.OTHER),
    (lambda f: _raise(MemoryError()), fuzzing.MEMORY),
    (lambda f: bytearray(80 << 20), fuzzing.MEMORY),
    (lambda f: time.sleep(5), fuzzing.HANG),
    (lambda f: "fine", fuzzing.LOADED),
], ids=["project-error", "two-lines", "KeyError", "RecursionError", "MemoryError",
        "80-MiB", "sleeps", "loads"])
def test_each_outcome_is_classified(bounded, call, outcome):
    assert bounded(call).outcome == outcome


def test_an_accepted_mutant_that_breaks_a_rule_fails(bounded):
    refused_by_rule = fuzzing.Mutant("dup", b"", must_refuse=fuzzing.ALL)
    assert bounded(lambda f: "x", mutant=refused_by_rule).outcome == fuzzing.INVALID
    assert bounded(lambda f: "x", check=lambda r, m: "NaN weights").outcome == fuzzing.INVALID


@pytest.mark.parametrize("result, outcome", [
    ((2, "", "gpucnn train: error: f: damaged\n"), fuzzing.REFUSED),
    ((2, "", "Traceback (most recent call last):\n  ...\nKeyError: 1\n"), fuzzing.OTHER),
    ((1, "", "gpucnn train: error: f: damaged\n"), fuzzing.OTHER),
    ((0, "done", ""), fuzzing.LOADED),
])
def test_cli_outcomes(bounded, result, outcome):
    assert bounded(lambda f: result, cli=True).outcome == outcome


def test_a_case_is_the_same_mutant_every_time(tmp_path):
    """(seed, kind, index) names one mutant: what makes a failure reproducible."""
    base = {"images": fuzzing.idx_header(None, (8, 28, 28)) + bytes(i % 251 for i in range(6272)),
            "labels": fuzzing.idx_header(None, (8,)) + bytes(range(8))}

    def mutant(index):
        m = fuzzing.idx_mutant(np.random.default_rng([5, fuzzing.KIND_IDS["idx"], index]), base)
        return m.what, m.data
    assert [mutant(i) for i in range(30)] == [mutant(i) for i in range(30)]
    assert len({mutant(i) for i in range(30)}) > 20
