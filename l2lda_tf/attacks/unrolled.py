"""The T-step recurrent attack of L2L-DA (ALGORITHM.md, "One unrolled attack")."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from l2lda_tf.attacks.utils import cross_entropy, loss_and_input_gradient, normalize_gradient


class Unroll(NamedTuple):
    """x_1 … x_T and the per-example CE of the classifier at each, differentiable in φ."""

    images: list[tf.Tensor]
    losses: list[tf.Tensor]


def unrolled_attack(classifier, generator, x: tf.Tensor, y: tf.Tensor, noise, epsilon,
                    steps: int = 10, alpha: float = 0.25, training: bool = False) -> Unroll:
    """Runs δ_0 = 0; o_t = g(x ‖ δ_t ‖ ∇̃_t, y, z); δ_{t+1} = clip(δ_t + α·ε·o_t, −ε, ε);
    x_{t+1} = clip(x + δ_{t+1}, 0, 1), with ∇_t = ∂CE(f(x_t), y)/∂x_t from the classifier in
    inference mode.

    The forward pass of f at x_t is shared by the generator's loss (kept differentiable, so its
    gradient flows back through δ across all steps) and ∇_t (a constant input: no second-order
    terms). `training` is the generator's mode; the classifier is always in inference mode.
    The last step's input gradient is never used, so it is not computed.
    """
    x = tf.cast(x, tf.float32)
    epsilon = tf.cast(epsilon, tf.float32)
    delta = tf.zeros_like(x)
    _, _, gradient = loss_and_input_gradient(classifier, x, y)
    images, losses = [], []
    for t in range(steps):
        features = tf.concat([x, delta, normalize_gradient(gradient)], axis=-1)
        step = tf.cast(generator(features, y, noise, training=training), tf.float32)
        delta = tf.clip_by_value(delta + alpha * epsilon * step, -epsilon, epsilon)
        x_t = tf.clip_by_value(x + delta, 0.0, 1.0)
        if t + 1 < steps:
            loss, _, gradient = loss_and_input_gradient(classifier, x_t, y)
        else:
            loss = cross_entropy(y, classifier(x_t, training=False))
        images.append(x_t)
        losses.append(loss)
    return Unroll(images, losses)

