"""The fast gradient sign method (Goodfellow et al. 2015) in the ℓ∞ ball."""

from __future__ import annotations

import tensorflow as tf

from l2lda_tf.attacks.utils import keep_more_damaging, loss_and_input_gradient, margin, project


@tf.function
def fgsm(model, x: tf.Tensor, y: tf.Tensor, epsilon, *, keep_best: bool = True) -> tf.Tensor:
    """One signed-gradient step of size ε on the cross-entropy: x + ε·sign(∇ₓCE), clipped to
    [0, 1]. White-box, ℓ∞ radius ε. With `keep_best` (one more forward pass), the clean image
    is kept where the step does not hurt more.
    """
    x = tf.cast(x, tf.float32)
    epsilon = tf.cast(epsilon, tf.float32)
    _, logits, gradient = loss_and_input_gradient(model, x, y)
    x_adv = project(x + epsilon * tf.sign(gradient), x, epsilon)
    if not keep_best:
        return x_adv
    best, _ = keep_more_damaging(x, margin(y, logits), x_adv,
                                 margin(y, model(x_adv, training=False)))
    return best
