"""Train-step throughput (images/s) of each defense on synthetic inputs of a dataset's shapes.

    python -m benchmarks.train_step --dataset mnist --defense l2lda pgd --batch-size 100

Counts clean images consumed per second after a warm-up call (tracing excluded), so defenses
are compared on the same footing: one training step per batch of N clean images.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import tensorflow as tf

from l2lda_tf.config import PRESETS, preset
from l2lda_tf.trainers import build_trainer

SHAPES = {"digits": ((28, 28, 1), 10), "mnist": ((28, 28, 1), 10),
          "cifar10": ((32, 32, 3), 10), "tiny_imagenet": ((64, 64, 3), 200)}


def measure(dataset: str, defense: str, batch_size: int, steps: int, jit_compile: bool) -> dict:
    image_shape, num_classes = SHAPES[dataset]
    config = preset(dataset, defense, batch_size=batch_size, epochs=1)
    trainer = build_trainer(config, num_classes, image_shape, steps_per_epoch=steps + 1,
                            jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(batch_size, *image_shape)).astype(np.float32))
    y = tf.constant(rng.integers(0, num_classes, batch_size))
    trainer.make_train_function()
    step = trainer.train_function
    batches = tf.data.Dataset.from_tensors((x, y)).repeat()
    iterator = iter(batches)
    start = time.perf_counter()
    step(iterator)  # traces and compiles
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        logs = step(iterator)
    float(next(iter(logs.values())))  # wait for the last step
    seconds = (time.perf_counter() - start) / steps
    return {"dataset": dataset, "defense": defense, "batch_size": batch_size,
            "jit_compile": jit_compile, "first_step_s": round(first, 2),
            "step_s": round(seconds, 4), "images_per_s": round(batch_size / seconds, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=sorted(PRESETS))
    parser.add_argument("--defense", nargs="+", default=["l2lda", "pgd"])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--jit-compile", action="store_true")
    args = parser.parse_args(argv)
    for defense in args.defense:
        print(json.dumps(measure(args.dataset, defense, args.batch_size, args.steps,
                                 args.jit_compile)), flush=True)


if __name__ == "__main__":
    main()
