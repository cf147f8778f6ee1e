"""Attack throughput: our PGD-k and FGSM against CleverHans' on the same classifier.

    python -m benchmarks.attacks
    python -m benchmarks.attacks --dataset mnist cifar10 tiny_imagenet --json attacks.json

Both sides attack the dataset's preset classifier (untrained, inference mode) on the same
synthetic uniform images of the dataset's real shape, with the preset's ε in ℓ∞ and pixels
clipped to [0, 1]. PGD: k steps (default 10) of our default step size (`default_step_size`,
ε/4 for k ≤ 10), random start on both. Ours run with `keep_best=False`: the plain last iterate
that CleverHans returns (by default our PGD and FGSM keep each example's most damaging input).

Each side is wrapped in `tf.function` (CleverHans' Python loop then unrolls into one graph, its
best case) and traced by a warm-up call outside the timing; the timed calls alternate between
the sides so load from other jobs hits both alike. Reported per (dataset, attack,
implementation): images/s from the median call, whether every output lies in the ε-ball and in
[0, 1], and the model's accuracy on the outputs (a sanity number on an untrained model); per
(dataset, attack), the ratio of our images/s to CleverHans'.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from benchmarks.train_step import SHAPES

ATTACKS = ("pgd", "fgsm")
IMPLEMENTATIONS = ("ours", "cleverhans")


def attack_pair(model, attack: str, epsilon: float, steps: int) -> dict:
    """Our `attack` and CleverHans' with the same settings, each a `tf.function` of (x, y)."""
    import numpy as np
    import tensorflow as tf
    from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    from l2lda_tf.attacks import default_step_size, fgsm, pgd

    def logits(x):  # CleverHans wants logits; ours call the model the same way
        return model(x, training=False)

    if attack == "pgd":
        step_size = default_step_size(epsilon, steps)
        pair = {
            "ours": lambda x, y: pgd(model, x, y, epsilon, steps=steps, keep_best=False),
            "cleverhans": lambda x, y: projected_gradient_descent(
                logits, x, epsilon, step_size, steps, np.inf, clip_min=0.0, clip_max=1.0, y=y,
                rand_init=True, rand_minmax=epsilon, sanity_checks=False),
        }
    else:
        pair = {
            "ours": lambda x, y: fgsm(model, x, y, epsilon, keep_best=False),
            "cleverhans": lambda x, y: fast_gradient_method(
                logits, x, epsilon, np.inf, clip_min=0.0, clip_max=1.0, y=y),
        }
    return {name: tf.function(attack) for name, attack in pair.items()}


def time_calls(attacks: dict, x, y, repeats: int) -> tuple[dict, dict]:
    """Median seconds per call of each attack, and each one's warm-up (tracing) output.

    The timed calls alternate in order between repeats, so neither side always runs first.
    """
    outputs = {name: attack(x, y).numpy() for name, attack in attacks.items()}
    seconds = {name: [] for name in attacks}
    for repeat in range(repeats):
        names = list(attacks) if repeat % 2 == 0 else list(reversed(attacks))
        for name in names:
            start = time.perf_counter()
            attacks[name](x, y).numpy()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in seconds.items()}, outputs


def check(model, x, y, x_adv, epsilon: float) -> dict:
    """The threat model (|x_adv − x|∞ ≤ ε, pixels in [0, 1]) and the accuracy on x_adv."""
    import numpy as np

    perturbation = float(np.max(np.abs(x_adv - x.numpy())))
    predictions = np.argmax(model(x_adv, training=False).numpy(), axis=-1)
    return {"max_perturbation": round(perturbation, 6),
            "in_ball": perturbation <= epsilon + 1e-6,
            "in_range": bool(x_adv.min() >= 0.0 and x_adv.max() <= 1.0),
            "accuracy": round(float(np.mean(predictions == y.numpy())), 4)}


def measure(dataset: str, batch_size: int, repeats: int, steps: int) -> list[dict]:
    """One record per (attack, implementation) on `dataset`'s preset classifier."""
    import numpy as np
    import tensorflow as tf

    from l2lda_tf.config import preset
    from l2lda_tf.models import build_classifier

    image_shape, num_classes = SHAPES[dataset]
    config = preset(dataset)
    tf.random.set_seed(0)
    model = build_classifier(config.classifier, num_classes, image_shape)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(batch_size, *image_shape)).astype(np.float32))
    y = tf.constant(rng.integers(0, num_classes, batch_size).astype(np.int32))
    records = []
    for attack in ATTACKS:
        pair = attack_pair(model, attack, config.epsilon, steps)
        seconds, outputs = time_calls(pair, x, y, repeats)
        ratio = round(seconds["cleverhans"] / seconds["ours"], 3)
        for name in IMPLEMENTATIONS:
            records.append({
                "dataset": dataset, "classifier": config.classifier, "attack": attack,
                "implementation": name, "steps": steps if attack == "pgd" else 1,
                "epsilon": round(config.epsilon, 6), "batch_size": batch_size,
                "call_s": round(seconds[name], 4),
                "images_per_s": round(batch_size / seconds[name], 1),
                "ours_over_cleverhans": ratio,
                **check(model, x, y, outputs[name], config.epsilon),
            })
    return records


def markdown_table(records: list[dict]) -> str:
    """One row per (dataset, attack): both sides' images/s, their ratio and the checks."""
    lines = ["| dataset (classifier) | attack | ours images/s | CleverHans images/s "
             "| ours / CleverHans | in ε-ball and [0, 1] | accuracy ours / CleverHans |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for ours, theirs in zip(records[::2], records[1::2]):
        attack = f"PGD-{ours['steps']}" if ours["attack"] == "pgd" else "FGSM"
        valid = all(r["in_ball"] and r["in_range"] for r in (ours, theirs))
        lines.append(
            f"| {ours['dataset']} ({ours['classifier']}) | {attack} "
            f"| {ours['images_per_s']:,.0f} | {theirs['images_per_s']:,.0f} "
            f"| {ours['ours_over_cleverhans']:.2f} | {'yes' if valid else 'NO'} "
            f"| {ours['accuracy']:.2f} / {theirs['accuracy']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", default=["mnist", "cifar10"],
                        choices=sorted(SHAPES))
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per attack")
    parser.add_argument("--steps", type=int, default=10, help="k of PGD-k")
    parser.add_argument("--json", help="also write all results to this file, as a JSON list")
    args = parser.parse_args(argv)
    records = []
    for dataset in args.dataset:
        for record in measure(dataset, args.batch_size, args.repeats, args.steps):
            print(json.dumps(record), flush=True)
            records.append(record)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(records, file, indent=2)
    print(markdown_table(records))


if __name__ == "__main__":
    main()
