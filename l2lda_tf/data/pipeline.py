"""`tf.data` input pipelines: deterministic, resumable training batches and eval batches."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _to_float(images, labels):
    return tf.cast(images, tf.float32) / 255.0, labels


PAD = 4  # random crops of the image zero-padded by 4 pixels on each side (CIFAR standard)
AUGMENT_STREAM = 1  # keeps the augmentation's random stream apart from the shuffle's


def augment(images: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Random crop of the `PAD`-padded images and random horizontal flip, per example.

    Stateless: the result depends only on `key` (shape [2]), so batches are reproducible.
    Crop and flip are one gather of rows and one of columns of the padded batch.
    """
    n, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    keys = tf.random.split(key, 3)
    top = tf.random.stateless_uniform([n, 1], keys[0], 0, 2 * PAD + 1, tf.int32)
    left = tf.random.stateless_uniform([n, 1], keys[1], 0, 2 * PAD + 1, tf.int32)
    flip = tf.random.stateless_uniform([n, 1], keys[2], 0, 2, tf.int32) == 1
    padded = tf.pad(images, [[0, 0], [PAD, PAD], [PAD, PAD], [0, 0]])
    rows = top + tf.range(height)[None]
    columns = left + tf.where(flip, tf.range(width - 1, -1, -1)[None], tf.range(width)[None])
    return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), columns, axis=2,
                     batch_dims=1)


def training_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                     first_epoch: int, epochs: int, augmented: bool = False) -> tf.data.Dataset:
    """Batches of epochs `first_epoch` … `epochs − 1`, float32 images in [0, 1].

    Epoch e is shuffled with a seed derived from (seed, e) alone, and batch b of it augmented
    (if `augmented`: random 4-pixel-padded crop and horizontal flip) with one derived from
    (seed, e, b), so a resumed run sees exactly the batches the uninterrupted run would have.
    Incomplete final batches are dropped (the distribution strategy needs equal shards).
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
        return (order.batch(batch_size, drop_remainder=True).enumerate()
                .map(lambda b, indices: (e, b, indices)))

    def gather(e, b, indices):
        batch = tf.gather(images, indices)
        if augmented:
            key = tf.stack([tf.constant(seed, tf.int64), tf.constant(AUGMENT_STREAM, tf.int64)])
            for data in (e, b):
                key = tf.random.experimental.stateless_fold_in(key, data)
            batch = augment(batch, key)
        return _to_float(batch, tf.gather(labels, indices))

    options = tf.data.Options()
    # in-memory data has no files to shard: each worker of a multi-worker strategy keeps its
    # share of the batches (within a worker, Keras splits each batch across the replicas)
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return (tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch)
            .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE).with_options(options))


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """The whole split in order, float32 images in [0, 1], last batch possibly smaller."""
    return (tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
            .map(_to_float, num_parallel_calls=tf.data.AUTOTUNE).cache()
            .prefetch(tf.data.AUTOTUNE))
