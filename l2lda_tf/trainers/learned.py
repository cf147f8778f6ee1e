"""Defenses with a learned attacker: L2L-DA (Jang et al. 2019) and L2L (Chen et al.)."""

from __future__ import annotations

import keras
import tensorflow as tf

from l2lda_tf.attacks import unrolled_attack
from l2lda_tf.config import TrainConfig
from l2lda_tf.losses import generator_loss
from l2lda_tf.trainers.base import Trainer, global_batch, loss_scale, minimize, step_logs


class L2LDATrainer(Trainer):
    """L2L-DA: a noise-conditioned recurrent generator and the classifier, trained in turn.

    Each step (docs/algorithm.md, "One training step"): duplicate the batch with two
    independent z per image; run the T-step unroll (generator training mode, classifier
    inference mode); update φ on L_g = Σ_t [−CE(f(x_t), y) − λ·D_t]; then update θ once on the
    N clean plus 2N final adversarial images.

    Logged besides the losses, to see a stuck attacker: `adv_acc` (the classifier on the
    generator's images), `delta` (mean |x_T − x| / ε) and `g_grad_norm` (the generator's
    gradient norm before clipping).
    """

    paired = True  # duplicate the batch so that D_t compares two z on the same image

    def __init__(self, classifier, generator, config: TrainConfig, steps_per_epoch: int,
                 clean_warmup_epochs: int = 0, recompute: bool = False, **kwargs):
        super().__init__(classifier, config, steps_per_epoch, clean_warmup_epochs, **kwargs)
        self.generator = generator
        self.recompute = recompute  # trade generator recomputation for activation memory
        self.rng = tf.random.Generator.from_seed(config.seed)
        self.gen_ce = keras.metrics.Mean(name="gen_ce")
        self.diversity = keras.metrics.Mean(name="diversity")
        self.delta = keras.metrics.Mean(name="delta")
        self.g_grad_norm = keras.metrics.Mean(name="g_grad_norm")

    @property
    def metrics(self):
        return [*super().metrics, self.gen_ce, *([self.diversity] if self.paired else []),
                self.delta, self.g_grad_norm]

    @property
    def unroll_steps(self) -> int:
        return self.config.unroll_steps

    @property
    def alpha(self) -> float:
        return self.config.alpha

    def compile(self, optimizer, generator_optimizer, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self.generator_optimizer = generator_optimizer

    def state(self) -> dict:
        return {**super().state(), "generator": self.generator,
                "generator_optimizer": self.generator_optimizer, "rng": self.rng}

    def sample_noise(self, count) -> tf.Tensor | None:
        """Fresh z for `count` images (monitoring and the exported attack)."""
        if not self.generator.noise_dim:
            return None
        return self.rng.normal([count, self.generator.noise_dim])

    def step_noise(self, n) -> tf.Tensor | None:
        """z for this training step's 2n paired images on this replica: drawn for the global
        batch from (seed, step) and sliced to this replica's examples, so that a step is the
        same on any number of replicas (replica r holds global examples r·n … r·n + n − 1)."""
        if not self.generator.noise_dim:
            return None
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = tf.stack([tf.constant(self.config.seed, tf.int64),
                         tf.cast(self.optimizer.iterations, tf.int64)])
        noise = tf.random.stateless_normal([2, n * replicas, self.generator.noise_dim], seed)
        return tf.reshape(noise[:, replica * n:(replica + 1) * n],
                          [2 * n, self.generator.noise_dim])

    def attack(self, x, y, noise, epsilon, training=False):
        return unrolled_attack(self.classifier, self.generator, x, y, noise, epsilon,
                               steps=self.unroll_steps, alpha=self.alpha, training=training,
                               recompute=self.recompute and training,
                               gradient_scale=loss_scale(self.optimizer))

    def train_step(self, data):
        if not self.adversarial:
            return self.clean_step(data)
        x, y = data
        x_g, y_g = (tf.concat([x, x], 0), tf.concat([y, y], 0)) if self.paired else (x, y)
        noise = self.step_noise(tf.shape(x)[0]) if self.paired else None
        epsilon = self.epsilon_now()
        with tf.GradientTape() as tape:
            unroll = self.attack(x_g, y_g, noise, epsilon, training=True)
            loss, ce, diversity = generator_loss(unroll, noise, self.config.lam,
                                                 global_batch(tf.shape(x_g)[0]))
        g_norm = minimize(self.generator_optimizer, tape, loss,
                          self.generator.trainable_variables, self.config.clip_norm)

        x_adv = tf.stop_gradient(unroll.images[-1])
        n = tf.shape(x)[0]
        logits = self.update_classifier(tf.concat([x, x_adv], 0), tf.concat([y, y_g], 0))
        self.clean_acc.update_state(y, logits[:n])
        self.adv_acc.update_state(y_g, logits[n:])
        self.gen_ce.update_state(ce / len(unroll.losses))
        if diversity is not None:
            self.diversity.update_state(diversity / len(unroll.images))
        self.delta.update_state(tf.reduce_mean(tf.abs(x_adv - x_g), axis=[1, 2, 3])
                                / tf.maximum(epsilon, 1e-12))
        self.g_grad_norm.update_state(g_norm)
        return step_logs([m for m in self.metrics if m is not self.pgd_acc])

    def adversarial_examples(self, x, y):
        """The generator's attack in inference mode with fresh noise (for monitoring)."""
        noise = self.sample_noise(tf.shape(x)[0])
        return self.attack(x, y, noise, self.config.epsilon).images[-1]


class L2LTrainer(L2LDATrainer):
    """L2L (Chen et al.): the same two-player scheme with no noise z, no diversity term and no
    recursion — one step δ = ε·g(x ‖ 0 ‖ ∇̃) from the clean image's gradient. Its generator is
    built with `noise_dim=0` and `num_classes=None` (it never sees the label).
    """

    paired = False
    unroll_steps = 1
    alpha = 1.0
