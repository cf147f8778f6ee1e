"""AutoAttack-style sanity checks of an evaluation: a randomized model, vanishing gradients, and
gaps between attacks that point to gradient masking rather than robustness."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from l2lda_tf.attacks import loss_and_input_gradient

# A gap (accuracy points) between PGD-10 and AutoAttack above which the report warns.
MASKING_GAP = 5.0


def is_randomized(model, x: tf.Tensor) -> bool:
    """Two forward passes on the same inputs differ: the model is stochastic, and a single
    evaluation of it is not a worst case (use EOT, as AutoAttack's `rand` version does)."""
    first, second = model(x, training=False), model(x, training=False)
    return not np.allclose(np.asarray(first), np.asarray(second), rtol=1e-5, atol=1e-6)


def zero_gradient_share(model, x: tf.Tensor, y: tf.Tensor) -> float:
    """Share of examples whose cross-entropy gradient in the input is exactly zero."""
    _, _, gradient = loss_and_input_gradient(model, tf.cast(x, tf.float32), y)
    flat = tf.reshape(gradient, [tf.shape(gradient)[0], -1])
    return float(tf.reduce_mean(tf.cast(tf.reduce_all(flat == 0, axis=1), tf.float32)))


def sanity_warnings(model, x: tf.Tensor, y: tf.Tensor, accuracies: dict[str, float],
                    stages: dict[str, float] | None = None) -> list[str]:
    """One line per problem found: randomness, zero gradients, PGD-10 well above AutoAttack,
    and Square (gradient-free) breaking points the gradient attacks did not."""
    warnings = []
    if is_randomized(model, x):
        warnings.append("randomized model: two forward passes on the same images differ, so "
                        "these accuracies are not a worst case (attack the expectation, EOT)")
    share = zero_gradient_share(model, x, y)
    if share > 0:
        warnings.append(f"zero input gradient on {100 * share:.1f}% of the checked images: "
                        "gradient-based attacks cannot move there (possible gradient masking)")
    if "PGD10" in accuracies and "AutoAttack" in accuracies:
        gap = accuracies["PGD10"] - accuracies["AutoAttack"]
        if gap > MASKING_GAP:
            warnings.append(f"PGD-10 leaves {gap:.1f} points more accuracy than AutoAttack "
                            f"(> {MASKING_GAP:g}): PGD-10 overestimates robustness here, "
                            "possibly through gradient masking")
    if stages and "square" in stages and "fab-t" in stages:
        gap = stages["fab-t"] - stages["square"]
        if gap > 0:
            warnings.append(f"Square (no gradients) broke {gap:.1f}% of the points the gradient "
                            "attacks left robust: a sign of gradient masking")
    return warnings
