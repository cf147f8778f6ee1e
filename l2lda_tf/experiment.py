"""One training run end to end: data, trainer, resumable fit, metrics and SavedModel export.

Layout of a run directory:
    config.json        the resolved TrainConfig (a rerun must ask for the same one)
    run.json           what the data fixed: classes, image shape, steps per epoch
    checkpoints/       classifier, generator, both optimizers, RNG state and the step
    logs/              TensorBoard: scalars per epoch, adversarial examples and noises
    metrics.json       final clean and PGD-k accuracy on the eval split
    export/classifier/1, export/generator/1   SavedModels for TF Serving
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from l2lda_tf.checkpoints import CheckpointEachEpoch, Checkpointer
from l2lda_tf.config import TrainConfig
from l2lda_tf.data import (
    ImageDataset,
    augmentation_for,
    eval_batches,
    load_dataset,
    training_batches,
)
from l2lda_tf.export import export_trainer
from l2lda_tf.files import write_atomically
from l2lda_tf.monitoring import AdversarialImages, StuckAttackerWarning
from l2lda_tf.trainers import build_trainer, check_settings

log = logging.getLogger(__name__)
EVAL_BATCH = 500
DATA_FIELDS = ("num_classes", "image_shape", "steps_per_epoch")  # run.json: fixed by the data


STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """`auto`: MirroredStrategy over the GPUs when there are several, the default strategy
    otherwise; `mirrored`: MirroredStrategy over all local devices; `multi_worker`:
    MultiWorkerMirroredStrategy over the cluster in TF_CONFIG (create it before any other
    TensorFlow work); `one_device`: the first GPU, or the CPU."""
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy multi_worker reads the cluster from the TF_CONFIG "
                             "environment variable, which is not set")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: always, except for the non-chief workers
    of a multi-worker cluster (the chief is task "chief", or worker 0 if there is none)."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


RUN_ENTRIES = {"config.json", "run.json", "checkpoints", "logs", "metrics.json", "export"}


class NotARunError(ValueError):
    """A run directory that holds something other than a run: it is never written to."""


def check_run_dir(out_dir: Path) -> None:
    """Raises unless `out_dir` can be a run directory: missing (its nearest existing ancestor a
    writable directory), or a directory holding only what a run writes. Without config.json
    only `checkpoints/` may be there (a warm start), so files a run would overwrite are never
    someone else's."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotARunError(f"run directory {out_dir} is a file")
    if out_dir.is_dir():
        entries = {p.name for p in out_dir.iterdir() if not p.name.startswith(".")}
        allowed = RUN_ENTRIES if (out_dir / "config.json").is_file() else {"checkpoints"}
        foreign = sorted(entries - allowed)
        if foreign:
            raise NotARunError(f"{out_dir} holds {', '.join(foreign[:3])}"
                               f"{', …' if len(foreign) > 3 else ''}, which is not a training "
                               "run; choose a new or empty run directory")
        for name in ("checkpoints", "logs", "export"):
            if (out_dir / name).exists() and not (out_dir / name).is_dir():
                raise NotARunError(f"{out_dir / name} is a file where the run keeps a folder")
    existing = out_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotARunError(f"cannot create run directory {out_dir}: {existing} is a file")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise NotARunError(f"cannot write to {existing}: read-only file system; choose a run "
                           "directory where you can write")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NotARunError(f"cannot write to {existing}: permission denied; choose a run "
                           "directory where you can write")


def prepare_run_dir(out_dir: Path, config: TrainConfig, run_info: dict,
                    write: bool = True) -> TrainConfig:
    """Creates the run directory, or checks that an existing one was made by the same config
    on data of the same shape (classes, image shape, steps per epoch), and returns the
    configuration to train. `write=False` (a non-chief worker) only checks.

    Two differences are allowed: more `epochs` extend a run (its decay step is pinned where it
    was, so the schedule of the epochs done does not change), and `lr_decay_step` None keeps
    the run's own."""
    check_run_dir(out_dir)
    config_path, info_path = out_dir / "config.json", out_dir / "run.json"
    if config_path.exists():
        try:
            saved = TrainConfig.from_json(config_path.read_text())
        except (ValueError, TypeError) as err:
            raise ValueError(f"{config_path} is not a valid configuration ({err})") from err
        if config.lr_decay_step is None:
            config = dataclasses.replace(config, lr_decay_step=saved.lr_decay_step)
        extended = config.epochs > saved.epochs
        changed = saved.differences(config)
        if extended:
            changed.pop("epochs")
        if info_path.exists():
            saved_info = json.loads(info_path.read_text())
            changed.update({k: (saved_info.get(k), run_info[k]) for k in DATA_FIELDS
                            if saved_info.get(k) != run_info[k]})
        if changed:
            details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"{out_dir} holds a run with another configuration ({details}); "
                             "rerun with the same settings and data to resume (more epochs "
                             "extend it), or choose a new run directory")
        if extended:
            total = saved.epochs * run_info["steps_per_epoch"]
            config = dataclasses.replace(config, lr_decay_step=saved.decay_step(total))
            log.info("extending %s from %d to %d epochs; the classifier's rate still drops at "
                     "step %d", out_dir, saved.epochs, config.epochs, config.lr_decay_step)
            if write:
                write_atomically(config_path, config.to_json())
    elif write:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(config_path, config.to_json())
    if write and not info_path.exists():
        write_atomically(info_path, json.dumps(run_info, indent=2))
    return config


def check_before_writing(config: TrainConfig, dataset: ImageDataset,
                         strategy: tf.distribute.Strategy, precision: str) -> None:
    """What `build_trainer` would refuse, and a batch larger than the training split, checked
    before the run directory is touched."""
    check_settings(config, precision, strategy.num_replicas_in_sync)
    n_train = len(dataset.train_labels)
    if config.batch_size > n_train:
        raise ValueError(f"batch size {config.batch_size} exceeds the {n_train} training "
                         f"images of {dataset.name}")


def describe_devices(strategy: tf.distribute.Strategy) -> str:
    """One line on where training runs: the GPUs, or the CPU."""
    gpus = tf.config.list_logical_devices("GPU")
    replicas = strategy.num_replicas_in_sync
    where = f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''}" if gpus else \
        f"CPU ({os.cpu_count()} cores)"
    return where + (f", {replicas} replicas" if replicas > 1 else "")


def read_metrics(out_dir: Path) -> dict | None:
    """metrics.json of a run directory, or None when missing or unreadable."""
    try:
        return json.loads((out_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def train(config: TrainConfig, out_dir: str | Path, data_dir: str | Path | None = None,
          dataset: ImageDataset | None = None, strategy: tf.distribute.Strategy | None = None,
          verbose: int | str = "auto", callbacks: list | None = None,
          init_from: str | Path | None = None, jit_compile: bool = False,
          precision: str = "float32", recompute: bool = False,
          export_models: bool = True) -> dict:
    """Trains (or resumes) the run in `out_dir`, exports it and returns the final metrics.

    `strategy` defaults to `make_strategy("auto")`; `jit_compile`, `precision` (a Keras dtype
    policy) and `recompute` change speed and memory, not the method, so a run may resume with
    other values.
    Under MultiWorkerMirroredStrategy every worker runs this with the same `out_dir` on a
    shared file system: all restore from it, and only the chief writes to it.
    `export_models=False` skips the SavedModel export (tuning trials need only the metrics).

    `init_from`: a run directory whose classifier weights (e.g. clean pre-training with
    defense "plain") start a new run; a resumed run continues from its own checkpoint.
    A finished run returns its metrics.json as it is; a larger `config.epochs` extends it.
    Training that makes the loss or the weights non-finite stops with `NonFiniteError`,
    before the broken state is checkpointed or exported.
    """
    out_dir = Path(out_dir)
    dataset = dataset or load_dataset(config.dataset, data_dir)
    if init_from:
        check_init_source(init_from, config, dataset)
    strategy = strategy or make_strategy()
    check_before_writing(config, dataset, strategy, precision)
    steps_per_epoch = config.steps_per_epoch or len(dataset.train_labels) // config.batch_size
    run_info = {"num_classes": dataset.num_classes, "image_shape": list(dataset.image_shape),
                "steps_per_epoch": steps_per_epoch}
    if init_from:
        run_info["init_from"] = str(Path(init_from).resolve())
    chief = is_chief(strategy)
    config = prepare_run_dir(out_dir, config, run_info, write=chief)
    keras.utils.set_random_seed(config.seed)
    trainer = build_trainer(config, dataset.num_classes, dataset.image_shape, steps_per_epoch,
                            strategy, jit_compile, precision, recompute)
    checkpointer = Checkpointer(trainer, out_dir / "checkpoints", writer=chief)
    done = checkpointer.restore()
    step = int(trainer.optimizer.iterations.numpy())
    saved = read_metrics(out_dir)
    if done >= config.epochs and saved and saved.get("steps") == step:
        log.info("%s is finished (epoch %d, step %d); its metrics.json stands", out_dir, done,
                 step)
        if chief and export_models and not (out_dir / "export").exists():
            export_trainer(trainer, dataset.image_shape, dataset.num_classes, out_dir / "export")
        return saved
    if done:
        log.info("resuming %s from epoch %d (step %d)", out_dir, done, step)
    elif init_from:
        init_classifier(trainer, init_from)
        log.info("classifier initialized from %s", init_from)
    # other workers log to a scratch directory, removed at the end
    log_dir = out_dir / "logs" if chief else Path(tempfile.mkdtemp(prefix="l2lda-worker-"))
    try:
        metrics = run_epochs(trainer, checkpointer, dataset, done, log_dir, verbose,
                             callbacks or [])
    finally:
        if not chief:
            shutil.rmtree(log_dir, ignore_errors=True)
    if chief:
        if export_models:
            export_trainer(trainer, dataset.image_shape, dataset.num_classes, out_dir / "export")
        # written last: a run with metrics.json is complete, exports included
        write_atomically(out_dir / "metrics.json", json.dumps(metrics, indent=2,
                                                              sort_keys=True))
    return metrics


class NonFiniteError(RuntimeError):
    """Training made the loss or the weights NaN or infinite."""


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training as soon as a logged loss or metric, or (at each epoch's end, before the
    checkpoint) a weight, is NaN or infinite: the checkpoints already written stay the last
    good state, and nothing broken is saved or exported."""

    def __init__(self, checkpoint_dir: Path):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir

    def fail(self, what: str, when: str):
        raise NonFiniteError(
            f"training diverged: {what} {when}; stopped before saving it (the checkpoints in "
            f"{self.checkpoint_dir} hold the last good epoch). Lower the learning rates or λ "
            "and train into a new run directory")

    def check_logs(self, logs, when: str):
        for key, value in (logs or {}).items():
            if not math.isfinite(float(value)):
                self.fail(f"{key} is {float(value)}", when)

    def on_train_batch_end(self, batch, logs=None):
        self.check_logs(logs, f"at batch {batch + 1} of epoch {self.epoch + 1}")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self.check_logs(logs, f"at the end of epoch {epoch + 1}")
        for variable in self.model.variables:
            if not bool(tf.reduce_all(tf.math.is_finite(variable.value))):
                self.fail(f"weight {variable.path} is not finite", f"after epoch {epoch + 1}")


class EndCleanWarmup(keras.callbacks.Callback):
    """Switches the trainer to adversarial steps right after its `clean_warmup_steps`-th
    step, mid-epoch if need be, so the warm-up is exactly as long as configured (the authors'
    1,000 steps on MNIST, not 1,040 rounded up to whole epochs)."""

    def on_train_batch_end(self, batch, logs=None):
        trainer = self.model
        if not trainer.adversarial and \
                int(trainer.optimizer.iterations.numpy()) >= trainer.clean_warmup_steps:
            trainer.set_adversarial(True)
            trainer.make_train_function()  # Keras's fit calls `train_function` afresh each step


def run_epochs(trainer, checkpointer: Checkpointer, dataset: ImageDataset, done: int,
               log_dir: Path, verbose: int | str, callbacks: list) -> dict:
    """Runs the clean warm-up and the adversarial epochs from epoch `done` on, then returns
    the eval split's metrics (the random state reset to the run's seed first, so the same
    weights always report the same figures)."""
    config = trainer.config
    eval_data = eval_batches(dataset.eval_images, dataset.eval_labels, EVAL_BATCH)
    monitor = 16 if dataset.num_classes <= 16 else 32
    steps_per_epoch = trainer.steps_per_epoch
    callbacks = [
        StopOnNonFinite(checkpointer.directory),  # first: before anything saves the epoch
        CheckpointEachEpoch(checkpointer),
        keras.callbacks.TensorBoard(str(log_dir), write_graph=False),
        AdversarialImages(log_dir, dataset.eval_images[:monitor] / 255.0,
                          dataset.eval_labels[:monitor], config.epsilon),
        StuckAttackerWarning(),
        *callbacks,
    ]
    # a clean warm-up longer than the run takes the whole run
    clean_end = min(trainer.clean_warmup_epochs, config.epochs)
    for adversarial, end in ((False, clean_end), (True, config.epochs)):
        if done >= end:
            continue
        trainer.set_adversarial(adversarial)
        batches = training_batches(dataset.train_images, dataset.train_labels,
                                   config.batch_size, config.seed, done, end,
                                   augmentation=augmentation_for(dataset.name))
        phase = callbacks if adversarial else [EndCleanWarmup(), *callbacks]
        trainer.fit(batches, epochs=end, initial_epoch=done, steps_per_epoch=steps_per_epoch,
                    validation_data=eval_data, callbacks=phase, verbose=verbose,
                    shuffle=False)
        done = end

    keras.utils.set_random_seed(config.seed)
    metrics = {k: float(v) for k, v in trainer.evaluate(eval_data, return_dict=True,
                                                        verbose=0).items()}
    metrics["steps"] = int(trainer.optimizer.iterations.numpy())
    return metrics


def read_run(run_dir: Path, role: str = "") -> tuple[TrainConfig, dict]:
    """A run directory's config.json and run.json; `role` (e.g. "the initial run") prefixes the
    error for a directory that is not a run."""
    for name in ("config.json", "run.json"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{role}{' ' if role else ''}{run_dir} is not a training "
                                    f"run: {name} is missing")
    config = TrainConfig.from_json((run_dir / "config.json").read_text())
    return config, json.loads((run_dir / "run.json").read_text())


def load_run(run_dir: str | Path, strategy: tf.distribute.Strategy | None = None):
    """Rebuilds a run's trainer (classifier, generator, optimizers) from its newest checkpoint.

    For evaluation, export and tuning: `load_run(DIR).classifier` is the trained classifier.
    """
    run_dir = Path(run_dir)
    config, shapes = read_run(run_dir)
    trainer = build_trainer(config, shapes["num_classes"], tuple(shapes["image_shape"]),
                            shapes["steps_per_epoch"], strategy)
    if not Checkpointer(trainer, run_dir / "checkpoints").restore():
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet")
    return trainer


def check_init_source(run_dir: str | Path, config: TrainConfig, dataset: ImageDataset) -> None:
    """Raises unless `run_dir` is a run whose classifier fits this one (architecture, classes,
    image shape), before anything is written."""
    run_dir = Path(run_dir)
    source, shapes = read_run(run_dir, "the initial run")
    theirs = (source.classifier, shapes["num_classes"], tuple(shapes["image_shape"]))
    ours = (config.classifier, dataset.num_classes, dataset.image_shape)
    if theirs != ours:
        raise ValueError(f"initial run {run_dir}: its classifier is {theirs[0]} for "
                         f"{theirs[1]} classes of {theirs[2]} images; this run needs "
                         f"{ours[0]} for {ours[1]} classes of {ours[2]} images")


def init_classifier(trainer, run_dir: str | Path) -> None:
    """Copies the classifier weights (batch-norm statistics included) of the run in `run_dir`
    into `trainer.classifier`; optimizer state and step count start afresh."""
    trainer.classifier.set_weights(load_run(run_dir).classifier.get_weights())
