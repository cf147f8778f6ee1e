"""Projected gradient descent in the ℓ∞ ball (Madry et al. 2018)."""

from __future__ import annotations

import tensorflow as tf

from l2lda_tf.attacks.utils import keep_more_damaging, loss_and_input_gradient, margin, project

# Up to this many steps the loop is unrolled into the graph, where the optimizer can fuse across
# iterations: as a tf.while_loop, PGD-10 on LeNet-5 took 42 ms per batch of 100 against 34 ms.
UNROLLED_STEPS = 20


def default_step_size(epsilon, steps: int):
    """The paper's protocol: ε/4 for PGD-10 (and fewer steps), ε/12 for longer runs."""
    return epsilon / 4 if steps <= 10 else epsilon / 12


def pgd(model, x: tf.Tensor, y: tf.Tensor, epsilon, *, steps: int = 10, step_size=None,
        random_start: bool = True, keep_best: bool = True, seed=None) -> tf.Tensor:
    """PGD-k on the cross-entropy of `model` (logits), white-box, ℓ∞ radius ε, pixels in [0, 1].

    Starts uniformly in the ball, takes k signed-gradient steps of `step_size` (default
    `default_step_size`), projecting after each. With `keep_best`, each example's most damaging
    iterate (largest logit margin, so misclassified if any iterate was) is returned instead of the
    last one; adversarial training uses the last one (`keep_best=False`), as Madry et al. did.
    `seed` (shape [2]) draws the random start statelessly, so an evaluation repeats exactly.
    """
    x = tf.cast(x, tf.float32)
    epsilon = tf.cast(epsilon, tf.float32)
    step_size = default_step_size(epsilon, steps) if step_size is None else step_size
    x_adv = x
    if random_start:
        start = (tf.random.uniform(tf.shape(x), -epsilon, epsilon) if seed is None else
                 tf.random.stateless_uniform(tf.shape(x), seed, -epsilon, epsilon))
        x_adv = project(x + start, x, epsilon)
    best, best_margin = x_adv, tf.fill(tf.shape(y), -float("inf"))

    def step(i, x_adv, best, best_margin):
        _, logits, gradient = loss_and_input_gradient(model, x_adv, y)
        if keep_best:
            best, best_margin = keep_more_damaging(best, best_margin, x_adv, margin(y, logits))
        return i + 1, project(x_adv + step_size * tf.sign(gradient), x, epsilon), best, best_margin

    state = (tf.constant(0), x_adv, best, best_margin)
    if steps <= UNROLLED_STEPS:
        for _ in range(steps):
            state = step(*state)
    else:  # one graph node for any k (PGD-100 too)
        state = tf.while_loop(lambda i, *_: i < steps, step, state)
    _, x_adv, best, best_margin = state
    if not keep_best:
        return x_adv
    best, _ = keep_more_damaging(best, best_margin, x_adv, margin(y, model(x_adv, training=False)))
    return best
