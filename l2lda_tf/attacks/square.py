"""The Square Attack (Andriushchenko et al., ECCV 2020) in the ℓ∞ ball: score-based, no
gradients, so it is what breaks a defense that only masks its gradients."""

from __future__ import annotations

import tensorflow as tf

from l2lda_tf.attacks.utils import keep_more_damaging, margin, on_robust_points, project

# The schedule of p, the share of pixels a square covers: halved at these fractions (of 10,000)
# of the query budget, as in the paper's code with its schedule rescaled to the budget.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(query, queries: int, p_init):
    """p at `query` (0-based) of a `queries` budget: p_init halved at each passed milestone."""
    progress = tf.cast(tf.cast(query, tf.float32) / queries * 10000, tf.int32)
    halvings = tf.reduce_sum(tf.cast(progress > tf.constant(_HALVINGS), tf.float32))
    return p_init * tf.pow(0.5, halvings)


@tf.function(reduce_retracing=True)
def _square_run(model, x, y, epsilon, queries: int, p_init: float):
    eps = tf.cast(epsilon, tf.float32)
    n, height, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    channels = x.shape[-1]
    # Start: vertical stripes of ±ε (one sign per column and channel).
    stripes = tf.sign(tf.random.uniform([n, 1, width, channels], -1.0, 1.0))
    best = project(x + eps * stripes, x, eps)
    best_margin = margin(y, model(best, training=False))
    rows = tf.range(height)[None, :, None, None]
    cols = tf.range(width)[None, None, :, None]

    def body(query, best, best_margin):
        area = square_fraction(query, queries, p_init) * tf.cast(height * width, tf.float32)
        side = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area)), tf.int32), 1,
                                tf.minimum(height, width))
        top = tf.random.uniform([n, 1, 1, 1], 0, height - side + 1, tf.int32)
        left = tf.random.uniform([n, 1, 1, 1], 0, width - side + 1, tf.int32)
        inside = ((rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side))
        signs = tf.sign(tf.random.uniform([n, 1, 1, channels], -1.0, 1.0))
        candidate = project(best + 2.0 * eps * signs * tf.cast(inside, tf.float32), x, eps)
        # Only the points not yet misclassified move (one query each).
        active = best_margin <= 0
        candidate_margin = tf.where(active, margin(y, model(candidate, training=False)),
                                    -float("inf"))
        best, best_margin = keep_more_damaging(best, best_margin, candidate, candidate_margin)
        # keep x's static shape: broadcasting against a batch of one would leave (None, …)
        return (query + 1, tf.ensure_shape(best, x.shape),
                tf.ensure_shape(best_margin, x.shape[:1]))

    _, best, _ = tf.while_loop(
        lambda query, _, best_margin: (query < queries) & tf.reduce_any(best_margin <= 0),
        body, (tf.constant(0), best, best_margin))
    return best


def square(model, x: tf.Tensor, y: tf.Tensor, epsilon, *, queries: int = 5000,
           p_init: float = 0.8, restarts: int = 1) -> tf.Tensor:
    """Square Attack on `model`'s scores (logits), black-box, ℓ∞ radius ε, pixels in [0, 1].

    Starts from vertical stripes at ±ε, then each query adds a random square of ±2ε (one sign
    per channel) to the best point, projects, and keeps it if the logit margin
    max_{j≠y} Z_j − Z_y grows. The square covers a share p of the image, p = `p_init` halved on
    AutoAttack's schedule over the `queries` budget. Each example stops once misclassified;
    restarts run only on the points still robust. Returns per example the most damaging point
    found, the clean input included. AutoAttack's: queries=5000, p_init=0.8.
    """
    if queries < 1 or restarts < 1 or not 0 < p_init <= 1:
        raise ValueError(f"queries and restarts must be positive and p_init in (0, 1], got "
                         f"{queries}, {restarts}, {p_init}")
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.int64)
    best = x
    for _ in range(restarts):
        best = on_robust_points(model, x, y, best, lambda xs, ys, _: _square_run(
            model, xs, ys, epsilon, queries, p_init))
    return best
