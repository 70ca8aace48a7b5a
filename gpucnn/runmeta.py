"""The trainer's checkpoint metadata: its schema and upgrades, its validation, and the run
configuration that ``--resume`` compares.

Pure functions of the metadata and a few numbers of the current run (no model, no backend), so
one process of a multi-process run can check a checkpoint and share the verdict.

Schema versions: 1 gpucnn 0.1.0 (no "schema_version" key); 2 adds "schema_version" and
"written_by"; 3 adds "config_changes" (the deliberate changes ``--allow-config-change`` let
through, so the run's record says so for ever). Each later schema adds an upgrade step from the
one before in :func:`upgrade_metadata`, so every older checkpoint keeps loading.
"""
from __future__ import annotations

import json
import math

from .checkpoint import CheckpointError

__all__ = ["SCHEMA_VERSION", "RESUME_KEYS", "upgrade_metadata", "validate_metadata",
           "compare_run", "config_mismatch_message"]

SCHEMA_VERSION = 3

# What --resume compares: a path into the metadata ("config.seed" is meta["config"]["seed"])
# -> what a different value changes. Each one changes what the uninterrupted run would have
# computed, so a difference is refused unless --allow-config-change. A key the checkpoint
# does not record (written before the key existed) is not compared; the metrics list it
# under "resume_unchecked". Everything else may change on --resume (README: "What gpucnn
# guarantees about your files"). A new key is recorded in
# gpucnn.train_checkpoint.RunCheckpoint.run_record(), which feeds both the checkpoint and this
# comparison.
RESUME_KEYS = {
    "config.model": "the network",
    "config.model_kwargs": "the network's options",
    "config.dataset": "the training data",
    "config.limit": "which training images are used",
    "config.batch_size": "the batches and the number of steps",
    "config.seed": "the order of the batches",
    "config.optimizer": "the update rule",
    "config.lr": "the step size",
    "config.momentum": "the update rule",
    "config.nesterov": "the update rule",
    "config.weight_decay": "the update rule",
    "config.schedule": "the learning rate of the coming epochs",
    "config.precision": "the arithmetic of the convolutions and linear layers",
    # auto's per-shape choices are preset from the checkpoint; a forced one must agree
    "conv_algos.setting": "$GPUCNN_CONV_ALGO: the convolution algorithms (their rounding "
                          "differs)",
}
# The epoch count is compared only when the schedule spreads over it (step, cosine): with the
# constant schedule a larger --epochs simply continues the run.
EPOCHS_KEY = "config.epochs"


def upgrade_metadata(meta, path):
    """The metadata of a checkpoint of any earlier schema, brought to SCHEMA_VERSION."""
    version = meta.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path}: metadata schema_version must be a positive int, got "
                              f"{version!r}")
    if version > SCHEMA_VERSION:
        raise CheckpointError(f"{path}: metadata schema {version} was written by a newer "
                              f"gpucnn ({meta.get('written_by', 'unknown')}); this one reads "
                              f"schemas 1 to {SCHEMA_VERSION}")
    meta = dict(meta)
    if version == 1:
        meta["written_by"] = "gpucnn 0.1.0"
    if version <= 2:
        meta["config_changes"] = []
    meta["schema_version"] = SCHEMA_VERSION
    return meta


# ---- validation: every field, its type and range, before anything is used -------------------
def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _fail(path, field, value, want):
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise CheckpointError(f"{path}: metadata field {field!r} is {shown}: it must be {want} "
                          f"(an edited or damaged checkpoint?); nothing was loaded")


def _check(path, field, value, ok, want):
    if not ok:
        _fail(path, field, value, want)


def _check_int(path, field, value, low, high=None):
    ok = _is_int(value) and value >= low and (high is None or value <= high)
    _check(path, field, value, ok, f"an int >= {low}" if high is None
           else f"an int in [{low}, {high}]")


def _check_num(path, field, value, low=0.0, high=None, positive=False):
    ok = _is_num(value) and (value > low if positive else value >= low) and \
        (high is None or value <= high)
    want = f"a finite number {'>' if positive else '>='} {low:g}"
    _check(path, field, value, ok, want + (f" and <= {high:g}" if high is not None else ""))


_HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_accuracy", "seconds", "images_per_s",
                   "test_accuracy")


def _check_history(path, history, epoch):
    _check(path, "history", history, isinstance(history, list) and len(history) == epoch,
           f"a list of the {epoch} finished epochs' records ('epoch' is {epoch})")
    for i, rec in enumerate(history):
        f = f"history[{i}]"
        _check(path, f, rec, isinstance(rec, dict) and all(k in rec for k in _HISTORY_FIELDS),
               f"an object with the fields {', '.join(_HISTORY_FIELDS)}")
        _check(path, f + ".epoch", rec["epoch"], rec["epoch"] == i + 1 and _is_int(rec["epoch"]),
               f"{i + 1}")
        _check_num(path, f + ".lr", rec["lr"], positive=True)
        _check_num(path, f + ".train_loss", rec["train_loss"])
        _check_num(path, f + ".seconds", rec["seconds"])
        for k in ("train_accuracy", "test_accuracy"):
            _check_num(path, f"{f}.{k}", rec[k], high=1.0)
        if rec["images_per_s"] is not None:
            _check_num(path, f + ".images_per_s", rec["images_per_s"])


def validate_metadata(meta, path, n_train, batch_size, exact_sums=True):
    """Raise CheckpointError naming the first field of the (upgraded) trainer metadata whose
    type or range is wrong, for a run of ``n_train`` images in batches of ``batch_size``.
    ``exact_sums``: the checkpoint was written with this batch size and data (nothing changed
    by --allow-config-change), so its partial-epoch sums must match its position exactly."""
    n_batches = -(-n_train // batch_size)
    for key in ("written_by", "model", "model_extra", "optimizer", "epoch", "batch_in_epoch",
                "epoch_sums", "history", "config", "config_changes"):
        if key not in meta:
            raise CheckpointError(f"{path}: metadata has no {key!r} field: not a checkpoint "
                                  f"written by gpucnn train (or a damaged one)")
    _check(path, "written_by", meta["written_by"], isinstance(meta["written_by"], str),
           "a string")
    for key in ("model", "config"):
        _check(path, key, meta[key], isinstance(meta[key], dict), "an object")
    extra = meta["model_extra"]
    _check(path, "model_extra", extra, isinstance(extra, dict) and all(
        isinstance(v, dict) and all(_is_int(c) and c >= 0 for c in v.values())
        for v in extra.values()), "an object of layers' counters (ints >= 0)")
    opt = meta["optimizer"]
    _check(path, "optimizer", opt, isinstance(opt, dict) and isinstance(opt.get("type"), str)
           and "lr" in opt and "steps" in opt, "an object with 'type', 'lr' and 'steps'")
    _check_num(path, "optimizer.lr", opt["lr"], positive=True)
    _check_int(path, "optimizer.steps", opt["steps"], 0)
    _check_int(path, "epoch", meta["epoch"], 0)
    b = meta["batch_in_epoch"]
    _check_int(path, "batch_in_epoch", b, 0, n_batches)
    sums = meta["epoch_sums"]
    _check(path, "epoch_sums", sums, isinstance(sums, list) and len(sums) == 4,
           "a list of 4 numbers [loss * images, correct, images, seconds]")
    loss_sum, correct, seen, seconds = sums
    _check_num(path, "epoch_sums[0]", loss_sum)
    _check_int(path, "epoch_sums[2]", seen, 0, n_train)
    _check_int(path, "epoch_sums[1]", correct, 0, seen)
    _check_num(path, "epoch_sums[3]", seconds)
    if exact_sums:
        want = min(b * batch_size, n_train)
        _check(path, "epoch_sums[2]", seen, seen == want,
               f"{want}, the images of the {b} batches done")
    _check(path, "epoch_sums[2]", seen, (seen > 0) == (b > 0),
           "0 exactly when no batch of the epoch is done")
    _check_history(path, meta["history"], meta["epoch"])
    _check(path, "config_changes", meta["config_changes"],
           isinstance(meta["config_changes"], list)
           and all(isinstance(c, dict) for c in meta["config_changes"]), "a list of objects")


# ---- the run configuration --resume compares -----------------------------------------------
def _lookup(meta, key):
    node = meta
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _canonical(value):
    return json.loads(json.dumps(value))  # tuples compare equal to lists, as saved


def compare_run(saved, current):
    """(differences, unchecked): the RESUME_KEYS (and the epoch count, under a schedule that
    uses it) whose values differ between the checkpoint's metadata ``saved`` and this run's
    ``current``, as {key: {"checkpoint": old, "now": new}}; and the keys the checkpoint does
    not record (not compared)."""
    keys = list(RESUME_KEYS)
    if _lookup(current, "config.schedule")[1] not in (None, "constant"):
        keys.append(EPOCHS_KEY)
    differences, unchecked = {}, []
    for key in keys:
        has_saved, old = _lookup(saved, key)
        has_now, new = _lookup(current, key)
        if not has_saved:
            unchecked.append(key)
        elif not has_now or _canonical(old) != _canonical(new):
            differences[key] = {"checkpoint": old, "now": new}
    return differences, unchecked


def config_mismatch_message(path, differences):
    """One line naming each differing key with both values and what it changes."""
    parts = []
    for key, d in differences.items():
        what = RESUME_KEYS.get(key, "the learning-rate schedule")
        parts.append(f"{key.split('.')[-1]}: checkpoint {d['checkpoint']!r}, now {d['now']!r} "
                     f"({what})")
    return (f"--resume: {path} was written by a run with a different configuration: "
            + "; ".join(parts) + ". Continuing would no longer be an exact resume: rerun with "
            "the checkpoint's values, or add --allow-config-change to continue deliberately "
            "(recorded in the metrics and the checkpoint)")

