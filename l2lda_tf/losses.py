"""The diversity term of L2L-DA (ALGORITHM.md, "One training step", item 3)."""

from __future__ import annotations

import tensorflow as tf


def pairwise_diversity(images: tf.Tensor, noise: tf.Tensor, stabilizer: float = 1e-8) -> tf.Tensor:
    """Per pair i: mean|x[i] − x[N+i]| / (mean|z[i] − z[N+i]| + 1e-8), for a batch of 2N rows
    whose two halves are the same images attacked with different noise vectors z.

    D_t is the mean of this over the N pairs; it is zero when the two halves coincide and grows
    with the distance between the paired adversarial images.
    """
    x_a, x_b = tf.split(images, 2, axis=0)
    z_a, z_b = tf.split(noise, 2, axis=0)
    image_distance = tf.reduce_mean(tf.abs(x_a - x_b), axis=tf.range(1, tf.rank(images)))
    noise_distance = tf.reduce_mean(tf.abs(z_a - z_b), axis=-1)
    return image_distance / (noise_distance + stabilizer)
