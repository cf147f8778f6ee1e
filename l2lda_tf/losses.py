"""The L2L-DA generator loss and its diversity term (docs/algorithm.md, "One training step")."""

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


def generator_loss(unroll, noise: tf.Tensor | None, lam: float, examples) -> tuple:
    """L_g = Σ_t [−CE(f(x_t), y) − λ·D_t] of an `Unroll` (x_1 … x_T and their per-example CE),
    averaged over `examples` (the global batch's rows, under a distribution strategy).

    With `noise` (a paired batch: row i and N+i are the same image under two z) the diversity
    term is included, averaged over examples / 2 pairs; without it (L2L) L_g is −Σ_t CE.
    Returns (L_g, Σ_t CE per example, Σ_t D_t per pair or None).
    """
    examples = tf.cast(examples, tf.float32)
    ce = tf.add_n(unroll.losses)
    loss = -tf.reduce_sum(ce) / examples
    if noise is None:
        return loss, ce, None
    diversity = tf.add_n([pairwise_diversity(x_t, noise) for x_t in unroll.images])
    return loss - lam * tf.reduce_sum(diversity) / (examples / 2), ce, diversity
