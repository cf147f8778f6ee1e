"""Exports a training run for TF Serving: `PATH/classifier/<N>/`, `PATH/generator/<N>/` (learned
defenses only), warm-up records in each, and `PATH/models.config` naming the models.

    python -m serving.export --run DIR --model-base-path PATH [--version N]

N defaults to the next free version, so re-exporting into a served base path rolls the server
(ours or `tensorflow_model_server`) forward to the new models without a restart.
"""

# ruff: noqa: E402 - TensorFlow must stay quiet from its import on
from __future__ import annotations

if __name__ == "__main__":
    from l2lda_tf.cli import quiet_startup

    quiet_startup()

import argparse
import sys
from pathlib import Path

from l2lda_tf.export import (
    export_trainer,
    next_version,
    versions,
    write_model_config,
)

MODEL_NAMES = ("classifier", "generator")


def export_run(run_dir: str | Path, model_base_path: str | Path,
               version: int | None = None) -> dict[str, Path]:
    """Exports the run's newest checkpoint under `model_base_path`; returns model name → the
    version folder written. Refuses to overwrite an existing version: versions are immutable
    once a server may have loaded them."""
    from l2lda_tf.experiment import load_run, read_run

    run_dir, base = Path(run_dir), Path(model_base_path)
    _, shapes = read_run(run_dir)
    trainer = load_run(run_dir)
    image_shape, num_classes = tuple(shapes["image_shape"]), int(shapes["num_classes"])
    names = [name for name in MODEL_NAMES
             if name == "classifier" or trainer.generator is not None]

    if version is None:
        version = next_version(base, names)
    if version < 1:
        raise ValueError(f"--version must be a positive integer, got {version}")
    for name in names:
        if version in versions(base / name):
            raise FileExistsError(f"{base / name / str(version)} already exists; "
                                  "versions are immutable, omit --version to use the next one")

    written = export_trainer(trainer, image_shape, num_classes, base, version, warmup=True)
    # Keep models exported earlier into this base path (say a generator) in the config.
    served = [name for name in MODEL_NAMES if name in written or versions(base / name)]
    write_model_config(base, served)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="training run directory (from training.fit)")
    parser.add_argument("--model-base-path", required=True,
                        help="TF Serving base path; models go to PATH/<model>/<version>/")
    parser.add_argument("--version", type=int, default=None,
                        help="version number (default: one past the newest under the base path)")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's own start-up logs and warnings")
    args = parser.parse_args(argv)
    try:
        written = export_run(args.run, args.model_base_path, args.version)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        sys.exit(f"error: {error}")
    for name, path in written.items():
        print(f"{name}: {path}")
    print(f"model config: {Path(args.model_base_path).resolve() / 'models.config'}")


if __name__ == "__main__":
    main()
