"""`tf.data` input pipelines: deterministic, resumable training batches and eval batches."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _to_float(images, labels):
    return tf.cast(images, tf.float32) / 255.0, labels


def training_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                     first_epoch: int, epochs: int) -> tf.data.Dataset:
    """Batches of epochs `first_epoch` … `epochs − 1`, float32 images in [0, 1].

    Epoch e is shuffled with a seed derived from (seed, e) alone, so a resumed run sees exactly
    the batches the uninterrupted run would have. Incomplete final batches are dropped (the
    distribution strategy needs equal shards).
    """
    if len(images) < batch_size:
        raise ValueError(f"batch size {batch_size} exceeds the {len(images)} training images")
    images, labels = tf.constant(images), tf.constant(labels)
    n = int(images.shape[0])

    def epoch(e):
        # A stateless permutation of the indices, keyed by (seed, epoch) only.
        key = tf.stack([tf.constant(seed, tf.int64), e])
        order = tf.data.Dataset.range(n).map(
            lambda i: tf.random.experimental.index_shuffle(i, key, n - 1))
        return order.batch(batch_size, drop_remainder=True)

    def gather(indices):
        return _to_float(tf.gather(images, indices), tf.gather(labels, indices))

    return (tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch)
            .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))

def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """The whole split in order, float32 images in [0, 1], last batch possibly smaller."""
    return (tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
            .map(_to_float, num_parallel_calls=tf.data.AUTOTUNE).cache()
            .prefetch(tf.data.AUTOTUNE))
