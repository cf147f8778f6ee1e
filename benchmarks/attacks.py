"""Attack throughput: our PGD-k and FGSM against CleverHans', our APGD-CE against IBM ART's.

    python -m benchmarks.attacks
    python -m benchmarks.attacks --dataset mnist cifar10 tiny_imagenet --json attacks.json
    python -m benchmarks.attacks --attacks apgd --dataset mnist --json attacks_apgd.json

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

APGD-CE (`--attacks apgd`): 100 steps, one random start, η⁽⁰⁾ = 2ε, against ART's
`AutoProjectedGradientDescent` on a `TensorFlowV2Classifier` of the same Keras model (ART runs
its own NumPy loop around per-step TF gradient calls, so it is timed as is). Both attack only
the points the model classifies correctly, so the labels are the model's own predictions:
every point is attacked on both sides, whatever the untrained model's accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from benchmarks.train_step import SHAPES
from l2lda_tf.tables import markdown_table as write_markdown_table

ATTACKS = ("pgd", "fgsm", "apgd")
REFERENCE = {"pgd": "cleverhans", "fgsm": "cleverhans", "apgd": "art"}
APGD_STEPS = 100


def attack_pair(model, attack: str, epsilon: float, steps: int) -> dict:
    """Our `attack` and the reference's (CleverHans', ART's for APGD) with the same settings,
    each a callable (x, y) → x_adv (a `tf.function` but for ART's)."""
    import numpy as np
    import tensorflow as tf
    from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    from l2lda_tf.attacks import apgd, default_step_size, fgsm, pgd

    def logits(x):  # CleverHans wants logits; ours call the model the same way
        return model(x, training=False)

    if attack == "apgd":
        return {"ours": tf.function(lambda x, y: apgd(model, x, y, epsilon, steps=APGD_STEPS)),
                "art": art_apgd(model, epsilon)}
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


def art_apgd(model, epsilon: float):
    """ART's APGD-CE with AutoAttack's settings on `model`, as (x, y) → x_adv."""
    import numpy as np
    import tensorflow as tf
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    def attack(x, y):
        classes = int(model(x[:1], training=False).shape[-1])
        classifier = TensorFlowV2Classifier(
            model, nb_classes=classes, input_shape=tuple(x.shape[1:]), clip_values=(0.0, 1.0),
            loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        apgd = AutoProjectedGradientDescent(classifier, eps=epsilon, eps_step=2 * epsilon,
                                            max_iter=APGD_STEPS, nb_random_init=1,
                                            batch_size=len(x), loss_type="cross_entropy",
                                            verbose=False)
        return tf.constant(apgd.generate(x.numpy(), np.eye(classes)[y.numpy()]))

    return attack


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


def measure(dataset: str, batch_size: int, repeats: int, steps: int,
            attacks=("pgd", "fgsm")) -> list[dict]:
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
    for attack in attacks:
        pair = attack_pair(model, attack, config.epsilon, steps)
        # APGD (both sides) attacks only correctly classified points: label by prediction.
        labels = (tf.argmax(model(x, training=False), axis=-1, output_type=tf.int32)
                  if attack == "apgd" else y)
        seconds, outputs = time_calls(pair, x, labels, repeats)
        reference = REFERENCE[attack]
        ratio = round(seconds[reference] / seconds["ours"], 3)
        for name in ("ours", reference):
            records.append({
                "dataset": dataset, "classifier": config.classifier, "attack": attack,
                "implementation": name,
                "steps": {"pgd": steps, "fgsm": 1, "apgd": APGD_STEPS}[attack],
                "epsilon": round(config.epsilon, 6), "batch_size": batch_size,
                "call_s": round(seconds[name], 4),
                "images_per_s": round(batch_size / seconds[name], 1),
                f"ours_over_{reference}": ratio,
                **check(model, x, labels, outputs[name], config.epsilon),
            })
    return records


def markdown_table(records: list[dict]) -> str:
    """One row per (dataset, attack): both sides' images/s, their ratio and the checks; one
    table per reference library."""
    tables = []
    for reference, label in (("cleverhans", "CleverHans"), ("art", "ART")):
        pairs = [(ours, theirs) for ours, theirs in zip(records[::2], records[1::2])
                 if theirs["implementation"] == reference]
        if not pairs:
            continue
        header = ["dataset (classifier)", "attack", "ours images/s", f"{label} images/s",
                  f"ours / {label}", "in ε-ball and [0, 1]", f"accuracy ours / {label}"]
        rows = []
        for ours, theirs in pairs:
            name = {"pgd": f"PGD-{ours['steps']}", "fgsm": "FGSM",
                    "apgd": f"APGD-CE-{ours['steps']}"}[ours["attack"]]
            valid = all(r["in_ball"] and r["in_range"] for r in (ours, theirs))
            rows.append([f"{ours['dataset']} ({ours['classifier']})", name,
                         f"{ours['images_per_s']:,.0f}", f"{theirs['images_per_s']:,.0f}",
                         f"{ours[f'ours_over_{reference}']:.2f}", "yes" if valid else "NO",
                         f"{ours['accuracy']:.2f} / {theirs['accuracy']:.2f}"])
        tables.append(write_markdown_table(header, rows))
    return "\n".join(tables)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", default=["mnist", "cifar10"],
                        choices=sorted(SHAPES))
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per attack")
    parser.add_argument("--steps", type=int, default=10, help="k of PGD-k")
    parser.add_argument("--attacks", nargs="+", default=["pgd", "fgsm"], choices=ATTACKS,
                        help="apgd: our APGD-CE (100 steps) against ART's (a dev dependency)")
    parser.add_argument("--json", help="also write all results to this file, as a JSON list")
    args = parser.parse_args(argv)
    records = []
    for dataset in args.dataset:
        for record in measure(dataset, args.batch_size, args.repeats, args.steps, args.attacks):
            print(json.dumps(record), flush=True)
            records.append(record)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(records, file, indent=2)
    print(markdown_table(records))


if __name__ == "__main__":
    main()
