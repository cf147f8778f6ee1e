"""Training checkpoints: everything needed to resume, written so a crash never loses a good one."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from l2lda_tf.files import write_atomically

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves and restores a trainer's state (`Trainer.state()`) and the completed epoch count.

    `tf.train.CheckpointManager` writes a new checkpoint's files before it updates the index
    file atomically, so a run killed while saving leaves the previous checkpoint in force.
    In multi-worker training every worker restores from `directory` and takes part in each
    save, but only the chief (`writer=True`) keeps what it saved.
    """

    def __init__(self, trainer, directory: str | Path, max_to_keep: int = 2,
                 writer: bool = True):
        self.directory = Path(directory)
        check_index(self.directory, repair=writer)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_epochs")
        self.checkpoint = tf.train.Checkpoint(completed_epochs=self.epoch, **trainer.state())
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(directory), max_to_keep)
        self.step = trainer.optimizer.iterations
        self.writer = writer

    def restore(self) -> int:
        """Restores the newest readable checkpoint and returns its completed epochs (0 if none).

        An unreadable newest checkpoint (corrupt or truncated files) is reported and the next
        older one is tried; if none can be read, this raises rather than start over.
        """
        for path in reversed(self.manager.checkpoints):
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except Exception as err:  # noqa: BLE001 - any failure to read means unreadable
                log.warning("checkpoint %s is unreadable (%s); trying an older one", path,
                            str(err).splitlines()[0])
                continue
            return int(self.epoch.numpy())
        if self.manager.checkpoints:
            raise RuntimeError(
                f"no readable checkpoint in {self.manager.directory} (tried "
                f"{', '.join(self.manager.checkpoints)}); move the directory aside to start over")
        return 0

    def save(self, completed_epochs: int) -> str | None:
        """Saves a checkpoint (the chief) or saves one to a scratch directory and drops it
        (other workers: saving may read distributed variables collectively)."""
        self.epoch.assign(completed_epochs)
        if self.writer:
            return self.manager.save(checkpoint_number=self.step)
        with tempfile.TemporaryDirectory(prefix="l2lda-worker-") as scratch:
            self.checkpoint.write(os.path.join(scratch, "ckpt"))
        return None


INDEX = "checkpoint"  # the CheckpointManager's index of the checkpoints it keeps
CHECKPOINT = re.compile(r"ckpt-(\d+)\.index")


def check_index(directory: Path, repair: bool = True) -> None:
    """Makes sure a damaged or missing index never hides the checkpoints beside it (TensorFlow
    would ignore them and start over, overwriting them): the index is rebuilt from the
    `ckpt-N` files present, the damaged one kept as `checkpoint.damaged`. `repair=False` (a
    non-chief worker) raises instead."""
    found = sorted(int(m.group(1)) for p in directory.glob("ckpt-*.index")
                    if (m := CHECKPOINT.fullmatch(p.name)))
    index = directory / INDEX
    if not found or (index.exists() and tf.train.get_checkpoint_state(str(directory))):
        return
    names = [f"ckpt-{n}" for n in found]
    what = "is damaged" if index.exists() else "is missing"
    if not repair:
        raise RuntimeError(f"the checkpoint index {index} {what}; rerun the chief to rebuild it")
    if index.exists():
        os.replace(index, directory / f"{INDEX}.damaged")
    # the manager keeps (and rotates) the checkpoints whose timestamps are recorded
    lines = [f'model_checkpoint_path: "{names[-1]}"'] + \
        [f'all_model_checkpoint_paths: "{name}"' for name in names] + \
        [f"all_model_checkpoint_timestamps: {(directory / f'{name}.index').stat().st_mtime}"
         for name in names]
    write_atomically(index, "\n".join(lines) + "\n")
    log.warning("the checkpoint index %s %s; rebuilt it from %s%s", index, what,
                ", ".join(names), f" (the damaged one is {INDEX}.damaged)" if what ==
                "is damaged" else "")


class CheckpointEachEpoch(keras.callbacks.Callback):
    """Saves a checkpoint at the end of every epoch."""

    def __init__(self, checkpointer: Checkpointer):
        super().__init__()
        self.checkpointer = checkpointer

    def on_epoch_end(self, epoch, logs=None):
        self.checkpointer.save(epoch + 1)
