"""`tf.data` input pipelines: deterministic, resumable training batches and eval batches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf


def _to_float(images, labels):
    return tf.cast(images, tf.float32) / 255.0, labels


PAD = 4  # random crops of the image zero-padded by 4 pixels on each side
AUGMENT_STREAM = 1  # keeps the augmentation's random stream apart from the shuffle's


@dataclass(frozen=True)
class Augmentation:
    """The random transformations of a dataset's training images, as in the authors' code:
    a crop of the `PAD`-padded image, a horizontal flip, a rotation by up to ± `rotation`
    degrees (bilinear, zero fill)."""

    crop: bool = False
    flip: bool = False
    rotation: float = 0.0


# Digits train on random crops only (a flipped digit can be another digit); Tiny ImageNet on
# rotations and flips; CIFAR-10 on crops and flips.
AUGMENTATIONS = {
    "digits": Augmentation(crop=True),
    "mnist": Augmentation(crop=True),
    "cifar10": Augmentation(crop=True, flip=True),
    "tiny_imagenet": Augmentation(flip=True, rotation=20.0),
}


def augmentation_for(name: str) -> Augmentation | None:
    """The training augmentation of dataset `name` (None: none)."""
    return AUGMENTATIONS.get(name)


def rotation_transforms(angles: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Per-image [a0, a1, a2, b0, b1, b2, c0, c1] projective transforms (output pixel → input
    pixel, `keras.ops.image.affine_transform`'s convention) rotating about the image centre."""
    cos, sin = tf.cos(angles), tf.sin(angles)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    zeros = tf.zeros_like(angles)
    return tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                     sin, cos, cy - sin * cx - cos * cy, zeros, zeros], axis=1)


def augment(images: tf.Tensor, key: tf.Tensor,
            augmentation: Augmentation = Augmentation(crop=True, flip=True)) -> tf.Tensor:
    """`augmentation` applied per example: a random crop of the `PAD`-padded images, a random
    horizontal flip, a random rotation.

    Stateless: the result depends only on `key` (shape [2]), so batches are reproducible.
    Crop and flip are one gather of rows and one of columns of the padded batch.
    """
    n, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    keys = tf.random.split(key, 4)
    pad = PAD if augmentation.crop else 0
    top = tf.random.stateless_uniform([n, 1], keys[0], 0, 2 * pad + 1, tf.int32)
    left = tf.random.stateless_uniform([n, 1], keys[1], 0, 2 * pad + 1, tf.int32)
    flip = tf.random.stateless_uniform([n, 1], keys[2], 0, 2, tf.int32) == 1
    flip = tf.logical_and(flip, augmentation.flip)
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = top + tf.range(height)[None]
    columns = left + tf.where(flip, tf.range(width - 1, -1, -1)[None], tf.range(width)[None])
    out = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), columns, axis=2, batch_dims=1)
    if augmentation.rotation:
        limit = augmentation.rotation * math.pi / 180
        angles = tf.random.stateless_uniform([n], keys[3], -limit, limit)
        out = keras.ops.image.affine_transform(
            tf.cast(out, tf.float32), rotation_transforms(angles, height, width),
            interpolation="bilinear", fill_mode="constant")
    return out


def training_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                     first_epoch: int, epochs: int,
                     augmentation: Augmentation | None = None) -> tf.data.Dataset:
    """Batches of epochs `first_epoch` … `epochs − 1`, float32 images in [0, 1].

    Epoch e is shuffled with a seed derived from (seed, e) alone, and batch b of it augmented
    (with `augmentation`, if any) with one derived from (seed, e, b), so a resumed run sees
    exactly the batches the uninterrupted run would have.
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
        if augmentation is not None:
            key = tf.stack([tf.constant(seed, tf.int64), tf.constant(AUGMENT_STREAM, tf.int64)])
            for data in (e, b):
                key = tf.random.experimental.stateless_fold_in(key, data)
            batch = augment(batch, key, augmentation)
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
