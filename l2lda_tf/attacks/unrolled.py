"""The T-step recurrent attack of L2L-DA (docs/algorithm.md, "The unrolled attack")."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from l2lda_tf.attacks.utils import cross_entropy, loss_and_input_gradient, normalize_gradient


class Unroll(NamedTuple):
    """x_1 … x_T and the per-example CE of the classifier at each, differentiable in φ."""

    images: list[tf.Tensor]
    losses: list[tf.Tensor]


def unrolled_attack(classifier, generator, x: tf.Tensor, y: tf.Tensor, noise, epsilon, *,
                    steps: int = 10, alpha: float = 0.25, training: bool = False,
                    recompute: bool = False, gradient_scale=None) -> Unroll:
    """Runs δ_0 = 0; o_t = g(x ‖ δ_t ‖ ∇̃_t, y, z); δ_{t+1} = clip(δ_t + α·ε·o_t, −ε, ε);
    x_{t+1} = clip(x + δ_{t+1}, 0, 1), with ∇_t = ∂CE(f(x_t), y)/∂x_t from the classifier in
    inference mode.

    The losses stay differentiable in φ through δ across all steps, while ∇_t is a constant
    input (no second-order terms). One forward and one backward pass of f at x_t give both
    CE(f(x_t), y) and ∇_t, and since ∇_t is also that loss's gradient in x_t, backpropagation
    reuses it instead of differentiating f again. `training` is the generator's mode; the
    classifier is always in inference mode. `recompute` keeps only each step's inputs for the
    backward pass and reruns the generator there (`tf.recompute_grad`): less memory, one more
    generator forward pass per step. `gradient_scale` is the loss scale of a float16
    classifier, under which ∇_t is computed so that it does not underflow.
    """
    x = tf.cast(x, tf.float32)
    epsilon = tf.cast(epsilon, tf.float32)

    def generator_step(delta, gradient):
        features = tf.concat([x, delta, normalize_gradient(gradient)], axis=-1)
        step = tf.cast(generator(features, y, noise, training=training), tf.float32)
        return tf.clip_by_value(delta + alpha * epsilon * step, -epsilon, epsilon)

    delta = tf.zeros_like(x)
    _, _, gradient = loss_and_input_gradient(classifier, x, y, scale=gradient_scale)
    images, losses = [], []
    for t in range(steps):
        delta = (recomputed(generator_step, generator) if recompute else generator_step)(
            delta, gradient)
        x_t = tf.clip_by_value(x + delta, 0.0, 1.0)
        if t + 1 < steps:
            loss, _, gradient = loss_and_input_gradient(classifier, x_t, y, scale=gradient_scale)
            # the value of CE(f(x_t), y), with ∂/∂x_t = ∇_t
            loss = tf.stop_gradient(loss) + tf.reduce_sum(
                gradient * (x_t - tf.stop_gradient(x_t)), axis=tf.range(1, tf.rank(x_t)))
        else:  # the last input gradient feeds no step: left to backpropagation, if asked for
            loss = cross_entropy(y, classifier(x_t, training=False))
        images.append(x_t)
        losses.append(loss)
    return Unroll(images, losses)


def recomputed(step, model):
    """`tf.recompute_grad(step)` for a `step` that runs `model`: the backward pass reruns
    `step` rather than keeping its activations. The rerun freezes batch-norm moving statistics
    (momentum 1), so that in training mode they are updated once, as without recomputation."""
    calls = []

    def once(*args):
        if not calls:
            calls.append("forward")
            return step(*args)
        with model.frozen_moving_statistics():
            return step(*args)

    return tf.recompute_grad(once)
