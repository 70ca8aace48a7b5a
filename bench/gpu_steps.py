"""The Python side of bench/gpu_validate.sh: what its steps run and how their results become
summary.md lines and report.json.

    python bench/gpu_steps.py start --json WORK/start.json      # step 1: does cuda start?
    python bench/gpu_steps.py junit OUT/pytest_cuda.xml         # step 2's summary lines
    python bench/gpu_steps.py report WORK OUT/report.json       # everything, one JSON file

Lines starting with ``@summary`` are what the shell copies into summary.md. The summary
commands read files only, so they also run after a step that was stopped at its time limit
and report how far it got.

``start`` exits 0 when the backend started, 1 when it did not, and 3 when it did not because
CuPy found no CUDA headers (CuPy 14 compiles nothing without them, and looks for them through
cuda.pathfinder: the ``[ctk]`` wheels, conda, or ``CUDA_PATH``); the shell then retries once
with ``CUDA_PATH`` set to the toolkit it found (``/usr/local/cuda``). The retry needs a new
process: CuPy remembers the CUDA path it looked up.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's gpucnn

HEADERS_MISSING = 3
# CuPy's words when it finds no CUDA headers (CuPy 14: "Failed to auto-detect CUDA root
# directory. Please specify `CUDA_PATH` ..."; with CUPY_DEBUG_LIBRARY_LOAD=1 also "CUDA
# headers not found via cuda-pathfinder"), and NVRTC's when an include is not found.
HEADERS_RE = re.compile(r"auto-detect CUDA root|CUDA headers not found|specify\W+CUDA_PATH|"
                        r"cannot open source file\W+[\w/.]+\.h", re.I)
MAX_FAILURES_LISTED = 15


MAX_RESULT_BYTES = 16 << 20  # what one file may bring back from the lent machine


def read_result(path):
    """A step's JSON result file as a dict: bounded in size, an object at the top, else a
    ValueError saying which (a step killed mid-write leaves a truncated file)."""
    size = Path(path).stat().st_size
    if size > MAX_RESULT_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than {MAX_RESULT_BYTES}")
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a JSON object")
    return doc


def print_summary_file(path, summarize):
    """``--summarize JSON`` of the step scripts: the ``@summary`` lines of a result file
    (``summarize(result) -> lines``); 1 when the file cannot be read."""
    try:
        res = read_result(path)
    except (OSError, ValueError) as exc:
        print(f"@summary no results: {exc}")
        return 1
    for line in summarize(res):
        print(f"@summary {line}")
    return 0


def _say(line):
    print(f"@summary {line}", flush=True)


# ---- step 1 -------------------------------------------------------------------------------
def _pathfinder_headers():
    try:
        from cuda.pathfinder import find_nvidia_header_directory
    except ImportError as exc:
        return f"(cuda.pathfinder not importable: {exc})"
    try:
        return find_nvidia_header_directory("cudart") or "nothing"
    except Exception as exc:  # noqa: BLE001 - informational only
        return f"(cuda.pathfinder failed: {type(exc).__name__}: {exc})"


def start(json_path, get_cuda=None):
    """Start the cuda backend (probe kernel, every kernel compiled); print the driver's view
    of each kernel. ``get_cuda`` replaces ``get_backend("cuda")`` (tests)."""
    from gpucnn.backends import BackendUnavailable
    if get_cuda is None:
        from gpucnn.backends import get_backend

        def get_cuda():
            return get_backend("cuda")
    print(f"CUDA_PATH = {os.environ.get('CUDA_PATH') or '(unset)'}; cuda.pathfinder finds "
          f"the CUDA runtime headers in: {_pathfinder_headers()}", flush=True)
    t0 = time.perf_counter()
    try:
        B = get_cuda()
    except BackendUnavailable as exc:
        text = " ".join(str(exc).split())
        _say(f"the cuda backend does NOT start: {text[:1500]}")
        if HEADERS_RE.search(text):
            _say("cause: CuPy finds no CUDA headers (CuPy 14 needs them to compile anything)")
            return HEADERS_MISSING
        return 1
    took = time.perf_counter() - t0
    cuda_path = os.environ.get("CUDA_PATH")
    _say(f"backend: {B.describe()}; started in {took:.1f} s (probe kernel run, every kernel "
         f"compiled{'; CUDA_PATH=' + cuda_path if cuda_path else ''})")
    attrs = B.module.attributes()
    print(f"{'kernel':28s} {'regs':>5s} {'local B':>8s} {'smem B':>7s} {'max thr/blk':>11s}")
    for name, a in sorted(attrs.items()):
        print(f"{name:28s} {a.get('num_regs', '?'):>5} {a.get('local_size_bytes', '?'):>8} "
              f"{a.get('shared_size_bytes', '?'):>7} {a.get('max_threads_per_block', '?'):>11}")
    spills = sorted(n for n, a in attrs.items() if a.get("local_size_bytes"))
    _say(f"{len(attrs)} kernels loaded; local memory (spills or stack) in: "
         f"{', '.join(spills) if spills else 'none'}")
    if json_path:
        cc = getattr(B, "compute_capability", None)
        Path(json_path).write_text(json.dumps(
            {"device": B.describe(), "arch": "sm_%d%d" % cc if cc else None,
             "cuda_path": cuda_path, "start_seconds": took, "attributes": attrs},
            default=str))
    return 0


# ---- step 2 -------------------------------------------------------------------------------
def junit_counts(path):
    """{tests, passed, failed, errors, skipped, seconds, failures: [(id, message)],
    skip_reasons: Counter} of a pytest JUnit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    c = {"tests": 0, "failed": 0, "errors": 0, "skipped": 0, "seconds": 0.0}
    failures, skips = [], collections.Counter()
    for s in suites:
        c["tests"] += int(s.get("tests", 0))
        c["failed"] += int(s.get("failures", 0))
        c["errors"] += int(s.get("errors", 0))
        c["skipped"] += int(s.get("skipped", 0))
        c["seconds"] += float(s.get("time", 0.0))
        for case in s.iter("testcase"):
            test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
            for tag in ("failure", "error"):
                bad = case.find(tag)
                if bad is not None:
                    msg = (bad.get("message") or bad.text or "").strip().splitlines()
                    failures.append((test_id, tag, msg[0][:300] if msg else ""))
            skip = case.find("skipped")
            if skip is not None:
                skips[(skip.get("message") or "").strip()[:200]] += 1
    c["passed"] = c["tests"] - c["failed"] - c["errors"] - c["skipped"]
    c["failures"], c["skip_reasons"] = failures, skips
    return c


def junit_summary(path, selection=""):
    if not Path(path).exists():
        _say(f"no {Path(path).name}: pytest did not finish writing it (stopped by its time "
             f"limit, or did not start); the log has what ran")
        return 1
    try:
        c = junit_counts(path)
    except (ET.ParseError, OSError, ValueError) as exc:
        _say(f"{Path(path).name} is unreadable: {exc}")
        return 1
    _say(f"device tests{' (' + selection + ')' if selection else ''}: {c['passed']} passed, "
         f"{c['failed']} failed, {c['errors']} errors, {c['skipped']} skipped, of "
         f"{c['tests']} in {c['seconds']:.1f} s")
    for test_id, tag, msg in c["failures"][:MAX_FAILURES_LISTED]:
        _say(f"{tag.upper()} {test_id}: {msg}")
    if len(c["failures"]) > MAX_FAILURES_LISTED:
        _say(f"... and {len(c['failures']) - MAX_FAILURES_LISTED} more (pytest_cuda.xml)")
    for reason, n in c["skip_reasons"].most_common(5):
        _say(f"skipped {n}: {reason}")
    return 0 if not c["failed"] and not c["errors"] and c["tests"] else 1


# ---- the report ---------------------------------------------------------------------------
def _load(path):
    try:
        return read_result(path)
    except (OSError, ValueError):
        return None


def report(work, out_json, mode="quick", arch=None, junit=None):
    """report.json: the step table (WORK/steps.tsv: name, exit, seconds, limit), every
    result file the steps left in WORK, and the counts of the ``junit`` XML file."""
    work = Path(work)
    steps = {}
    if (work / "steps.tsv").exists():
        for line in (work / "steps.tsv").read_text().splitlines():
            name, rc, secs, limit = line.split("\t")
            steps[name] = {"exit": int(rc), "seconds": int(secs), "limit_s": int(limit),
                           "stopped_at_limit": int(rc) in (124, 137)}
    doc = {"schema": "gpucnn-gpu-validate/2", "mode": mode, "arch": arch, "steps": steps,
           "start": _load(work / "start.json"),
           "compare": {p.stem: _load(p) for p in sorted(work.glob("compare*.json"))},
           "train": _load(work / "train.json"),
           "kernel_report": _load(work / "kernel_report.json")}
    xml = Path(junit) if junit else None
    if xml is not None and xml.exists():
        try:
            c = junit_counts(xml)
            c["skip_reasons"] = dict(c["skip_reasons"])
            doc["tests"] = c
        except (ET.ParseError, OSError, ValueError) as exc:
            doc["tests"] = {"error": str(exc)}
    Path(out_json).write_text(json.dumps(doc, indent=1, default=str))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start the cuda backend (exit 3: no CUDA headers)")
    s.add_argument("--json")
    s = sub.add_parser("junit", help="summary lines of a pytest JUnit XML file")
    s.add_argument("xml")
    s.add_argument("--selection", default="")
    s = sub.add_parser("report", help="assemble report.json")
    s.add_argument("work")
    s.add_argument("out")
    s.add_argument("--mode", default="quick")
    s.add_argument("--arch")
    s.add_argument("--junit", help="the device tests' JUnit XML file")
    args = p.parse_args(argv)
    if args.cmd == "start":
        return start(args.json)
    if args.cmd == "junit":
        return junit_summary(args.xml, args.selection)
    return report(args.work, args.out, args.mode, args.arch, args.junit)


if __name__ == "__main__":
    sys.exit(main())
