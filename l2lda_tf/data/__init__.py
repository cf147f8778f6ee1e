"""Datasets (in-memory uint8 arrays) and the `tf.data` pipelines that feed the trainers."""

from __future__ import annotations

from pathlib import Path

from l2lda_tf.data.cifar10 import load_cifar10_local, load_cifar10_tfds, read_cifar_batch
from l2lda_tf.data.dataset import ImageDataset
from l2lda_tf.data.digits import load_digits
from l2lda_tf.data.mnist import load_mnist_idx, load_mnist_tfds, read_idx
from l2lda_tf.data.pipeline import (
    AUGMENTATIONS,
    Augmentation,
    augment,
    augmentation_for,
    eval_batches,
    training_batches,
)
from l2lda_tf.data.tiny_imagenet import (
    load_tiny_imagenet,
    load_tiny_imagenet_folder,
    load_tiny_imagenet_tfds,
)

DATASETS = ("digits", "mnist", "cifar10", "tiny_imagenet")


def load_dataset(name: str, data_dir: str | Path | None = None) -> ImageDataset:
    """Loads dataset `name`; `data_dir` holds local files where the dataset supports them,
    otherwise tensorflow-datasets provides it."""
    if name == "digits":
        return load_digits()
    if name == "mnist":
        return load_mnist_idx(data_dir) if data_dir else load_mnist_tfds()
    if name == "cifar10":
        return load_cifar10_local(data_dir) if data_dir else load_cifar10_tfds()
    if name == "tiny_imagenet":
        return load_tiny_imagenet(data_dir)
    raise ValueError(f"unknown dataset {name!r}; known datasets: {list(DATASETS)}")


__all__ = [
    "AUGMENTATIONS", "Augmentation", "DATASETS", "ImageDataset", "augment", "augmentation_for",
    "eval_batches",
    "load_cifar10_local", "load_cifar10_tfds", "load_dataset", "load_digits", "load_mnist_idx",
    "load_mnist_tfds", "load_tiny_imagenet", "load_tiny_imagenet_folder",
    "load_tiny_imagenet_tfds", "read_cifar_batch", "read_idx", "training_batches",
]
