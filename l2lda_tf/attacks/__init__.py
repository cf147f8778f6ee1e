"""White-box attacks in the ℓ∞ ball, as plain functions over (model, x, y, ε, ...)."""

from l2lda_tf.attacks.pgd import default_step_size, pgd
from l2lda_tf.attacks.unrolled import Unroll, unrolled_attack
from l2lda_tf.attacks.utils import (
    cross_entropy,
    loss_and_input_gradient,
    margin,
    normalize_gradient,
    project,
)

__all__ = [
    "Unroll", "cross_entropy", "default_step_size", "loss_and_input_gradient", "margin",
    "normalize_gradient", "pgd", "project", "unrolled_attack",
]
