"""GAP (Poursaeed et al. 2018): generative adversarial perturbations from an image-conditioned
generator trained against a fixed classifier."""

from __future__ import annotations

import keras
import tensorflow as tf

from l2lda_tf.attacks.generative import GenerativeAttack
from l2lda_tf.attacks.utils import margin


def log_cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """log CE(f(x), y) per example, accurate where CE itself underflows float32 (a confident
    classifier): CE = softplus(s) with s = logsumexp_{j≠y} Z_j − Z_y, and log softplus(s) → s."""
    logits = tf.cast(logits, tf.float32)
    true_mask = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1]) > 0.5
    true_logit = tf.reduce_sum(tf.where(true_mask, logits, 0.0), axis=-1)
    s = tf.reduce_logsumexp(tf.where(true_mask, -float("inf"), logits), axis=-1) - true_logit
    safe = tf.maximum(s, -15.0)  # keeps the unused branch of tf.where finite
    return tf.where(s < -15.0, s, tf.math.log(tf.math.softplus(safe)))


class GAP(GenerativeAttack):
    """δ = ε·G(x)/‖G(x)‖∞ per example (the paper's scaling onto the norm bound); G maximizes
    the classifier's loss in Poursaeed et al.'s log form, minimizing −log CE(f(x + δ), y).
    """

    def __init__(self, classifier, image_shape, epsilon: float, **kwargs):
        kwargs.setdefault("name", "gap")
        super().__init__(classifier, image_shape, epsilon, **kwargs)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.fooled = keras.metrics.Mean(name="fooled")

    @property
    def metrics(self):
        return [self.loss_tracker, self.fooled]

    def compile(self, optimizer=None, **kwargs):
        super().compile(optimizer=optimizer or keras.optimizers.Adam(1e-3, beta_1=0.5),
                        **kwargs)

    def perturbation(self, x, training=False):
        raw = self.generator(x, training=training)
        scale = tf.reduce_max(tf.abs(raw), axis=[1, 2, 3], keepdims=True)
        return self.epsilon * raw / (scale + 1e-12)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            logits = self.classifier(self.adversarial(x, training=True), training=False)
            loss = -tf.reduce_mean(log_cross_entropy(y, logits))
        variables = self.generator.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.loss_tracker.update_state(loss)
        self.fooled.update_state(tf.cast(margin(y, logits) > 0, tf.float32))
        return {m.name: m.result() for m in self.metrics}
