"""The L2L-DA attack used for evaluation: the noise-conditioned generator fine-tuned against a
frozen classifier, then the T-step unroll with S noise samples per image."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from l2lda_tf.attacks.generative import train_attacker
from l2lda_tf.attacks.unrolled import unrolled_attack
from l2lda_tf.attacks.utils import keep_more_damaging, margin
from l2lda_tf.losses import generator_loss
from l2lda_tf.models import NoiseGenerator, build_noise_generator
from l2lda_tf.optimizers import CoupledSGD


def copy_generator(generator: NoiseGenerator, image_shape) -> NoiseGenerator:
    """A new generator with the same configuration and weights (the run's stays untouched),
    its batch norm unsynchronized: the attack runs on one device."""
    clone = build_noise_generator(image_shape, generator.num_classes, generator.noise_dim)
    clone.set_weights(generator.get_weights())
    return clone


def attack_samples(classifier, generator, x: tf.Tensor, y: tf.Tensor, noise: tf.Tensor, epsilon,
                   *, steps: int = 10, alpha: float = 0.25) -> tf.Tensor:
    """x_T for each of S noise samples: noise [S, N, d] → images [S, N, H, W, C] (generator in
    inference mode)."""
    return tf.map_fn(
        lambda z: unrolled_attack(classifier, generator, x, y, z, epsilon, steps=steps,
                                  alpha=alpha).images[-1],
        noise, fn_output_signature=tf.float32)


class L2LDAAttack(keras.Model):
    """Fine-tunes a copy of a noise generator g_φ against the frozen `classifier` with the L2L-DA
    generator loss Σ_t [−CE(f(x_t), y) − λ·D_t] (paired batch, two z per image, SGD with
    momentum and global-norm clipping as in training), then attacks with S noise samples.

    `generator=None` starts from a freshly initialised generator, for defenses that have none
    (Plain, PGD): the same attack, trained from scratch against them.
    """

    def __init__(self, classifier: keras.Model, image_shape, num_classes: int, epsilon: float,
                 generator: NoiseGenerator | None = None, samples: int = 10,
                 unroll_steps: int = 10, alpha: float = 0.25, lam: float = 0.02,
                 noise_dim: int = 8, seed: int = 0, **kwargs):
        kwargs.setdefault("name", "l2lda_attack")
        super().__init__(**kwargs)
        if samples < 1 or unroll_steps < 1:
            raise ValueError(f"samples and unroll_steps must be positive: {samples}, "
                             f"{unroll_steps}")
        if not 0 < epsilon <= 1:
            raise ValueError(f"epsilon must be in (0, 1] for images in [0, 1], got {epsilon}")
        if generator is None:
            generator = build_noise_generator(image_shape, num_classes, noise_dim)
        else:
            generator = copy_generator(generator, image_shape)
        if not generator.noise_dim:
            raise ValueError("the L2L-DA attack needs a noise-conditioned generator "
                             "(noise_dim > 0)")
        self.classifier = classifier
        self.generator = generator
        self.epsilon = float(epsilon)
        self.samples = samples
        self.unroll_steps = unroll_steps
        self.alpha = alpha
        self.lam = lam
        self.rng = tf.random.Generator.from_seed(seed)
        self.gen_ce = keras.metrics.Mean(name="gen_ce")
        self.attack = tf.function(self._attack)

    @property
    def metrics(self):
        return [self.gen_ce]

    def compile(self, optimizer=None, **kwargs):
        optimizer = optimizer or CoupledSGD(0.01, momentum=0.9, l2=1e-5, global_clipnorm=1.0)
        super().compile(optimizer=optimizer, **kwargs)

    def train_step(self, data):
        x, y = data
        x2, y2 = tf.concat([x, x], 0), tf.concat([y, y], 0)
        noise = self.rng.normal([tf.shape(x2)[0], self.generator.noise_dim])
        with tf.GradientTape() as tape:
            unroll = unrolled_attack(self.classifier, self.generator, x2, y2, noise,
                                     self.epsilon, steps=self.unroll_steps, alpha=self.alpha,
                                     training=True)
            loss, ce, _ = generator_loss(unroll, noise, self.lam, tf.shape(x2)[0])
        variables = self.generator.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.gen_ce.update_state(ce / self.unroll_steps)
        return {"gen_ce": self.gen_ce.result()}

    def train_on(self, images: np.ndarray, labels: np.ndarray, steps: int,
                 batch_size: int = 100, seed: int = 0, verbose: int = 0) -> dict:
        """Fine-tunes the generator for `steps` paired batches of `images` (uint8)."""
        return train_attacker(self, images, labels, steps, batch_size, seed, verbose)

    def _attack(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Each example's most damaging x_T over S fresh noise samples (and the clean image),
        so it is classified correctly only if it survives every sample."""
        x = tf.cast(x, tf.float32)
        noise_shape = [tf.shape(x)[0], self.generator.noise_dim]

        def body(s, best, best_margin):
            x_t = unrolled_attack(self.classifier, self.generator, x, y,
                                  self.rng.normal(noise_shape), self.epsilon,
                                  steps=self.unroll_steps, alpha=self.alpha).images[-1]
            best, best_margin = keep_more_damaging(
                best, best_margin, x_t, margin(y, self.classifier(x_t, training=False)))
            return s + 1, best, best_margin

        clean_margin = margin(y, self.classifier(x, training=False))
        _, best, _ = tf.while_loop(lambda s, *_: s < self.samples, body,
                                   (tf.constant(0), x, clean_margin))
        return best

    def call(self, x, training=None):
        raise TypeError("use attack(x, y): the generator is class-conditional")
