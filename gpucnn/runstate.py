"""Where a training run stands: the finished epochs, the position in the epoch under way and
its partial sums, the finished epochs' records and the configuration changes let through.

It is everything of a run besides the weights and the optimiser that an exact ``--resume``
needs, so the checkpoint's metadata carries it field for field (:meth:`RunState.metadata`);
:func:`gpucnn.runmeta.validate_metadata` checks those fields before
:meth:`RunState.from_metadata` takes them back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["EpochSums", "RunState"]


@dataclass
class EpochSums:
    """The batches of the epoch under way whose results were read back, summed: they make the
    epoch's record, and a checkpoint written mid-epoch carries them so that the resumed epoch's
    record is the one the uninterrupted run would have written."""
    loss: float = 0.0     # the mean loss of each batch times its images
    correct: int = 0
    images: int = 0
    seconds: float = 0.0  # of stepping: evaluation and saving are not counted

    def as_list(self):
        """The checkpoint's ``epoch_sums``: [loss * images, correct, images, seconds]."""
        return [self.loss, self.correct, self.images, self.seconds]


@dataclass
class RunState:
    epoch: int = 0           # finished epochs
    batch_in_epoch: int = 0  # finished batches of the epoch under way
    sums: EpochSums = field(default_factory=EpochSums)
    history: list[dict] = field(default_factory=list)  # one record per finished epoch
    config_changes: list[dict] = field(default_factory=list)  # --allow-config-change's

    def finish_epoch(self, record):
        self.history.append(record)
        self.epoch += 1
        self.batch_in_epoch = 0
        self.sums = EpochSums()

    def metadata(self):
        """The checkpoint metadata fields of this state (schema: gpucnn.runmeta)."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "epoch_sums": self.sums.as_list(), "history": self.history,
                "config_changes": self.config_changes}

    @classmethod
    def from_metadata(cls, meta):
        """The state a validated checkpoint's metadata records (copied: nothing is shared
        with ``meta``)."""
        return cls(meta["epoch"], meta["batch_in_epoch"], EpochSums(*meta["epoch_sums"]),
                   list(meta["history"]), list(meta["config_changes"]))
