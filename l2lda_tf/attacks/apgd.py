"""Auto-PGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks") in the ℓ∞ ball: the budget-aware step size of
AutoAttack's APGD-CE and APGD-T, on the cross-entropy or the difference of logits ratio."""

from __future__ import annotations

import tensorflow as tf

from l2lda_tf.attacks.utils import (
    cross_entropy,
    keep_more_damaging,
    margin,
    on_robust_points,
    project,
    ranked_classes,
)

LOSSES = ("ce", "dlr")


def checkpoints(steps: int) -> list[int]:
    """Window lengths w_j of the step-size checkpoints, as a list [0, …, w_j at iteration i, …]
    of length `steps`: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06),
    in iterations (so the first check comes after 22% of the budget, then ever closer)."""
    window, shrink, shortest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), \
        max(int(0.06 * steps), 1)
    schedule, next_check = [0] * steps, window - 1
    while next_check < steps:
        schedule[next_check] = window
        window = max(window - shrink, shortest)
        next_check += window
    return schedule


def dlr_loss(labels: tf.Tensor, logits: tf.Tensor, target: tf.Tensor | None = None) -> tf.Tensor:
    """Difference of logits ratio, to maximize; shift- and scale-invariant in the logits.

    Untargeted: −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3). Targeted at t (needs ≥ 4 classes):
    −(z_y − z_t) / (z_π1 − (z_π3 + z_π4) / 2), π sorting the logits in decreasing order.
    """
    logits = tf.cast(logits, tf.float32)
    top = tf.math.top_k(logits, k=3 if target is None else 4).values
    if target is None:
        return margin(labels, logits) / (top[:, 0] - top[:, 2] + 1e-12)
    true_logit = tf.gather(logits, tf.cast(labels, tf.int32), batch_dims=1)
    target_logit = tf.gather(logits, tf.cast(target, tf.int32), batch_dims=1)
    return -(true_logit - target_logit) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


def _objective(loss: str, labels, logits, target):
    if loss == "dlr":
        return dlr_loss(labels, logits, target)
    return cross_entropy(labels, logits) if target is None else -cross_entropy(target, logits)


def _broadcast(per_example: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    return tf.reshape(per_example, tf.concat([tf.shape(per_example),
                                              tf.ones([tf.rank(like) - 1], tf.int32)], 0))


@tf.function(reduce_retracing=True)
def _apgd_run(model, x, y, target, epsilon, steps: int, loss: str, rho: float,
              momentum: float):
    """One run of APGD from a random start; returns each example's most damaging iterate."""
    schedule = tf.constant(checkpoints(steps), tf.int32)
    eps = tf.cast(epsilon, tf.float32)

    def loss_and_gradient(x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = model(x_adv, training=False)
            value = _objective(loss, y, logits, target)
            total = tf.reduce_sum(value)  # independent examples: each gets its own gradient
        return value, margin(y, logits), tape.gradient(total, x_adv)

    noise = tf.random.uniform(tf.shape(x), -1.0, 1.0)
    peak = tf.reduce_max(tf.abs(tf.reshape(noise, [tf.shape(x)[0], -1])), axis=1)
    x_adv = project(x + eps * noise / _broadcast(peak + 1e-12, x), x, eps)
    value, logit_margin, gradient = loss_and_gradient(x_adv)
    n = tf.shape(x)[0]
    state = dict(
        i=tf.constant(0), x_adv=x_adv, x_old=x_adv, gradient=gradient,
        step=tf.fill([n], 2.0 * eps),  # η⁽⁰⁾ = 2ε
        x_max=x_adv, loss_max=value, gradient_max=gradient,  # highest objective so far
        best=x_adv, best_margin=logit_margin,  # most damaging (largest margin) so far
        history=tf.concat([value[None], tf.zeros([steps, n])], 0),  # objective before step i+1
        max_at_check=value, halved_at_check=tf.ones([n], tf.bool))

    def body(s):
        i, step = s["i"], _broadcast(s["step"], x)
        z = project(s["x_adv"] + step * tf.sign(s["gradient"]), x, eps)
        a = tf.where(i > 0, momentum, 1.0)
        x_new = project(s["x_adv"] + a * (z - s["x_adv"]) + (1 - a) * (s["x_adv"] - s["x_old"]),
                        x, eps)
        value, logit_margin, gradient = loss_and_gradient(x_new)
        best, best_margin = keep_more_damaging(s["best"], s["best_margin"], x_new, logit_margin)
        improved = value > s["loss_max"]
        wide = _broadcast(improved, x)
        x_max = tf.where(wide, x_new, s["x_max"])
        gradient_max = tf.where(wide, gradient, s["gradient_max"])
        loss_max = tf.where(improved, value, s["loss_max"])
        history = tf.tensor_scatter_nd_update(s["history"], [[i + 1]], value[None])

        window = schedule[i]

        def checkpoint():
            # Condition 1: the objective rose in at most ρ·w of the last w steps.
            rows = tf.range(steps + 1)
            in_window = (rows >= i + 2 - window) & (rows <= i + 1)
            rises = tf.cast(history[1:] > history[:-1], tf.float32) * tf.cast(
                in_window[1:, None], tf.float32)
            stalled = tf.reduce_sum(rises, axis=0) <= rho * tf.cast(window, tf.float32)
            # Condition 2: η was not halved at the last check and the best did not improve.
            stalled |= ~s["halved_at_check"] & (s["max_at_check"] >= loss_max)
            wide = _broadcast(stalled, x)
            return (tf.where(stalled, s["step"] / 2, s["step"]), tf.where(wide, x_max, x_new),
                    tf.where(wide, gradient_max, gradient), loss_max, stalled)

        def carry_on():
            return s["step"], x_new, gradient, s["max_at_check"], s["halved_at_check"]

        step, x_next, gradient_next, max_at_check, halved = tf.cond(window > 0, checkpoint,
                                                                    carry_on)
        return [dict(i=i + 1, x_adv=x_next, x_old=s["x_adv"], gradient=gradient_next, step=step,
                     x_max=x_max, loss_max=loss_max, gradient_max=gradient_max, best=best,
                     best_margin=best_margin, history=history, max_at_check=max_at_check,
                     halved_at_check=halved)]

    (final,) = tf.while_loop(lambda s: s["i"] < steps, body, [state])
    return final["best"]


def apgd(model, x: tf.Tensor, y: tf.Tensor, epsilon, *, loss: str = "ce", steps: int = 100,
         restarts: int = 1, targets: int = 0, rho: float = 0.75,
         momentum: float = 0.75) -> tf.Tensor:
    """APGD on `model` (logits), white-box, ℓ∞ radius ε, pixels in [0, 1].

    Each run starts at a random point of the ball (uniform noise rescaled to |δ|∞ = ε) and takes
    `steps` momentum steps (α = `momentum`) of size η, η⁽⁰⁾ = 2ε, halved per example at the
    checkpoints of `checkpoints` when the objective rose in at most ρ of the last window's steps
    or the best objective stalled since the previous checkpoint (then restarting from the best
    point).
    `loss`: "ce" or "dlr". `targets` = 0: untargeted; k > 0: APGD-T, one run per target among
    the k highest-scoring wrong classes of the clean input (targeted CE or targeted DLR).
    Restarts and targets run only on the points still robust. Returns per example the most
    damaging point found (largest logit margin), the clean input included.
    AutoAttack's APGD-CE: loss="ce", steps=100; APGD-T: loss="dlr", targets=9.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if steps < 1 or restarts < 1 or targets < 0:
        raise ValueError(f"steps and restarts must be positive and targets ≥ 0, got {steps}, "
                         f"{restarts}, {targets}")
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.int64)
    clean_logits = model(x, training=False)
    classes = clean_logits.shape[-1]
    needed = 3 if targets == 0 else 4
    if loss == "dlr" and classes is not None and classes < needed:
        raise ValueError(f"the {'targeted ' if targets else ''}DLR loss needs at least {needed} "
                         f"classes, the model has {classes}; use loss='ce'")
    if targets and classes is not None and targets > classes - 1:
        raise ValueError(f"targets must be at most K − 1 = {classes - 1}, got {targets}")
    best = x
    options = dict(steps=steps, loss=loss, rho=rho, momentum=momentum)
    for rank in range(2, targets + 2) if targets else [None]:
        target = None if rank is None else ranked_classes(clean_logits, rank)
        for _ in range(restarts):
            best = on_robust_points(model, x, y, best, lambda xs, ys, index, target=target: (
                _apgd_run(model, xs, ys, None if target is None else tf.gather(target, index),
                          epsilon, **options)))
    return best
