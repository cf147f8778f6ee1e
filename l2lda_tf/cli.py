"""What the command-line tools share: a quiet TensorFlow start-up, and `TrainConfig` flags.

Import this module before TensorFlow (it does not import it itself) and call `quiet_startup()`
first thing, so TensorFlow's C++ start-up block (absl, oneDNN, CUDA probing) and the library
warnings that are not the user's business stay out of the console; `--verbose` brings them
back. `add_config_flags` derives one flag per `TrainConfig` field from the dataclass, with its
help line and the presets' values, so flags cannot drift from the configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence

from l2lda_tf.config import (
    DEFENSE_OVERRIDES,
    PRESETS,
    ConfigError,
    TrainConfig,
    field_types,
)

QUIET_LEVELS = ("0", "1", "2")  # --verbose values that keep TensorFlow quiet (Keras's levels)
# Python loggers and warning sources whose messages are TensorFlow's business, not the user's:
# e.g. the SavedModel export's "unsupported characters which will be renamed" warning
LIBRARY_LOGGERS = ("tensorflow", "absl", "keras", "tensorflow_datasets", "keras_tuner", "h5py")
LIBRARY_MODULES = r"(tensorflow|keras|tensorflow_datasets|keras_tuner|absl|google\.protobuf)\b"


def wants_tensorflow_logs(argv: Sequence[str] | None = None) -> bool:
    """Whether `argv` asks for TensorFlow's own logs: a bare `--verbose`, or `--verbose N`
    with N beyond Keras's 0, 1, 2 (the training tools' `--verbose 3`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--verbose="):
            return arg.split("=", 1)[1] not in QUIET_LEVELS
        if arg == "--verbose":
            value = argv[i + 1] if i + 1 < len(argv) else ""
            return value.startswith("-") or value not in QUIET_LEVELS
    return False


def quiet_startup(verbose: bool | None = None) -> None:
    """Silences TensorFlow's start-up and library warnings unless `verbose` (default: asked
    for on the command line, see `wants_tensorflow_logs`). Call it before importing TensorFlow.

    TF_CPP_MIN_LOG_LEVEL=3 (unless set already) hides the C++ logs once absl logging is
    initialised; the lines C++ code writes before that (the start-up block, printed once per
    shared library, and CUDA's "failed call to cuInit" on machines without a GPU) cannot be
    turned off by any setting, so stderr is captured while TensorFlow loads and probes its
    devices and replayed only if that fails.
    """
    if verbose is None:
        verbose = wants_tensorflow_logs()
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _captured_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()  # probes CUDA now, while stderr is captured
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=LIBRARY_MODULES)


class _captured_stderr:
    """Points file descriptor 2 at a temporary file; replays it if the block raises."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.file = tempfile.TemporaryFile()
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, kind, error, traceback):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        if kind is not None:
            self.file.seek(0)
            sys.stderr.write(self.file.read().decode(errors="replace"))
        self.file.close()
        return False


# Flags whose spelling is not the field's name with dashes.
FLAG_NAMES = {"lam": "--lambda"}


def flag_name(field: str) -> str:
    """The command-line flag of TrainConfig field `field` (`lam` → `--lambda`)."""
    return FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def _show(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else repr(value)


def preset_values(field: str) -> str:
    """The presets' values of `field`, for `--help`: one value if all agree, else by dataset,
    with the defenses that change it."""
    values = {name: getattr(config, field) for name, config in PRESETS.items()}
    shown = (_show(next(iter(values.values()))) if len(set(map(repr, values.values()))) == 1
             else ", ".join(f"{name} {_show(value)}" for name, value in values.items()))
    changes = ", ".join(f"{dataset}/{defense} {_show(fields[field])}"
                        for (dataset, defense), fields in DEFENSE_OVERRIDES.items()
                        if field in fields)
    return f"preset: {shown}" + (f"; {changes}" if changes else "")


def add_config_flags(parser: argparse.ArgumentParser, skip: Iterable[str] = (),
                     choices: dict[str, Sequence[str]] | None = None) -> list[str]:
    """Adds one flag per TrainConfig field not in `skip` (default None: the preset's value)
    and returns the fields added; `choices` restricts string fields."""
    choices = choices or {}
    group = parser.add_argument_group("training configuration (default: the dataset's preset)")
    added, types = [], field_types()
    for field in dataclasses.fields(TrainConfig):
        if field.name in skip:
            continue
        kind = types[field.name]
        metavar = {int: "N", float: "X"}.get(kind)
        group.add_argument(flag_name(field.name), dest=field.name, type=kind, default=None,
                           choices=choices.get(field.name), metavar=metavar,
                           help=f"{field.metadata['help']} ({preset_values(field.name)})")
        added.append(field.name)
    return added


def check_steps(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses `--steps` beside the `--epochs`/`--steps-per-epoch` it replaces, or below 1."""
    if args.steps is None:
        return
    given = [flag for flag, value in (("--epochs", args.epochs),
                                      ("--steps-per-epoch", args.steps_per_epoch))
             if value is not None]
    if given:
        parser.error(f"--steps sets the number of epochs and steps per epoch; drop "
                     f"{' and '.join(given)}")
    if args.steps < 1:
        parser.error(f"--steps must be a positive integer, got {args.steps}")


def config_overrides(args: argparse.Namespace, fields: Iterable[str]) -> dict:
    """The values given for `fields` on the command line (None: not given)."""
    return {field: getattr(args, field) for field in fields}


def error_message(err: Exception) -> str:
    """A library error as the command line says it: a bad TrainConfig value names its flag."""
    if isinstance(err, ConfigError):
        return f"{flag_name(err.field)} {err.problem}"
    return str(err)
