"""The machinery every defense shares: the classifier update, ε warm-up, evaluation under PGD."""

from __future__ import annotations

import keras
import tensorflow as tf

from l2lda_tf.attacks import cross_entropy, pgd
from l2lda_tf.config import TrainConfig


def global_batch(local_size) -> tf.Tensor:
    """Examples in this step across all replicas: per-replica losses are sums over it."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return tf.cast(local_size * replicas, tf.float32)


def step_logs(metrics) -> dict:
    """A train or test step's return value: each metric's result by name.

    Keras averages step outputs across multi-worker replicas along axis 0, which scalars lack,
    so there each result is returned as a length-1 vector (Keras hands back a scalar)."""
    strategy = tf.distribute.get_strategy()
    vector = (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
              and strategy.extended._in_multi_worker_mode())
    return {m.name: tf.reshape(m.result(), [1]) if vector else m.result() for m in metrics}


def minimize(optimizer, tape: tf.GradientTape, loss: tf.Tensor, variables,
             clip_norm: float | None) -> tf.Tensor:
    """One optimizer step on ∂loss/∂variables, clipped to global norm `clip_norm` (None: not
    clipped); returns the gradient's global norm before clipping.

    Keras clips inside `apply_gradients` *before* it sums the replicas' gradients, which with
    several replicas clips each partial gradient by its own norm. Here the clip factor comes
    from the norm of the summed (and loss-unscaled) gradient and scales each replica's share, so
    the sum Keras then takes is the clipped global gradient. Under mixed_float16 the optimizer
    is a LossScaleOptimizer: the loss is scaled here and unscaled (and non-finite steps
    skipped) by it.
    """
    with tape:  # re-entered so that the loss scaling is recorded too
        scaled_loss = optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled_loss, variables)
    total = gradients
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        total = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, gradients)
    scale = loss_scale(optimizer)
    norm = tf.linalg.global_norm(total)
    if scale is not None:
        norm = norm / tf.cast(scale, norm.dtype)
    if clip_norm is not None:
        factor = tf.minimum(1.0, clip_norm / tf.maximum(norm, 1e-12))
        gradients = [g * factor for g in gradients]
    optimizer.apply_gradients(zip(gradients, variables))
    return norm


def loss_scale(optimizer) -> tf.Tensor | None:
    """The dynamic loss scale of a LossScaleOptimizer (mixed_float16), None otherwise."""
    return getattr(optimizer, "dynamic_scale", None)


class Trainer(keras.Model):
    """A defense as a Keras model: `fit` trains `classifier`, `evaluate` reports clean accuracy
    and accuracy under PGD-k (k = `config.eval_pgd_steps`) at the full ε.

    Evaluation runs `eval_classifier`, a float32 twin of a mixed-precision classifier (the
    classifier itself otherwise) that takes its weights at the start of each `evaluate`, and
    draws PGD's random starts from (seed, batch), so the same weights always give the same
    figures.

    Subclasses define `train_step`. A trainer is built and run inside `strategy.scope()`; each
    replica scales its loss by the global batch, so summed gradients are global means.
    `generator` is the learned attacker of L2L and L2L-DA, None for the other defenses.
    """

    generator = None

    def __init__(self, classifier: keras.Model, config: TrainConfig, steps_per_epoch: int,
                 clean_warmup_epochs: int = 0, eval_classifier: keras.Model | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.eval_classifier = eval_classifier or classifier
        self.eval_batch = tf.Variable(0, dtype=tf.int64, trainable=False, name="eval_batch")
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.clean_warmup_epochs = clean_warmup_epochs
        # the warm-up ends after exactly this many steps (`EndCleanWarmup`), even mid-epoch
        self.clean_warmup_steps = config.clean_warmup_steps if clean_warmup_epochs else 0
        self.adversarial = True
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.clean_acc = keras.metrics.SparseCategoricalAccuracy(name="clean_acc")
        self.adv_acc = keras.metrics.SparseCategoricalAccuracy(name="adv_acc")
        self.pgd_acc = keras.metrics.SparseCategoricalAccuracy(
            name=f"pgd{config.eval_pgd_steps}_acc")

    @property
    def metrics(self):
        return [self.loss_tracker, self.clean_acc, self.adv_acc, self.pgd_acc]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras would build here by averaging a first batch across replicas, which fails under
        # MultiWorkerMirroredStrategy; `build_trainer` has already created every variable.
        return

    def call(self, images, training=None):
        return self.classifier(images, training=training)

    def state(self) -> dict:
        """Everything a checkpoint must hold to resume training exactly (the step is the
        classifier optimizer's iteration count)."""
        return {"classifier": self.classifier, "classifier_optimizer": self.optimizer}

    def set_adversarial(self, adversarial: bool) -> None:
        """Switches between clean warm-up and adversarial training (retraces `train_step`)."""
        if adversarial != self.adversarial:
            self.adversarial = adversarial
            self.train_function = None

    def epsilon_now(self) -> tf.Tensor:
        """ε, ramped linearly from 0 over `epsilon_warmup_epochs` after any clean warm-up."""
        ramp_steps = self.config.epsilon_warmup_epochs * self.steps_per_epoch
        if ramp_steps == 0:
            return tf.constant(self.config.epsilon, tf.float32)
        done = self.optimizer.iterations - self.clean_warmup_steps + 1
        share = tf.clip_by_value(tf.cast(done, tf.float32) / ramp_steps, 0.0, 1.0)
        return self.config.epsilon * share

    def update_classifier(self, x: tf.Tensor, y: tf.Tensor, clip: bool = True) -> tf.Tensor:
        """One optimizer step on the mean CE of the classifier (training mode), its gradient
        clipped to `config.clip_norm` if `clip`; returns the logits."""
        with tf.GradientTape() as tape:
            logits = self.classifier(x, training=True)
            losses = cross_entropy(y, logits)
            loss = tf.reduce_sum(losses) / global_batch(tf.shape(x)[0])
        minimize(self.optimizer, tape, loss, self.classifier.trainable_variables,
                 self.config.clip_norm if clip else None)
        self.loss_tracker.update_state(losses)
        return logits

    def clean_step(self, data):
        """Plain training and the clean warm-up: the classifier on clean images only.

        The warm-up is not clipped, as in the authors' code: clipped, LeNet-5 leaves its
        1,000 MNIST steps at 93% instead of 96% clean (most have a gradient norm above 1)."""
        x, y = data
        # outside the warm-up (plain training) the trainer is `adversarial`: clipped
        self.clean_acc.update_state(y, self.update_classifier(x, y, clip=self.adversarial))
        return step_logs((self.loss_tracker, self.clean_acc))

    def adversarial_examples(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Adversarial images for monitoring (TensorBoard); PGD-k at the full ε by default."""
        return pgd(self.classifier, x, y, self.config.epsilon, steps=self.config.eval_pgd_steps)

    def evaluate(self, *args, **kwargs):
        if self.eval_classifier is not self.classifier:
            self.eval_classifier.set_weights(self.classifier.get_weights())
        self.eval_batch.assign(0)
        return super().evaluate(*args, **kwargs)

    def test_step(self, data):
        x, y = data
        classifier = self.eval_classifier
        self.clean_acc.update_state(y, classifier(x, training=False))
        seed = tf.stack([tf.constant(self.config.seed, tf.int64), self.eval_batch.assign_add(1)])
        x_adv = pgd(classifier, x, y, self.config.epsilon, steps=self.config.eval_pgd_steps,
                    seed=seed)
        self.pgd_acc.update_state(y, classifier(x_adv, training=False))
        return step_logs((self.clean_acc, self.pgd_acc))
