"""Train a defense: `python -m training.fit --dataset digits --defense l2lda --out runs/digits`.

Starts from the dataset's preset (the paper's hyperparameters, l2lda_tf.config.PRESETS); each
flag given overrides one field. Rerunning the same command resumes from the last checkpoint;
rerunning it with a larger --epochs extends a finished run (docs/training.md).
"""

# ruff: noqa: E402 - TensorFlow must stay quiet from its import on
from __future__ import annotations

if __name__ == "__main__":
    from l2lda_tf.cli import quiet_startup

    quiet_startup()

import argparse
import logging
import sys

from l2lda_tf.cli import add_config_flags, check_steps, config_overrides, error_message
from l2lda_tf.config import DEFENSES, step_budget
from l2lda_tf.config import preset as make_preset
from l2lda_tf.data import DATASETS, load_dataset
from l2lda_tf.experiment import STRATEGIES, describe_devices, make_strategy, train
from l2lda_tf.models import CLASSIFIERS
from l2lda_tf.trainers import PRECISIONS, auto_precision

VERBOSITY = ("0 silent, 1 progress bar, 2 one line per epoch (as Keras), 3 as 2 plus "
             "TensorFlow's own start-up logs and warnings (hidden otherwise)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.fit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", choices=DATASETS,
                        help="dataset, and the preset the configuration starts from")
    parser.add_argument("--defense", default="l2lda", choices=DEFENSES,
                        help="training method")
    parser.add_argument("--out", required=True, help="run directory (created, or resumed)")
    parser.add_argument("--data-dir", help="local dataset files instead of tensorflow-datasets "
                        "(mnist: the official IDX .gz files; cifar10: cifar-10-python.tar.gz or "
                        "cifar-10-batches-py/; tiny_imagenet: tiny-imagenet-200.zip or the "
                        "extracted tiny-imagenet-200/)")
    parser.add_argument("--init-from", metavar="RUN_DIR", help="start from the classifier of "
                        "this run (e.g. a --defense plain pre-training) instead of from scratch")
    parser.add_argument("--steps", type=int, metavar="N",
                        help="total training steps, instead of --epochs and --steps-per-epoch")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="tf.distribute strategy (auto: mirrored when several GPUs; "
                        "multi_worker: the cluster in TF_CONFIG, see docs/training.md)")
    parser.add_argument("--precision", "--mixed-precision", dest="precision",
                        choices=("auto", *PRECISIONS), default="auto",
                        help="Keras dtype policy; auto: mixed_bfloat16 on CPUs with bfloat16 "
                        "instructions and on GPUs of compute capability 8+, mixed_float16 on "
                        "7.x, float32 otherwise")
    parser.add_argument("--jit-compile", action="store_true",
                        help="compile train steps with XLA (slower on CPUs, try it on GPUs)")
    parser.add_argument("--recompute", action="store_true",
                        help="learned defenses: recompute the generator in the backward pass "
                        "instead of storing each unroll step's activations (less memory)")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2, 3), default=1, help=VERBOSITY)
    parser.fields = add_config_flags(parser, skip=("dataset", "defense"),
                                     choices={"classifier": sorted(CLASSIFIERS)})
    args = parser.parse_args(argv)
    check_steps(parser, args)
    args.fields = parser.fields
    return args


def build_config(args: argparse.Namespace, train_size: int | None):
    """The preset with the flags applied; `--steps` needs the training split's size (None:
    only check the other values, before the data is loaded)."""
    overrides = config_overrides(args, args.fields)
    if args.steps is not None and train_size is not None:
        batch = args.batch_size or make_preset(args.dataset).batch_size
        overrides.update(step_budget(args.steps, train_size, batch))
    return make_preset(args.dataset, args.defense, **overrides)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        build_config(args, None)  # a bad value fails now, before any data is loaded
        strategy = make_strategy(args.strategy)  # first TF work: multi-worker needs it so
        dataset = load_dataset(args.dataset, args.data_dir)
        config = build_config(args, len(dataset.train_labels))
        precision = auto_precision() if args.precision == "auto" else args.precision
        logging.info("device: %s; precision: %s", describe_devices(strategy), precision)
        metrics = train(config, args.out, dataset=dataset, verbose=min(args.verbose, 2),
                        init_from=args.init_from, strategy=strategy,
                        jit_compile=args.jit_compile, precision=precision,
                        recompute=args.recompute)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in sorted(metrics.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
