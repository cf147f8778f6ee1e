"""Evaluate defenses under the paper's attacks and AutoAttack (docs/evaluation.md).

    python -m training.evaluate --run DIR [--attacks fgsm,pgd10,...] [--surrogate DIR] [--limit N]
        writes DIR/eval/results.{json,csv,md}, metrics.json (one row) and TensorBoard summaries
        in DIR/eval/logs
    python -m training.evaluate --runs DIR1 DIR2 ... --out TABLE_DIR
        evaluates each run (reusing DIR/eval/results.json made with the same settings) and writes
        the multi-defense table TABLE_DIR/table.{json,csv,md}, rows = defenses.
    python -m training.evaluate --model MODEL.keras|SAVEDMODEL_DIR --dataset D --epsilon E
        [--data-dir DIR] [--attacks pgd10,autoattack] [--out DIR]
        any classifier taking images in [0, 1] and returning logits or probabilities.
"""

# ruff: noqa: E402 - TensorFlow must stay quiet from its import on
from __future__ import annotations

if __name__ == "__main__":
    from l2lda_tf.cli import quiet_startup

    quiet_startup()

import argparse
import logging
import sys
from pathlib import Path

from l2lda_tf.cli import error_message
from l2lda_tf.data import load_dataset
from l2lda_tf.evaluation import (
    DEFAULT_ATTACKS,
    AttackSettings,
    evaluate_classifier,
    evaluate_or_reuse,
    evaluate_run,
    load_classifier,
    markdown_table,
    parse_attacks,
    settings_from_config,
    write_results,
)
from l2lda_tf.experiment import read_run

MODEL_ATTACKS = "pgd10,autoattack"
RUN_ATTACKS = ",".join(DEFAULT_ATTACKS)
LEARNED = ("advgan", "gap", "l2lda")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a training run directory (from training.fit)")
    which.add_argument("--runs", nargs="+", help="several runs: the multi-defense table")
    which.add_argument("--model", help="any classifier: a .keras file or a SavedModel directory")
    parser.add_argument("--dataset", help="with --model: the dataset whose eval split to use")
    parser.add_argument("--model-output", choices=("auto", "logits", "probabilities"),
                        default="auto", help="with --model: what it returns (auto: detected)")
    parser.add_argument("--out", help="with --runs: directory for table.{json,csv,md}; with "
                                      "--model: for results.* (default: beside the model)")
    parser.add_argument("--attacks", help="comma-separated: fgsm, pgdK, cwK, advgan, gap, l2lda, "
                                          "apgd-ce, apgd-dlr, apgd-t, fab-t, square, autoattack "
                                          f"(default: {RUN_ATTACKS}; with --model "
                                          f"{MODEL_ATTACKS})")
    parser.add_argument("--surrogate", help="a run whose classifier crafts transfer attacks")
    parser.add_argument("--transfer-attack", default="pgd10",
                        help="gradient attack run on the surrogate (fgsm, pgdK, cwK)")
    parser.add_argument("--limit", type=int, help="evaluate on the first N eval images only")
    parser.add_argument("--data-dir", help="local dataset files (mnist: official IDX .gz files)")
    parser.add_argument("--epsilon", type=float,
                        help="ℓ∞ radius (default: the run's ε; required with --model)")
    parser.add_argument("--samples", type=int, default=10, help="S of the L2L-DA attack")
    parser.add_argument("--attack-train-steps", type=int, default=500,
                        help="training steps of the AdvGAN and GAP generators")
    parser.add_argument("--l2lda-steps", type=int, default=200,
                        help="fine-tuning steps of the L2L-DA attack's generator")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true",
                        help="with --runs: re-evaluate even when an earlier evaluation matches")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2, 3), default=1,
                        help="0 silent; 1 a progress bar per attack; 2 also the learned "
                             "attacks' training (Keras verbosity); 3 as 2 plus TensorFlow's "
                             "own start-up logs and warnings (hidden otherwise)")
    return parser.parse_args(argv)


def settings_for(run_dir: str, args: argparse.Namespace) -> tuple[AttackSettings, object]:
    config, _ = read_run(Path(run_dir))
    settings = settings_from_config(
        config, epsilon=args.epsilon, samples=args.samples, train_steps=args.attack_train_steps,
        l2lda_steps=args.l2lda_steps, batch_size=args.batch_size, seed=args.seed)
    return settings, config


def evaluate_model(args: argparse.Namespace, attacks: list[str]):
    """--model: loads the classifier, says whether it returns logits or probabilities, and
    evaluates it on the dataset's eval split."""
    if not args.dataset or args.epsilon is None:
        raise ValueError("--model needs --dataset and --epsilon (the ℓ∞ radius, e.g. 0.3)")
    dataset = load_dataset(args.dataset, args.data_dir)
    sample = dataset.eval_images[:args.batch_size].astype("float32") / 255.0
    classifier = load_classifier(args.model, sample, args.model_output)
    print(f"{args.model}: assuming it returns {classifier.output} (checked on "
          f"{len(sample)} eval images); images in [0, 1]")
    settings = AttackSettings(epsilon=args.epsilon, samples=args.samples,
                              train_steps=args.attack_train_steps, l2lda_steps=args.l2lda_steps,
                              batch_size=args.batch_size, seed=args.seed)
    model_path = Path(args.model)
    out = Path(args.out) if args.out else model_path.parent / f"{model_path.stem}-eval"
    results = evaluate_classifier(
        classifier, dataset, attacks, settings, out, defense=model_path.stem,
        source=str(model_path), limit=args.limit, surrogate_dir=args.surrogate,
        transfer_with=args.transfer_attack, verbose=min(args.verbose, 2),
        recorded={"model_output": classifier.output, "dataset": args.dataset})
    print(f"wrote {out}/results.{{json,csv,md}} and metrics.json")
    return [results]


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        attacks = parse_attacks(args.attacks or (MODEL_ATTACKS if args.model else RUN_ATTACKS))
        parse_attacks(args.transfer_attack)
        if args.transfer_attack in LEARNED:
            raise ValueError("--transfer-attack must be a gradient attack: fgsm, pgdK or cwK")
        if args.runs and not args.out:
            raise ValueError("--runs needs --out, the directory for the table")
        options = dict(surrogate_dir=args.surrogate, transfer_with=args.transfer_attack,
                       verbose=min(args.verbose, 2))
        if args.model:
            results = evaluate_model(args, attacks)
        elif args.run:
            settings, config = settings_for(args.run, args)
            dataset = load_dataset(config.dataset, args.data_dir)
            results = [evaluate_run(args.run, attacks, settings, dataset, limit=args.limit,
                                    **options)]
            print(f"wrote {Path(args.run) / 'eval'}/results.{{json,csv,md}} and metrics.json")
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
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    print(markdown_table(results), end="")
    for r in results:
        headline = r.headline()
        if headline:
            print(f"{r.defense}: robust accuracy {headline[1]:.2f}% ({headline[0]}), "
                  f"natural {r.accuracies()['Natural']:.2f}%, ε = {r.epsilon:g}")
        for warning in r.warnings:
            print(f"warning: {r.defense}: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
