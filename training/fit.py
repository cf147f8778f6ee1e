"""Train a defense: `python -m training.fit --dataset digits --defense l2lda --out runs/digits`.

Starts from the dataset's preset (the paper's hyperparameters, l2lda_tf.config.PRESETS); each
flag given overrides one field. Rerunning the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys

from l2lda_tf.config import DEFENSES, step_budget
from l2lda_tf.config import preset as make_preset
from l2lda_tf.data import DATASETS, load_dataset
from l2lda_tf.experiment import STRATEGIES, make_strategy, train
from l2lda_tf.trainers import PRECISIONS, auto_precision

# flag → TrainConfig field, for the flags that override a preset value one to one
OVERRIDES = {
    "epochs": int, "batch_size": int, "lam": float, "epsilon": float, "g_lr": float,
    "f_lr": float, "seed": int, "clean_share": float, "epsilon_warmup_epochs": int,
    "clean_warmup_steps": int, "pgd_steps": int, "eval_pgd_steps": int,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.fit", description=__doc__)
    parser.add_argument("--dataset", default="digits", choices=DATASETS)
    parser.add_argument("--defense", default="l2lda", choices=DEFENSES)
    parser.add_argument("--out", required=True, help="run directory (created, or resumed)")
    parser.add_argument("--data-dir", help="local dataset files instead of tensorflow-datasets "
                        "(mnist: the official IDX .gz files; cifar10: cifar-10-python.tar.gz or "
                        "cifar-10-batches-py/; tiny_imagenet: tiny-imagenet-200.zip or the "
                        "extracted tiny-imagenet-200/)")
    parser.add_argument("--init-from", metavar="RUN_DIR", help="start from the classifier of "
                        "this run (e.g. a --defense plain pre-training) instead of from scratch")
    parser.add_argument("--steps", type=int, help="total training steps instead of --epochs")
    for field, kind in OVERRIDES.items():
        flag = "--lambda" if field == "lam" else "--" + field.replace("_", "-")
        parser.add_argument(flag, dest=field, type=kind, help=f"overrides the preset's {field}")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="tf.distribute strategy (auto: mirrored when several GPUs; "
                        "multi_worker: the cluster in TF_CONFIG, see the README)")
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
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                        help="0 silent, 1 progress bar, 2 one line per epoch (as Keras)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        strategy = make_strategy(args.strategy)  # first: multi-worker needs a fresh runtime
        dataset = load_dataset(args.dataset, args.data_dir)
        overrides = {field: getattr(args, field) for field in OVERRIDES}
        if args.steps is not None:
            batch = args.batch_size or make_preset(args.dataset).batch_size
            overrides.update(step_budget(args.steps, len(dataset.train_labels), batch))
        config = make_preset(args.dataset, args.defense, **overrides)
        precision = auto_precision() if args.precision == "auto" else args.precision
        logging.info("precision: %s", precision)
        metrics = train(config, args.out, dataset=dataset, verbose=args.verbose,
                        init_from=args.init_from, strategy=strategy,
                        jit_compile=args.jit_compile, precision=precision,
                        recompute=args.recompute)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in sorted(metrics.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
