"""Class-conditional batch normalization: BN without its own affine, then γ_y, β_y per class."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="l2lda_tf")
class ConditionalBatchNormalization(keras.layers.Layer):
    """Normalizes like `BatchNormalization(center=False, scale=False)`, then applies the scale
    and shift of each example's class y: γ = γ_shared + γ[y], β = β_shared + β[y]
    (docs/algorithm.md, "Class-conditional batch norm").

    The shared row learns from every example, so the affine adapts even for classes that are
    rare in a batch. Initialized as in the authors' code: γ_shared ~ N(1, 0.02), the per-class
    γ rows ~ N(0, 0.02), β zero, so the layer starts close to plain BN. The label is
    the generator's only access to the ground truth. `epsilon` 1e-10 and `momentum` 0.9 are the
    authors' settings; `synchronized` normalizes with the statistics of the global batch across
    replicas (Keras's `BatchNormalization(synchronized=...)`).
    """

    def __init__(self, num_classes: int, momentum: float = 0.9, epsilon: float = 1e-10,
                 synchronized: bool = False, **kwargs):
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.epsilon = epsilon
        self.synchronized = synchronized
        self.norm = keras.layers.BatchNormalization(
            momentum=momentum, epsilon=epsilon, center=False, scale=False,
            synchronized=synchronized, name="norm")

    @property
    def momentum(self) -> float:
        return self.norm.momentum

    def build(self, inputs_shape, labels_shape=None):
        channels = inputs_shape[-1]
        self.norm.build(inputs_shape)

        def normal(mean):
            return keras.initializers.RandomNormal(mean, 0.02)

        self.gamma = self.add_weight(name="gamma", shape=(self.num_classes, channels),
                                     initializer=normal(0.0))
        self.gamma_shared = self.add_weight(name="gamma_shared", shape=(channels,),
                                            initializer=normal(1.0))
        self.beta = self.add_weight(name="beta", shape=(self.num_classes, channels),
                                    initializer="zeros")
        self.beta_shared = self.add_weight(name="beta_shared", shape=(channels,),
                                           initializer="zeros")

    def call(self, inputs, labels, training=None):
        normalized = self.norm(inputs, training=training)
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        gamma = tf.gather(self.gamma, labels) + self.gamma_shared
        beta = tf.gather(self.beta, labels) + self.beta_shared
        return (normalized * tf.cast(gamma, normalized.dtype)[:, None, None, :]
                + tf.cast(beta, normalized.dtype)[:, None, None, :])

    def compute_output_shape(self, inputs_shape, labels_shape=None):
        return inputs_shape

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "momentum": self.momentum, "epsilon": self.epsilon,
                "synchronized": self.synchronized}
