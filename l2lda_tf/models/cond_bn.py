"""Class-conditional batch normalization: BN without its own affine, then γ_y, β_y per class."""

from __future__ import annotations

import keras
import tensorflow as tf


def batch_norm_layers(model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of `model`, nested ones (inside CondBN too) included."""
    return [layer for layer in model._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)]


@keras.saving.register_keras_serializable(package="l2lda_tf")
class ConditionalBatchNormalization(keras.layers.Layer):
    """Normalizes like `BatchNormalization(center=False, scale=False)` and then applies the
    scale γ_y and shift β_y of each example's class y, looked up from per-class embeddings.

    The label is the generator's only access to the ground truth (ALGORITHM.md, step 5).
    γ starts near 1 and β at 0, so the layer starts as plain BN.
    """

    def __init__(self, num_classes: int, momentum: float = 0.9, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.momentum = momentum
        self.epsilon = epsilon
        self.norm = keras.layers.BatchNormalization(
            momentum=momentum, epsilon=epsilon, center=False, scale=False, name="norm"
        )

    def build(self, inputs_shape, labels_shape=None):
        channels = inputs_shape[-1]
        self.norm.build(inputs_shape)
        self.gamma = self.add_weight(
            name="gamma", shape=(self.num_classes, channels),
            initializer=keras.initializers.RandomNormal(1.0, 0.02),
        )
        self.beta = self.add_weight(
            name="beta", shape=(self.num_classes, channels), initializer="zeros"
        )

    def call(self, inputs, labels, training=None):
        normalized = self.norm(inputs, training=training)
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        gamma = tf.gather(self.gamma, labels)[:, None, None, :]
        beta = tf.gather(self.beta, labels)[:, None, None, :]
        return normalized * gamma + beta

    def compute_output_shape(self, inputs_shape, labels_shape=None):
        return inputs_shape

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "momentum": self.momentum, "epsilon": self.epsilon}
