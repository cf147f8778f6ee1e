"""The validation split a search scores its trials on, carved from the training split."""

from __future__ import annotations

import numpy as np

from l2lda_tf.data import ImageDataset


def validation_size(train_size: int, share: float) -> int:
    """How many of `train_size` training images a validation `share` holds out."""
    if not 0 < share < 1:
        raise ValueError(f"the validation share must be in (0, 1), got {share}")
    return int(round(share * train_size))


def validation_dataset(dataset: ImageDataset, share: float, seed: int) -> ImageDataset:
    """`dataset` with a fixed random `share` of its training images moved into the eval split.

    The real eval split is dropped, so a search never sees it: trials train on the rest of the
    training split and report their accuracies on the held-out part. The name is kept, so
    trials get the dataset's augmentation like the final run.
    """
    n = len(dataset.train_labels)
    n_val = validation_size(n, share)
    if not 1 <= n_val < n:
        raise ValueError(f"a validation share of {share} of {dataset.name}'s {n} training "
                         f"images leaves {n_val} for validation and {n - n_val} for training")
    order = np.random.default_rng(seed).permutation(n)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return ImageDataset(dataset.name, dataset.train_images[train],
                        dataset.train_labels[train], dataset.train_images[val],
                        dataset.train_labels[val], dataset.num_classes)
