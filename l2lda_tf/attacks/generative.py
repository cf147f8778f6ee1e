"""What the trained attacks (AdvGAN, GAP) share: a perturbation network trained against a frozen
classifier with `fit`, then used as a one-shot attack inside the ε-ball."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from l2lda_tf.attacks.networks import perturbation_network
from l2lda_tf.attacks.utils import most_damaging


class GenerativeAttack(keras.Model):
    """A perturbation generator G against the fixed `classifier` (never updated).

    Subclasses define `perturbation(x)` (G's output scaled into the ε-ball) and `train_step`.
    `attack(x, y)` is the compiled attack; `train_on(images, labels, steps)` fits G.
    """

    def __init__(self, classifier: keras.Model, image_shape, epsilon: float, **kwargs):
        super().__init__(**kwargs)
        if not 0 < epsilon <= 1:
            raise ValueError(f"epsilon must be in (0, 1] for images in [0, 1], got {epsilon}")
        self.classifier = classifier
        self.epsilon = float(epsilon)
        self.generator = perturbation_network(image_shape, name=f"{self.name}_generator")
        self.attack = tf.function(self._attack)

    def perturbation(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """δ with |δ|∞ ≤ ε for images x; each attack (AdvGAN, GAP) defines its own."""
        raise NotImplementedError(f"{type(self).__name__} must define perturbation")

    def adversarial(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """x + δ, pixels clipped to [0, 1]; |δ|∞ ≤ ε by construction of `perturbation`."""
        return tf.clip_by_value(x + self.perturbation(x, training), 0.0, 1.0)

    def _attack(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        return most_damaging(self.classifier, x, y, self.adversarial(x))

    def call(self, x, training=None):
        return self.adversarial(x, training=bool(training))

    def train_on(self, images: np.ndarray, labels: np.ndarray, steps: int,
                 batch_size: int = 100, seed: int = 0, verbose: int = 0) -> dict:
        """Fits G for `steps` batches of the uint8 `images` (shuffled, repeated)."""
        return train_attacker(self, images, labels, steps, batch_size, seed, verbose)


def train_attacker(attacker: keras.Model, images: np.ndarray, labels: np.ndarray, steps: int,
                   batch_size: int = 100, seed: int = 0, verbose: int = 0) -> dict:
    """Runs `attacker.fit` for `steps` shuffled, repeated batches of uint8 `images` (as floats
    in [0, 1]); returns the last value of each metric."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images, and some: {len(images)}, {len(labels)}")
    batch_size = min(batch_size, len(images))
    data = (tf.data.Dataset.from_tensor_slices((images, labels))
            .shuffle(len(images), seed=seed).repeat().batch(batch_size, drop_remainder=True)
            .map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y)))
    history = attacker.fit(data, steps_per_epoch=steps, epochs=1, verbose=verbose, shuffle=False)
    return {k: float(v[-1]) for k, v in history.history.items()}
