"""Datasets (in-memory uint8 arrays) and the `tf.data` pipelines that feed the trainers."""

from __future__ import annotations

from pathlib import Path

from l2lda_tf.data.dataset import ImageDataset
from l2lda_tf.data.digits import load_digits
from l2lda_tf.data.mnist import load_mnist_idx, load_mnist_tfds, read_idx
from l2lda_tf.data.pipeline import eval_batches, training_batches

DATASETS = ("digits", "mnist")


def load_dataset(name: str, data_dir: str | Path | None = None) -> ImageDataset:
    """Loads dataset `name`; `data_dir` holds local files where the dataset supports them."""
    if name == "digits":
        return load_digits()
    if name == "mnist":
        return load_mnist_idx(data_dir) if data_dir else load_mnist_tfds()
    raise ValueError(f"unknown dataset {name!r}; known datasets: {list(DATASETS)}")


__all__ = [
    "DATASETS", "ImageDataset", "eval_batches", "load_dataset", "load_digits",
    "load_mnist_idx", "load_mnist_tfds", "read_idx", "training_batches",
]
