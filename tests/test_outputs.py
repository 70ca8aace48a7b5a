"""The output rules every command shares (gpucnn/outputs.py, issue 22 part 3): each refusal is
exit 2 with one stderr line naming the option, the path and the rule, before any work, and a
file that was there is byte-identical afterwards. Every command runs in this process; each
refusal happens before a model is trained, benchmarked, verified or compiled, so the module
takes a few seconds."""
import contextlib
import io
import json
import os
import stat
import zipfile

import numpy as np
import pytest

from gpucnn import cli
from gpucnn.bench import cli as bench_cli
from gpucnn.outputs import KINDS, check_outputs, OutputRefused, recognise, write_json
from gpucnn.verify import main as verify_main


def run(main, argv):
    """(exit status, stdout, stderr) of a command's main in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse errors of `gpucnn ...` itself
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


# (command, main, argv before the output option, the option, a fitting file name)
COMMANDS = {
    "train": (cli.main, ["train", "--backend", "numpy", "--data-dir", "/nonexistent"],
              "--metrics-json", "m.json"),
    "train-plot": (cli.main, ["train", "--backend", "numpy", "--data-dir", "/nonexistent"],
                   "--plot", "p.png"),
    "summary": (cli.main, ["summary", "lenet5"], "--json", "s.json"),
    "bench": (bench_cli.main, ["--backend", "numpy", "--quick"], "--json", "b.json"),
    "bench-plot": (bench_cli.main, ["--backend", "numpy", "--quick"], "--plot", "b.png"),
    "verify": (verify_main, ["lenet5", "--backend", "emu"], "--json", "v.json"),
    "kernels": (cli.main, ["kernels", "--report"], "--json", "k.json"),
}


def checkpoint_like(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__metadata__.npy", b"x")
        zf.writestr("model/0.weight.npy", b"y")


def refused(command, path, rule, *extra):
    main, argv, flag, _ = COMMANDS[command]
    rc, out, err = run(main, [*argv, flag, path, *extra])
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("gpucnn "), err
    assert f"{flag} " in lines[0] and rule in lines[0], lines[0]
    assert "Traceback" not in err and "data:" not in out
    return lines[0]


def _setup(case, tmp_path, name):
    if case == "directory":
        (tmp_path / "adir").mkdir()
        return tmp_path / "adir", "is a directory"
    if case == "under a file":
        (tmp_path / "afile").write_text("precious")
        return tmp_path / "afile" / name, "afile is a file, not a directory"
    if case == "empty name":
        return "", "an empty file name"
    if case == "trailing slash":
        return f"{tmp_path}/new/", "names a directory"
    if case == "name too long":
        return tmp_path / ("x" * 300), "the file name is 300 bytes long"
    if case == "fifo":
        os.mkfifo(tmp_path / name)
        return tmp_path / name, "is a FIFO (named pipe), not a regular file"
    if case == "checkpoint":
        checkpoint_like(tmp_path / name)
        return tmp_path / name, "is a gpucnn checkpoint: never replaced"
    if case == "foreign file":
        (tmp_path / name).write_bytes(b"precious \x00 data")
        return tmp_path / name, "add --overwrite to replace it"
    raise AssertionError(case)


CASES = ["directory", "under a file", "empty name", "trailing slash", "name too long", "fifo",
         "checkpoint", "foreign file"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_a_bad_output_at_start(command, case, tmp_path):
    path, rule = _setup(case, tmp_path, COMMANDS[command][3])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    refused(command, path, rule)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("command", ["train", "summary", "bench", "verify", "kernels"])
def test_a_checkpoint_is_refused_even_with_overwrite(command, tmp_path):
    path = tmp_path / "run.npz"
    checkpoint_like(path)
    before = path.read_bytes()
    refused(command, path, "never replaced by another kind of output", "--overwrite")
    assert path.read_bytes() == before


def test_character_device_is_refused(tmp_path):
    if not os.path.exists("/dev/full") or not stat.S_ISCHR(os.stat("/dev/full").st_mode):
        pytest.skip("no /dev/full here")
    refused("summary", "/dev/full", "is a character device, not a regular file")


@pytest.mark.parametrize("command, name, rule", [
    ("train-plot", "p.xyz", "'.xyz': not a format it can be written in"),
    ("bench-plot", "b", "no extension: not a format"),
])
def test_plot_extension_is_checked_before_any_work(command, name, rule, tmp_path):
    refused(command, tmp_path / name, rule)
    assert list(tmp_path.iterdir()) == []


def test_summary_replaces_its_own_json_and_a_foreign_file_only_with_overwrite(tmp_path):
    out = tmp_path / "s.json"
    assert run(cli.main, ["summary", "lenet5", "--json", out])[0] == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "gpucnn-summary/1" and doc["model"] == "lenet5"
    assert run(cli.main, ["summary", "alexnet_cifar", "--json", out])[0] == 0
    assert json.loads(out.read_text())["model"] == "alexnet_cifar"  # its own kind: replaced
    foreign = tmp_path / "notes.txt"
    foreign.write_text("mine")
    refused("summary", foreign, "(1 bytes of other content)".replace("1", "4"))
    assert foreign.read_text() == "mine"
    assert run(cli.main, ["summary", "lenet5", "--json", foreign, "--overwrite"])[0] == 0
    assert json.loads(foreign.read_text())["model"] == "lenet5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "s.json"]  # no temps


def test_writing_through_a_symlink_replaces_the_target_not_the_link(tmp_path):
    target = tmp_path / "real" / "s.json"
    target.parent.mkdir()
    target.write_text("")  # an empty file holds nothing to lose: replaced without --overwrite
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert run(cli.main, ["summary", "lenet5", "--json", link])[0] == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["model"] == "lenet5"


def test_a_symlink_loop_and_two_names_of_one_file(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    refused("summary", tmp_path / "a", "a loop of symbolic links")
    with pytest.raises(OutputRefused, match="--json and --plot both name"):
        check_outputs([("--json", tmp_path / "x.png", "bench"),
                       ("--plot", tmp_path / "." / "x.png", "plot")])


def test_previous_outputs_are_recognised_by_kind(tmp_path):
    docs = {
        "metrics": {"schema": "gpucnn-train-metrics/1"},
        "summary": {"model": "lenet5", "input": [1, 28, 28], "layers": []},  # before "schema"
        "bench": {"schema": "gpucnn-bench/1", "layers": []},
        "verify": {"layers": [], "summary": {}, "environment": {}},
        "kernels": {"schema": "gpucnn-kernels/1"},
    }
    for kind, doc in docs.items():
        write_json(tmp_path / f"{kind}.json", doc)
        assert recognise(tmp_path / f"{kind}.json")[0] == kind
    for name, content in [("deep.json", b"[" * 100000), ("other.json", b'{"schema": "x"}'),
                          ("num.json", b'{"model": ' + b"9" * 5000 + b"}"),
                          ("bin.json", b"{\xff\xfe"), ("foreign.png", b"\x89PNG\r\n\x1a\nxx")]:
        (tmp_path / name).write_bytes(content)
        assert recognise(tmp_path / name)[0] is None, name
    checkpoint_like(tmp_path / "ck.npz")
    assert recognise(tmp_path / "ck.npz")[0] == "checkpoint"


def test_a_matplotlib_plot_is_recognised(tmp_path):
    pytest.importorskip("matplotlib")
    from gpucnn.train import plot_metrics
    metrics = {"model": "lenet5", "dataset": "x", "device": "cpu",
               "epochs": [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5,
                           "test_accuracy": 0.5}]}
    for suffix in KINDS["plot"].suffixes:
        plot_metrics(metrics, tmp_path / f"p{suffix}")
        assert recognise(tmp_path / f"p{suffix}")[0] == "plot", suffix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.pdf", "p.png", "p.svg"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    out = tmp_path / "s.json"
    write_json(out, {"schema": "gpucnn-summary/1"})
    before = out.read_bytes()
    with pytest.raises(ValueError):
        write_json(out, {"x": float("nan")}, allow_nan=False)
    with pytest.raises(TypeError):
        write_json(out, {"x": np.float32})
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["s.json"]


def test_a_write_removes_what_a_killed_writer_of_the_same_file_left(tmp_path):
    """A writer killed mid-write leaves ``.<name>.<pid>.*.tmp``; the next write of that file
    removes it when the pid no longer runs, and leaves a live writer's and pid-less names."""
    from gpucnn.outputs import write_json
    target = tmp_path / "m.json"
    dead = tmp_path / f".m.json.{2 ** 22 + 7}.abc.tmp"
    live = tmp_path / f".m.json.{os.getpid()}.def.tmp"
    old = tmp_path / ".m.json.ghi.tmp"
    other = tmp_path / f".n.json.{2 ** 22 + 7}.abc.tmp"
    for p in (dead, live, old, other):
        p.write_text("partial")
    write_json(target, {"a": 1})
    assert not dead.exists() and live.exists() and old.exists() and other.exists()
    assert json.loads(target.read_text()) == {"a": 1}
