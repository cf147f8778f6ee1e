"""The fast gradient sign method (Goodfellow et al. 2015) in the ℓ∞ ball."""

from __future__ import annotations

import tensorflow as tf

from l2lda_tf.attacks.utils import loss_and_input_gradient, most_damaging, project


@tf.function
def fgsm(model, x: tf.Tensor, y: tf.Tensor, epsilon) -> tf.Tensor:
    """One signed-gradient step of size ε on the cross-entropy: x + ε·sign(∇ₓCE), clipped to
    [0, 1]. White-box, ℓ∞ radius ε; the clean image is kept where the step does not hurt more.
    """
    x = tf.cast(x, tf.float32)
    epsilon = tf.cast(epsilon, tf.float32)
    _, _, gradient = loss_and_input_gradient(model, x, y)
    return most_damaging(model, x, y, project(x + epsilon * tf.sign(gradient), x, epsilon))
