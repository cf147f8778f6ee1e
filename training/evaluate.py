"""Evaluate defenses under the paper's attacks (ALGORITHM.md, "Attacks compared").

    python -m training.evaluate --run DIR [--attacks fgsm,pgd10,...] [--surrogate DIR] [--limit N]
        writes DIR/eval/results.{json,csv,md} (one row) and TensorBoard summaries in DIR/eval/logs
    python -m training.evaluate --runs DIR1 DIR2 ... --out TABLE_DIR
        evaluates each run (reusing DIR/eval/results.json made with the same settings) and writes
        the multi-defense table TABLE_DIR/table.{json,csv,md}, rows = defenses.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from l2lda_tf.config import TrainConfig
from l2lda_tf.data import load_dataset
from l2lda_tf.evaluation import (
    DEFAULT_ATTACKS,
    AttackSettings,
    evaluate_or_reuse,
    evaluate_run,
    markdown_table,
    parse_attacks,
    settings_from_config,
    write_results,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a training run directory (from training.fit)")
    which.add_argument("--runs", nargs="+", help="several runs: the multi-defense table")
    parser.add_argument("--out", help="with --runs: directory for table.{json,csv,md}")
    parser.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                        help="comma-separated: fgsm, pgdK, cwK, advgan, gap, l2lda")
    parser.add_argument("--surrogate", help="a run whose classifier crafts transfer attacks")
    parser.add_argument("--transfer-attack", default="pgd10",
                        help="gradient attack run on the surrogate (fgsm, pgdK, cwK)")
    parser.add_argument("--limit", type=int, help="evaluate on the first N eval images only")
    parser.add_argument("--data-dir", help="local dataset files (mnist: official IDX .gz files)")
    parser.add_argument("--epsilon", type=float, help="ℓ∞ radius (default: the run's ε)")
    parser.add_argument("--samples", type=int, default=10, help="S of the L2L-DA attack")
    parser.add_argument("--attack-train-steps", type=int, default=500,
                        help="training steps of the AdvGAN and GAP generators")
    parser.add_argument("--l2lda-steps", type=int, default=200,
                        help="fine-tuning steps of the L2L-DA attack's generator")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true",
                        help="with --runs: re-evaluate even when an earlier evaluation matches")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=0,
                        help="progress of the learned attacks' training (Keras verbosity)")
    return parser.parse_args(argv)


def settings_for(run_dir: str, args: argparse.Namespace) -> tuple[AttackSettings, TrainConfig]:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a training run: config.json is missing")
    config = TrainConfig.from_json(path.read_text())
    settings = settings_from_config(
        config, epsilon=args.epsilon, samples=args.samples, train_steps=args.attack_train_steps,
        l2lda_steps=args.l2lda_steps, batch_size=args.batch_size, seed=args.seed)
    return settings, config


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        attacks = parse_attacks(args.attacks)
        parse_attacks(args.transfer_attack)
        if args.transfer_attack in ("advgan", "gap", "l2lda"):
            raise ValueError("--transfer-attack must be a gradient attack: fgsm, pgdK or cwK")
        if args.runs and not args.out:
            raise ValueError("--runs needs --out, the directory for the table")
        options = dict(surrogate_dir=args.surrogate, transfer_with=args.transfer_attack,
                       verbose=args.verbose)
        if args.run:
            settings, config = settings_for(args.run, args)
            dataset = load_dataset(config.dataset, args.data_dir)
            results = [evaluate_run(args.run, attacks, settings, dataset, limit=args.limit,
                                    **options)]
            print(f"wrote {Path(args.run) / 'eval'}/results.{{json,csv,md}}")
        else:
            results = []
            for run in args.runs:
                settings, config = settings_for(run, args)
                dataset = load_dataset(config.dataset, args.data_dir)
                evaluate = evaluate_run if args.fresh else evaluate_or_reuse
                results.append(evaluate(run, attacks, settings, limit=args.limit,
                                        dataset=dataset, **options))
            write_results(results, args.out, name="table")
            print(f"wrote {args.out}/table.{{json,csv,md}}")
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown_table(results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
