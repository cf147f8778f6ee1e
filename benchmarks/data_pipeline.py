"""Input-pipeline throughput (images/s) per dataset against the trainer's consumption rate.

    python -m benchmarks.data_pipeline --dataset mnist cifar10 tiny_imagenet --defense plain

For each dataset: `training_batches` (shuffle, gather, augmentation where the dataset has it,
float conversion) over uint8 arrays of the real training-set size and image shape, at the
preset's batch size; then the train step of each defense on the same batch (the fastest one,
plain training, bounds how fast the pipeline must be). For Tiny ImageNet it also times the
one-off parallel JPEG decode of the folder reader. Random pixels: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from benchmarks.train_step import SHAPES, measure
from l2lda_tf.config import preset
from l2lda_tf.data import augmentation_for, training_batches
from l2lda_tf.data.tiny_imagenet import decode_jpegs

TRAIN_SIZES = {"digits": 1437, "mnist": 60_000, "cifar10": 50_000, "tiny_imagenet": 100_000}


def pipeline_rate(dataset: str, batch_size: int, batches: int) -> dict:
    """Images/s delivered by `training_batches` after one warm-up batch."""
    (height, width, channels), num_classes = SHAPES[dataset]
    rng = np.random.default_rng(0)
    n = TRAIN_SIZES[dataset]
    images = rng.integers(0, 256, (n, height, width, channels), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n)
    augmentation = augmentation_for(dataset)
    iterator = iter(training_batches(images, labels, batch_size, 0, 0, 1000,
                                     augmentation=augmentation))
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        x, _ = next(iterator)
    x.numpy()
    seconds = time.perf_counter() - start
    return {"dataset": dataset, "augmented": augmentation is not None, "batch_size": batch_size,
            "pipeline_images_per_s": round(batches * batch_size / seconds, 1)}


def decode_rate(images: int) -> dict:
    """Images/s of the Tiny ImageNet folder reader's parallel JPEG decode (a one-off cost)."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        items = []
        for i in range(images):
            data = tf.io.encode_jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
            (root / "images" / f"{i}.JPEG").write_bytes(data.numpy())
            items.append((f"images/{i}.JPEG", 0))
        start = time.perf_counter()
        decode_jpegs(root, items)
        seconds = time.perf_counter() - start
    return {"dataset": "tiny_imagenet", "jpeg_decode_images_per_s": round(images / seconds, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", default=["mnist", "cifar10", "tiny_imagenet"],
                        choices=sorted(TRAIN_SIZES))
    parser.add_argument("--defense", nargs="*", default=["plain"],
                        help="defenses whose train step to time (none: pipeline only)")
    parser.add_argument("--batches", type=int, default=50, help="pipeline batches to time")
    parser.add_argument("--steps", type=int, default=3, help="train steps to time")
    parser.add_argument("--decode-images", type=int, default=2000)
    args = parser.parse_args(argv)
    for dataset in args.dataset:
        batch_size = preset(dataset).batch_size
        row = pipeline_rate(dataset, batch_size, args.batches)
        for defense in args.defense:
            rate = measure(dataset, defense, batch_size, args.steps, jit_compile=False,
                           precision="float32")
            row[f"{defense}_train_images_per_s"] = rate["images_per_s"]
            row[f"{defense}_pipeline_share"] = round(
                rate["images_per_s"] / row["pipeline_images_per_s"], 3)
        print(json.dumps(row), flush=True)
    if "tiny_imagenet" in args.dataset and args.decode_images:
        print(json.dumps(decode_rate(args.decode_images)), flush=True)


if __name__ == "__main__":
    main()
