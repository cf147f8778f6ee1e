"""Transfer (black-box) attacks: examples crafted on a surrogate, evaluated on the target."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from l2lda_tf.attacks.utils import most_damaging


def transfer(attack: Callable, surrogate, target, x: tf.Tensor, y: tf.Tensor,
             **attack_args) -> tf.Tensor:
    """Runs `attack(surrogate, x, y, **attack_args)` and returns, per example, whichever of the
    clean and the transferred image is worse for `target`: the target's gradients are never used,
    only its predictions (an attacker that queries the target once per candidate)."""
    x = tf.cast(x, tf.float32)
    return most_damaging(target, x, y, attack(surrogate, x, y, **attack_args))
