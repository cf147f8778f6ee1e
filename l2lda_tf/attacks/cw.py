"""Carlini–Wagner's margin loss minimized inside the ℓ∞ ball (the CW-k of Madry et al.)."""

from __future__ import annotations

import tensorflow as tf

from l2lda_tf.attacks.utils import keep_more_damaging, margin


@tf.function
def cw_linf(model, x: tf.Tensor, y: tf.Tensor, epsilon, *, steps: int = 100,
            kappa: float = 0.0, learning_rate: float = 0.1) -> tf.Tensor:
    """CW-k: minimizes max(Z_y − max_{j≠y} Z_j, −κ) over δ = ε·tanh(w) with k Adam steps on w.

    The tanh change of variables (Carlini & Wagner's own) keeps every iterate inside the ball,
    so no projection fights the optimizer; pixels are clipped to [0, 1] after adding δ. Starts
    from δ = 0 (the clean image) and returns each example's most damaging iterate.
    """
    x = tf.cast(x, tf.float32)
    epsilon = tf.cast(epsilon, tf.float32)
    beta1, beta2, tiny = 0.9, 0.999, 1e-8

    def image(w):
        return tf.clip_by_value(x + epsilon * tf.tanh(w), 0.0, 1.0)

    def step(i, w, m, v, best, best_margin):
        with tf.GradientTape() as tape:
            tape.watch(w)
            x_adv = image(w)
            logit_margin = margin(y, model(x_adv, training=False))
            # Sum of independent per-example losses: each w gets its own example's gradient.
            loss = tf.reduce_sum(tf.maximum(-logit_margin, -kappa))
        best, best_margin = keep_more_damaging(best, best_margin, x_adv, logit_margin)
        gradient = tape.gradient(loss, w)
        m = beta1 * m + (1 - beta1) * gradient
        v = beta2 * v + (1 - beta2) * tf.square(gradient)
        t = tf.cast(i + 1, tf.float32)
        update = (m / (1 - beta1 ** t)) / (tf.sqrt(v / (1 - beta2 ** t)) + tiny)
        return i + 1, w - learning_rate * update, m, v, best, best_margin

    zeros = tf.zeros_like(x)
    best_margin = tf.fill(tf.shape(y), -float("inf"))
    _, w, _, _, best, best_margin = tf.while_loop(
        lambda i, *_: i < steps, step, (tf.constant(0), zeros, zeros, zeros, x, best_margin))
    best, _ = keep_more_damaging(best, best_margin, image(w),
                                 margin(y, model(image(w), training=False)))
    return best
