"""The trainer's checkpoint metadata: its schema and upgrades, its validation, and the run
configuration that ``--resume`` compares.

Pure functions of the metadata and a few numbers of the current run (no model, no backend), so
one process of a multi-process run can check a checkpoint and share the verdict.

Schema versions: 1 gpucnn 0.1.0 (no "schema_version" key); 2 adds "schema_version" and
"written_by"; 3 adds "config_changes" (the deliberate changes ``--allow-config-change`` let
through, so the run's record says so for ever); 4 adds "data" (an image-folder run's classes
and preprocessing, gpucnn.data.preprocess; None for the built-in datasets), the config keys of
image folders and --input, model configs of model files ("sequential"), and "data_parallel"
(the world size and the global batch of a data-parallel run: ``gpucnn train --distributed``;
older checkpoints were written by one process, whose global batch is its batch size); 5
records "data" for the built-in datasets too (their classes and normalisation, so ``gpucnn
predict`` prepares images as training did) and "config.reinit" (``--model net.onnx
--reinit``); an older checkpoint's "data" of None is dropped on upgrade (not recorded, so
not compared by --resume, and read as the dataset's constants by predict) and its
"config.reinit" is False. Each
later schema adds an upgrade step from the one before in :func:`upgrade_metadata`, so every
older checkpoint keeps loading.
"""
from __future__ import annotations

import json

from . import filerules
from .checkpoint import CheckpointError

__all__ = ["SCHEMA_VERSION", "RESUME_KEYS", "upgrade_metadata", "validate_metadata",
           "compare_run", "config_mismatch_message"]

SCHEMA_VERSION = 5

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
    "config.input": "the input size of the network",
    "config.channels": "the images' channels",
    "config.val_split": "which images of train/ are held out",
    "config.augment": "the augmentation of the training images",
    # an .onnx --model: the run started from the file's weights or (--reinit) seeded ones
    "config.reinit": "the weights the run started from (the .onnx file's, or --reinit's)",
    "data": "the classes and the preprocessing of the images",
    # Compared instead of config.batch_size when the world sizes differ (gpucnn.distributed):
    # a run resumes in another number of processes if ranks x --batch-size is the same.
    "data_parallel.global_batch": "the batches and the number of steps (ranks x --batch-size)",
    # auto's per-shape choices are preset from the checkpoint; a forced one must agree
    "conv_algos.setting": "$GPUCNN_CONV_ALGO: the convolution algorithms (their rounding "
                          "differs)",
}
# The epoch count is compared only when the schedule spreads over it (step, cosine): with the
# constant schedule a larger --epochs simply continues the run.
EPOCHS_KEY = "config.epochs"
BATCH_KEYS = ("config.batch_size", "data_parallel.global_batch")  # one of them is compared


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
    if version <= 3:
        config = meta.get("config")
        batch = config.get("batch_size") if isinstance(config, dict) else None
        if batch is not None:  # (else validation names the missing config)
            meta["data_parallel"] = {"world_size": 1, "global_batch": batch}
    if version <= 4 and meta.get("data") is None:
        meta.pop("data", None)
    if version <= 4 and isinstance(meta.get("config"), dict):
        meta["config"] = {"reinit": False, **meta["config"]}  # no --reinit before schema 5
    meta["schema_version"] = SCHEMA_VERSION
    return meta


# ---- validation: every field, its type and range, before anything is used -------------------
# Types, ranges and allowed keys are the schema of gpucnn.filerules (CHECKPOINT_METADATA);
# what is checked here is what needs the run: the keys a trainer checkpoint must hold, and
# the relations between the fields and the current run's data.
REQUIRED = ("written_by", "model", "model_extra", "optimizer", "epoch", "batch_in_epoch",
            "epoch_sums", "history", "config", "config_changes")


def _check(path, field, value, ok, want):
    if not ok:
        raise CheckpointError(filerules.field_error(path, field, value, want))


def validate_metadata(meta, path, n_train, batch_size, exact_sums=True):
    """Raise CheckpointError naming the first field of the (upgraded) trainer metadata whose
    type, range or relation to the run is wrong, for a run of ``n_train`` images in batches
    of ``batch_size``. ``exact_sums``: the checkpoint was written with this batch size and
    data (nothing changed by --allow-config-change), so its partial-epoch sums must match its
    position exactly."""
    for key in REQUIRED:
        if key not in meta:
            raise CheckpointError(f"{path}: metadata has no {key!r} field: not a checkpoint "
                                  f"written by gpucnn train (or a damaged one)")
    filerules.check_metadata(meta, path, CheckpointError)
    n_batches = -(-n_train // batch_size)
    b = meta["batch_in_epoch"]
    _check(path, "batch_in_epoch", b, b <= n_batches, f"an int in [0, {n_batches}]")
    loss_sum, correct, seen, seconds = meta["epoch_sums"]
    _check(path, "epoch_sums[2]", seen, seen <= n_train, f"an int in [0, {n_train}]")
    _check(path, "epoch_sums[1]", correct, correct <= seen, f"an int in [0, {seen}]")
    if exact_sums:
        want = min(b * batch_size, n_train)
        _check(path, "epoch_sums[2]", seen, seen == want,
               f"{want}, the images of the {b} batches done")
    _check(path, "epoch_sums[2]", seen, (seen > 0) == (b > 0),
           "0 exactly when no batch of the epoch is done")
    epoch, history = meta["epoch"], meta["history"]
    _check(path, "history", history, len(history) == epoch,
           f"a list of the {epoch} finished epochs' records ('epoch' is {epoch})")
    for i, rec in enumerate(history):
        _check(path, f"history[{i}].epoch", rec["epoch"], rec["epoch"] == i + 1, f"{i + 1}")


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
    # The batch compared is the per-process one within a world size (identical then, and
    # what older checkpoints and messages name), the global one across world sizes.
    same_world = (_lookup(saved, "data_parallel.world_size")[1]
                  == _lookup(current, "data_parallel.world_size")[1])
    batch_key = "config.batch_size" if same_world else "data_parallel.global_batch"
    keys = [k for k in RESUME_KEYS if k not in BATCH_KEYS or k == batch_key]
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

