"""Search λ (and optionally the learning rates) for a defense with keras-tuner:
`python -m training.tune --dataset digits --defense l2lda --max-trials 6 --out runs/tune`.

Each trial trains the dataset's preset with the trial's values on the training split minus a
validation split, and is scored by PGD-k accuracy on that split, ties broken by clean accuracy;
the eval split is never used. Rerunning the same command resumes the search; a larger
--max-trials extends it. --train-best then trains the best values into OUT/best, as
training.fit would. Distributed: keras-tuner's KERASTUNER_TUNER_ID / KERASTUNER_ORACLE_IP /
KERASTUNER_ORACLE_PORT variables make this process the chief (the oracle) or a worker.
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
from l2lda_tf.models import CLASSIFIERS
from l2lda_tf.tuning import TUNERS, is_worker, run_search, train_best, validation_size
from l2lda_tf.tuning.search import DEFAULT_VALIDATION_SHARE

# λ is always searched, so it has no flag here
NOT_FLAGS = ("dataset", "defense", "lam")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", choices=DATASETS,
                        help="dataset, and the preset the configuration starts from")
    parser.add_argument("--defense", default="l2lda", choices=DEFENSES,
                        help="training method whose λ is searched")
    parser.add_argument("--out", required=True, help="search directory (created, or resumed)")
    parser.add_argument("--data-dir", help="local dataset files, as for training.fit")
    parser.add_argument("--tuner", default="bayesian", choices=TUNERS,
                        help="keras-tuner search algorithm")
    parser.add_argument("--max-trials", type=int, default=10,
                        help="trials to run in all (random, bayesian; hyperband sets its own)")
    parser.add_argument("--tune-rates", action="store_true",
                        help="also search the classifier (and generator) learning rates")
    parser.add_argument("--validation-split", type=float, default=DEFAULT_VALIDATION_SHARE,
                        help="share of the training split held out to score trials")
    parser.add_argument("--train-best", action="store_true",
                        help="after the search, train the best values into OUT/best")
    parser.add_argument("--steps", type=int, metavar="N",
                        help="training steps per trial instead of --epochs and "
                             "--steps-per-epoch (hyperband: per bracket epoch unit)")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2, 3), default=1,
                        help="0 silent, 1 one table per trial, 2 also each trial's epochs, 3 as "
                             "2 plus TensorFlow's own start-up logs and warnings")
    fields = add_config_flags(parser, skip=NOT_FLAGS, choices={"classifier": sorted(CLASSIFIERS)})
    args = parser.parse_args(argv)
    check_steps(parser, args)
    args.fields = fields
    return args


def base_config(args: argparse.Namespace, train_size: int | None):
    """The preset with the flags applied; --steps fixes steps per epoch on the trials' (smaller)
    training split, so the final run of --train-best gets the same step budget (`train_size`
    None: only check the other values, before the data is loaded)."""
    overrides = config_overrides(args, args.fields)
    if args.tune_rates and (args.g_lr is not None or args.f_lr is not None):
        raise ValueError("--tune-rates searches the learning rates; drop --g-lr and --f-lr")
    if args.steps is not None and train_size is not None:
        batch = args.batch_size or make_preset(args.dataset).batch_size
        trial_train = train_size - validation_size(train_size, args.validation_split)
        overrides.update(step_budget(args.steps, trial_train, batch))
    return make_preset(args.dataset, args.defense, **overrides)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        base_config(args, None)  # a bad value fails now, before any data is loaded
        dataset = load_dataset(args.dataset, args.data_dir)
        config = base_config(args, len(dataset.train_labels))
        best = run_search(config, dataset, args.out, tuner=args.tuner,
                          max_trials=args.max_trials, tune_rates=args.tune_rates,
                          validation_share=args.validation_split,
                          verbose=min(args.verbose, 2))
        if is_worker():
            return 0
        if best is None:
            raise RuntimeError(f"no trial completed; see {args.out}/trials.md")
        print("best: " + " ".join(f"{k}={best[k]:.6g}" for k in
                                  ("lam", "g_lr", "f_lr", "objective", "clean_acc")) +
              f" pgd{config.eval_pgd_steps}_acc={best[f'pgd{config.eval_pgd_steps}_acc']:.4f}")
        if args.train_best:
            metrics = train_best(args.out, dataset, verbose=min(args.verbose, 2))
            print("best run: " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else
                                          f"{k}={v}" for k, v in sorted(metrics.items())))
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
