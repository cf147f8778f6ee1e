"""Pieces every attack shares: projecting onto the threat model, losses, input gradients."""

from __future__ import annotations

import tensorflow as tf


def project(x_adv: tf.Tensor, x: tf.Tensor, epsilon) -> tf.Tensor:
    """Projects onto the threat model: |x_adv − x|∞ ≤ ε and 0 ≤ x_adv ≤ 1."""
    return tf.clip_by_value(tf.clip_by_value(x_adv, x - epsilon, x + epsilon), 0.0, 1.0)


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example softmax cross-entropy of integer labels."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
    )


def margin(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """max_{j≠y} Z_j − Z_y per example: positive exactly when the example is misclassified."""
    logits = tf.cast(logits, tf.float32)
    true_mask = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1]) > 0.5
    true_logit = tf.reduce_max(tf.where(true_mask, logits, -float("inf")), axis=-1)
    other_logit = tf.reduce_max(tf.where(true_mask, -float("inf"), logits), axis=-1)
    return other_logit - true_logit


def loss_and_input_gradient(model, x: tf.Tensor, y: tf.Tensor, training: bool = False,
                            scale=None):
    """Per-example CE of `model` at `x` and its gradient ∂CE/∂x, the model in inference mode.

    The gradient is returned behind `tf.stop_gradient`: callers feed it to attackers as a
    constant input, while the loss itself stays differentiable with respect to `x`. `scale`
    multiplies the loss before differentiation and divides the gradient after, as a loss scale
    does: a float16 model's small gradients would otherwise underflow to zero.
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=training)
        loss = cross_entropy(y, logits)
        scaled = loss if scale is None else loss * tf.cast(scale, loss.dtype)
    gradient = tape.gradient(scaled, x)
    if scale is not None:
        gradient = gradient / tf.cast(scale, gradient.dtype)
    return loss, logits, tf.stop_gradient(gradient)


def normalize_gradient(gradient: tf.Tensor, stabilizer: float = 1e-15) -> tf.Tensor:
    """∇̃: the gradient divided, per example and channel, by its Frobenius norm over (H, W)."""
    norm = tf.sqrt(tf.reduce_sum(tf.square(gradient), axis=[1, 2], keepdims=True))
    return gradient / (norm + stabilizer)


def keep_more_damaging(best: tf.Tensor, best_margin: tf.Tensor, candidate: tf.Tensor,
                       candidate_margin: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per example, keeps whichever of `best` and `candidate` has the larger logit margin
    (`margin`: positive when misclassified), so an attack never returns a weaker iterate."""
    better = candidate_margin > best_margin
    mask = tf.reshape(better, tf.concat([tf.shape(better), tf.ones([tf.rank(best) - 1],
                                                                   tf.int32)], 0))
    return tf.where(mask, candidate, best), tf.maximum(best_margin, candidate_margin)


def most_damaging(model, x: tf.Tensor, y: tf.Tensor, *candidates: tf.Tensor) -> tf.Tensor:
    """The most damaging of the clean `x` and each candidate, per example: what an attack
    reports, so it can never leave the model more accurate than on clean inputs."""
    best, best_margin = x, margin(y, model(x, training=False))
    for candidate in candidates:
        best, best_margin = keep_more_damaging(
            best, best_margin, candidate, margin(y, model(candidate, training=False)))
    return best


def scatter_rows(full: tf.Tensor, indices: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
    """`full` with the rows at `indices` (a 1-D int tensor) replaced by `rows`."""
    return tf.tensor_scatter_nd_update(full, indices[:, None], rows)


def on_robust_points(model, x: tf.Tensor, y: tf.Tensor, best: tf.Tensor, run) -> tf.Tensor:
    """Runs `run(x_sub, y_sub, index)` only on the examples `best` does not yet misclassify
    and keeps, per example, the more damaging of `best` and the result: how AutoAttack spends
    restarts and target classes on the points still robust."""
    robust = tf.reshape(tf.where(margin(y, model(best, training=False)) <= 0), [-1])

    def attack_robust():
        x_sub, y_sub = tf.gather(x, robust), tf.gather(y, robust)
        better = most_damaging(model, tf.gather(best, robust), y_sub, run(x_sub, y_sub, robust))
        return scatter_rows(best, robust, better)

    # Nothing left to attack: skip (some kernels reject empty batches).
    return tf.cond(tf.size(robust) > 0, attack_robust, lambda: best)


def ranked_classes(logits: tf.Tensor, rank: int) -> tf.Tensor:
    """Per example, the class with the `rank`-th largest logit (rank 1: the top class)."""
    return tf.math.top_k(logits, k=rank).indices[:, rank - 1]
