"""The targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020) in ℓ∞: it looks for
the smallest perturbation reaching a target class by projecting onto the linearized decision
boundary, so it does not depend on the scale of the loss as PGD does."""

from __future__ import annotations

import tensorflow as tf

from l2lda_tf.attacks.utils import (
    keep_more_damaging,
    margin,
    on_robust_points,
    project,
    ranked_classes,
)


def project_linf_onto_hyperplane(points: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """The smallest-ℓ∞ step d with w·(t + d) = b and t + d ∈ [0, 1], per row t of `points`.

    With c = b − w·t ≥ 0 (flip the signs of w and c otherwise) and r_i the room left towards
    the box edge in the direction of sign(w_i), a radius λ reaches at most
    g(λ) = Σ |w_i| min(λ, r_i), piecewise linear and non-decreasing; λ* solves g(λ) = c on the
    segment found by sorting r, and d_i = sign(w_i) min(λ*, r_i). If even the whole box falls
    short (g(max r) < c) the step goes to the box corner nearest the hyperplane.
    """
    c = b - tf.reduce_sum(w * points, axis=1)
    flip = tf.where(c < 0, -1.0, 1.0)[:, None]
    w, c = w * flip, tf.abs(c)
    room = tf.where(w > 0, 1.0 - points, points)
    order = tf.argsort(room, axis=1)
    room_sorted = tf.gather(room, order, batch_dims=1)
    weight_sorted = tf.gather(tf.abs(w), order, batch_dims=1)
    # g at each breakpoint r_(k): Σ_{i≤k} |w_(i)| r_(i) + r_(k) Σ_{i>k} |w_(i)|.
    reached = tf.cumsum(weight_sorted * room_sorted, axis=1)
    beyond = tf.cumsum(weight_sorted, axis=1, reverse=True, exclusive=True)
    g = reached + room_sorted * beyond
    k = tf.argmax(tf.cast(g >= c[:, None], tf.int32), axis=1, output_type=tf.int32)
    # On segment [r_(k−1), r_(k)]: g(λ) = reached_(k−1) + λ Σ_{i≥k} |w_(i)|.
    reached_before = tf.gather(tf.pad(reached, [[0, 0], [1, 0]]), k, batch_dims=1)
    weight_from = tf.gather(beyond + weight_sorted, k, batch_dims=1)
    radius = tf.maximum((c - reached_before) / tf.maximum(weight_from, 1e-12), 0.0)
    radius = tf.where(g[:, -1] >= c, radius, tf.reduce_max(room, axis=1))
    return tf.sign(w) * tf.minimum(radius[:, None], room)


@tf.function(reduce_retracing=True)
def _fab_run(model, x, y, target, steps: int, alpha_max: float, eta: float, beta: float):
    n = tf.shape(x)[0]
    flat = tf.reshape(x, [n, -1])

    def difference_and_gradient(x_now):
        with tf.GradientTape() as tape:
            tape.watch(x_now)
            logits = tf.cast(model(x_now, training=False), tf.float32)
            difference = (tf.gather(logits, target, batch_dims=1)
                          - tf.gather(logits, y, batch_dims=1))
        return difference, tf.reshape(tape.gradient(difference, x_now), [n, -1])

    def body(i, x_now, found, found_norm):
        # The linearized boundary f_t − f_y = 0 at x_now: w·z = b.
        difference, w = difference_and_gradient(x_now)
        now = tf.reshape(x_now, [n, -1])
        b = tf.reduce_sum(w * now, axis=1) - difference
        steps_both = project_linf_onto_hyperplane(tf.concat([now, flat], 0),
                                                  tf.concat([w, w], 0), tf.concat([b, b], 0))
        d_now, d_clean = steps_both[:n], steps_both[n:]
        norms = tf.maximum(tf.reduce_max(tf.abs(steps_both), axis=1), 1e-8)
        # Bias towards the clean point: α = min(|d_now| / (|d_now| + |d_clean|), α_max).
        alpha = tf.minimum(norms[:n] / (norms[:n] + norms[n:]), alpha_max)[:, None]
        moved = tf.clip_by_value((now + eta * d_now) * (1 - alpha)
                                 + (flat + eta * d_clean) * alpha, 0.0, 1.0)
        x_next = tf.reshape(moved, tf.shape(x))
        adversarial = margin(y, model(x_next, training=False)) > 0
        norm = tf.reduce_max(tf.abs(moved - flat), axis=1)
        smaller = adversarial & (norm < found_norm)
        found = tf.where(smaller[:, None, None, None], x_next, found)
        found_norm = tf.where(smaller, norm, found_norm)
        # After a success, step back towards the clean point to look for a smaller one.
        x_next = tf.where(adversarial[:, None, None, None], x + beta * (x_next - x), x_next)
        # the loop variables keep x's static shape: broadcasting against a batch of one
        # would otherwise leave them (None, …) and the loop would refuse them
        return (i + 1, tf.ensure_shape(x_next, x.shape), tf.ensure_shape(found, x.shape),
                tf.ensure_shape(found_norm, x.shape[:1]))

    _, _, found, found_norm = tf.while_loop(
        lambda i, *_: i < steps, body, (tf.constant(0), x, x, tf.fill([n], float("inf"))))
    return found, found_norm


def fab_targeted(model, x: tf.Tensor, y: tf.Tensor, epsilon, *, targets: int = 9,
                 steps: int = 100, alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9) -> tf.Tensor:
    """FAB-T on `model` (logits), white-box, ℓ∞ radius ε, pixels in [0, 1].

    For each of the `targets` highest-scoring wrong classes t of the clean input (on the points
    still robust), `steps` iterations: project both the iterate and the clean point onto the
    linearized boundary f_t = f_y (minimal ℓ∞ step inside [0, 1]), move to a mix of the two
    overshot by η, biased to the clean point by α ≤ α_max, and after each success shrink the
    perturbation by β. FAB minimizes the perturbation; its smallest adversarial point counts
    when within ε. Returns per example the most damaging point inside the ball (the clean input
    included). AutoAttack's FAB-T: targets=9, steps=100, α_max=0.1, η=1.05, β=0.9.
    """
    if steps < 1 or targets < 1:
        raise ValueError(f"steps and targets must be positive, got {steps}, {targets}")
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.int32)
    eps = tf.cast(epsilon, tf.float32)
    clean_logits = model(x, training=False)
    classes = clean_logits.shape[-1]
    if classes is not None and targets > classes - 1:
        raise ValueError(f"targets must be at most K − 1 = {classes - 1}, got {targets}")

    def run(xs, ys, index, target):
        found, found_norm = _fab_run(model, xs, ys, tf.gather(target, index), steps, alpha_max,
                                     eta, beta)
        inside = project(found, xs, eps)
        candidate, _ = keep_more_damaging(xs, margin(ys, model(xs, training=False)), inside,
                                          margin(ys, model(inside, training=False)))
        return tf.where((found_norm <= eps)[:, None, None, None], found, candidate)

    best = x
    for rank in range(2, targets + 2):
        target = tf.cast(ranked_classes(clean_logits, rank), tf.int32)
        best = on_robust_points(model, x, y, best,
                                lambda xs, ys, index, target=target: run(xs, ys, index, target))
    return project(best, x, eps)
