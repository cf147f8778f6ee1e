"""The noise-diversity figure of an L2L-DA run: `python -m training.visualize --run DIR`.

One row per class, one column per noise z: adversarial images on the left, their noises δ on
the right as (δ/ε + 1)/2 (zero noise is mid-grey). Also prints the diversity number: the mean
pairwise ℓ1 distance between the noises of different z on the same image, over --images eval
images. Writes DIR/eval/diversity.png and DIR/eval/diversity.json unless --out says otherwise.
"""

# ruff: noqa: E402 - TensorFlow must stay quiet from its import on
from __future__ import annotations

if __name__ == "__main__":
    from l2lda_tf.cli import quiet_startup

    quiet_startup()

import argparse
import json
import sys
from pathlib import Path

from l2lda_tf.cli import error_message
from l2lda_tf.data import load_dataset
from l2lda_tf.evaluation import diversity_figure, diversity_on, save_png
from l2lda_tf.experiment import load_run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.visualize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="an l2lda training run directory")
    parser.add_argument("--out", help="PNG path (default: RUN/eval/diversity.png)")
    parser.add_argument("--data-dir", help="local dataset files (mnist: official IDX .gz files)")
    parser.add_argument("--samples", type=int, default=8, help="noise samples z (columns)")
    parser.add_argument("--images", type=int, default=100,
                        help="eval images the diversity number is averaged over")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's own start-up logs and warnings")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        trainer = load_run(args.run)
        config = trainer.config
        generator = trainer.generator
        if generator is None or not generator.noise_dim:
            raise ValueError(f"{args.run} ({config.defense}) has no generator with noise z: "
                             "the figure needs an l2lda run")
        if args.images < 1:
            raise ValueError(f"--images must be positive, got {args.images}")
        dataset = load_dataset(config.dataset, args.data_dir)
        attack = dict(epsilon=config.epsilon, samples=args.samples, steps=trainer.unroll_steps,
                      alpha=trainer.alpha, seed=args.seed)
        grid, on_figure = diversity_figure(trainer.classifier, generator, dataset.eval_images,
                                           dataset.eval_labels, dataset.num_classes, **attack)
        diversity = diversity_on(trainer.classifier, generator,
                                 dataset.eval_images[:args.images],
                                 dataset.eval_labels[:args.images], **attack)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.run) / "eval" / "diversity.png"
    save_png(grid, out)
    summary = {"diversity": diversity, "diversity_on_figure": on_figure,
               "images": min(args.images, len(dataset.eval_labels)), "samples": args.samples,
               "epsilon": config.epsilon, "figure": str(out)}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}  diversity={diversity:.4f} (mean pairwise ℓ1 between noises, "
          f"ε = {config.epsilon:g}; {on_figure:.4f} on the figure's images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
