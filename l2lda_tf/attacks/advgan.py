"""AdvGAN (Xiao et al. 2018): a perturbation generator and a discriminator trained against a
fixed classifier."""

from __future__ import annotations

import keras
import tensorflow as tf

from l2lda_tf.attacks.generative import GenerativeAttack
from l2lda_tf.attacks.networks import discriminator_network
from l2lda_tf.attacks.utils import margin


class AdvGAN(GenerativeAttack):
    """δ = ε·tanh(G(x)) (inside the ball by construction). G minimizes
    adv_weight·max(Z_y − max_{j≠y} Z_j, −κ) + the non-saturating GAN loss against a
    discriminator D that tells clean from perturbed images (the paper's hinge on ‖δ‖ is moot
    when the output is scaled into the ball).
    """

    def __init__(self, classifier, image_shape, epsilon: float, kappa: float = 0.0,
                 adv_weight: float = 10.0, **kwargs):
        kwargs.setdefault("name", "advgan")
        super().__init__(classifier, image_shape, epsilon, **kwargs)
        self.kappa = kappa
        self.adv_weight = adv_weight
        self.discriminator = discriminator_network(image_shape)
        self.g_loss = keras.metrics.Mean(name="g_loss")
        self.d_loss = keras.metrics.Mean(name="d_loss")
        self.fooled = keras.metrics.Mean(name="fooled")

    @property
    def metrics(self):
        return [self.g_loss, self.d_loss, self.fooled]

    def compile(self, g_optimizer=None, d_optimizer=None, **kwargs):
        super().compile(**kwargs)
        self.g_optimizer = g_optimizer or keras.optimizers.Adam(1e-3, beta_1=0.5)
        self.d_optimizer = d_optimizer or keras.optimizers.Adam(1e-3, beta_1=0.5)

    def perturbation(self, x, training=False):
        return self.epsilon * tf.tanh(self.generator(x, training=training))

    def train_step(self, data):
        x, y = data
        bce = keras.losses.BinaryCrossentropy(from_logits=True)
        with tf.GradientTape() as tape:
            x_adv = self.adversarial(x, training=True)
            real, fake = self.discriminator(x, training=True), self.discriminator(
                tf.stop_gradient(x_adv), training=True)
            d_loss = bce(tf.ones_like(real), real) + bce(tf.zeros_like(fake), fake)
        variables = self.discriminator.trainable_variables
        self.d_optimizer.apply_gradients(zip(tape.gradient(d_loss, variables), variables))

        with tf.GradientTape() as tape:
            x_adv = self.adversarial(x, training=True)
            logit_margin = margin(y, self.classifier(x_adv, training=False))
            adv_loss = tf.reduce_mean(tf.maximum(-logit_margin, -self.kappa))
            fake = self.discriminator(x_adv, training=False)
            g_loss = self.adv_weight * adv_loss + bce(tf.ones_like(fake), fake)
        variables = self.generator.trainable_variables
        self.g_optimizer.apply_gradients(zip(tape.gradient(g_loss, variables), variables))
        self.g_loss.update_state(g_loss)
        self.d_loss.update_state(d_loss)
        self.fooled.update_state(tf.cast(logit_margin > 0, tf.float32))
        return {m.name: m.result() for m in self.metrics}
