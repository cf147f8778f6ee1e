"""Robustness against training steps: PGD-10 and PGD-100 accuracy on the eval split every N
steps of a training run, and the start-up of the attacker (the classifier's accuracy on the
generator's images, per window of adversarial steps).

    python -m benchmarks.learning_curve --dataset mnist --data-dir DIR --steps 3000 \\
        --every 500 --out runs/mnist-curve [--seed S] [--lr-decay-step 0]

writes OUT/curve.json (and the run itself in OUT/run). This is what docs/results.md compares
with the authors' code at the same steps: evaluation in float32, PGD-10 with step ε/4 and
PGD-100 with step ε/12, both from a random start.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from l2lda_tf.attacks import pgd
from l2lda_tf.config import preset, step_budget
from l2lda_tf.data import eval_batches, load_dataset
from l2lda_tf.experiment import train
from l2lda_tf.files import write_atomically
from l2lda_tf.trainers import PRECISIONS, auto_precision


def robust_accuracy(classifier, batches, epsilon: float, steps: int, seed: int) -> float:
    """Accuracy under PGD-`steps` (random start drawn from (seed, batch))."""
    correct = total = 0
    for b, (x, y) in enumerate(batches):
        x_adv = pgd(classifier, x, y, epsilon, steps=steps,
                    seed=tf.constant([seed, b], tf.int64))
        logits = classifier(x_adv, training=False)
        correct += int(tf.reduce_sum(tf.cast(tf.argmax(logits, -1) == tf.cast(y, tf.int64),
                                             tf.int32)))
        total += int(tf.shape(y)[0])
    return correct / total


class LearningCurve(keras.callbacks.Callback):
    """Every `every` steps: clean, PGD-10 and PGD-100 accuracy of the float32 classifier; every
    `window` adversarial steps: the mean accuracy on the generator's images in that window."""

    def __init__(self, batches, epsilon: float, every: int, seed: int, path: Path,
                 window: int = 20):
        super().__init__()
        self.batches, self.epsilon, self.every, self.seed = batches, epsilon, every, seed
        self.path, self.window = path, window
        self.points, self.start_up = [], []
        self.previous = (0, 0.0)  # (batch index in epoch, running adv_acc)
        self.window_sum = self.window_count = 0
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if logs and "adv_acc" in logs and self.model.adversarial:
            # Keras logs running means over the epoch: recover this batch's value
            count, mean = self.previous if batch > 0 else (0, 0.0)
            running = float(np.asarray(logs["adv_acc"]).reshape(-1)[0])
            self.window_sum += running * (count + 1) - mean * count
            self.window_count += 1
            self.previous = (count + 1, running)
            if self.window_count == self.window:
                self.start_up.append({"step": step,
                                      "adv_acc": round(self.window_sum / self.window, 4)})
                self.window_sum = self.window_count = 0
        if step % self.every == 0:
            self.evaluate(step)

    def evaluate(self, step: int) -> None:
        trainer = self.model
        classifier = trainer.eval_classifier
        if classifier is not trainer.classifier:
            classifier.set_weights(trainer.classifier.get_weights())
        point = {"step": step, "seconds": round(time.perf_counter() - self.started, 1)}
        correct = total = 0
        for x, y in self.batches:
            predicted = tf.argmax(classifier(x, training=False), -1)
            correct += int(tf.reduce_sum(tf.cast(predicted == tf.cast(y, tf.int64), tf.int32)))
            total += int(tf.shape(y)[0])
        point["clean"] = round(correct / total, 4)
        for k in (10, 100):
            point[f"pgd{k}"] = round(robust_accuracy(classifier, self.batches, self.epsilon, k,
                                                     self.seed), 4)
        self.points.append(point)
        print(json.dumps(point), flush=True)
        self.save()

    def save(self) -> None:
        write_atomically(self.path, json.dumps(
            {"points": self.points, "start_up": self.start_up}, indent=1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning_curve",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", help="dataset name (default: mnist)")
    parser.add_argument("--data-dir", help="local dataset files (MNIST: the IDX .gz files)")
    parser.add_argument("--defense", default="l2lda", help="defense (default: l2lda)")
    parser.add_argument("--steps", type=int, default=3000, help="total training steps")
    parser.add_argument("--every", type=int, default=500, help="evaluate every N steps")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed")
    parser.add_argument("--lr-decay-step", type=int, default=0,
                        help="step of the classifier's rate decay (0: never, as the authors' "
                        "MNIST runs within these steps)")
    parser.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                        help="Keras dtype policy of training (auto: as training.fit)")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)

    dataset = load_dataset(args.dataset, args.data_dir)
    base = preset(args.dataset, args.defense)
    config = preset(args.dataset, args.defense, seed=args.seed,
                    lr_decay_step=args.lr_decay_step,
                    **step_budget(args.steps, len(dataset.train_labels), base.batch_size))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batches = eval_batches(dataset.eval_images, dataset.eval_labels, 500)
    curve = LearningCurve(batches, config.epsilon, args.every, args.seed, out / "curve.json")
    metrics = train(config, out / "run", dataset=dataset, verbose=2, callbacks=[curve],
                    precision=auto_precision() if args.precision == "auto" else args.precision,
                    export_models=False)
    curve.save()
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
