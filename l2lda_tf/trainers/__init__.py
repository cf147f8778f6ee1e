"""Defenses as Keras models with custom `train_step`s, and the factory that builds them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import keras
import tensorflow as tf

from l2lda_tf.config import TrainConfig
from l2lda_tf.models import NoiseGenerator, batch_norm_layers, build_classifier
from l2lda_tf.trainers.base import Trainer, global_batch, minimize
from l2lda_tf.trainers.baselines import PGDTrainer, PlainTrainer
from l2lda_tf.trainers.learned import L2LDATrainer, L2LTrainer

TRAINERS: dict[str, type[Trainer]] = {
    "plain": PlainTrainer, "pgd": PGDTrainer, "l2l": L2LTrainer, "l2lda": L2LDATrainer,
}


PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags")
            for flag in line.split(":", 1)[1].split()}


def auto_precision() -> str:
    """The dtype policy where mixed precision pays: mixed_bfloat16 on GPUs of compute capability
    8.0 and up, and on CPUs with bfloat16 instructions (AVX512-BF16 or AMX; the L2L-DA step
    measured 1.3× faster here); mixed_float16 on GPUs of capability 7.x; float32 otherwise."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = min(tf.config.experimental.get_device_details(gpu).get(
            "compute_capability", (0, 0)) for gpu in gpus)
        if capability >= (8, 0):
            return "mixed_bfloat16"
        return "mixed_float16" if capability >= (7, 0) else "float32"
    return "mixed_bfloat16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "float32"


def sgd(config: TrainConfig, learning_rate: float, decay_at_step: int,
        precision: str = "float32") -> keras.optimizers.Optimizer:
    """SGD with momentum and weight decay; the rate drops by γ once, at `decay_at_step`.

    Keras applies weight decay decoupled (w ← w − lr·wd·w), which for SGD equals the L2 term
    of the reference implementation up to its interaction with momentum. Gradients are clipped
    by the trainers (`minimize`), not here: Keras would clip per replica. Under mixed_float16
    the optimizer is wrapped in a LossScaleOptimizer.
    """
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [max(decay_at_step, 1)], [learning_rate, learning_rate * config.lr_decay]
    )
    optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum,
                                     weight_decay=config.weight_decay)
    if precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def build_generator(config: TrainConfig, num_classes: int, image_shape: Sequence[int]):
    """The attacker of a learned defense, with its weights created (None for other defenses)."""
    if config.defense not in ("l2l", "l2lda"):
        return None
    l2l = config.defense == "l2l"
    generator = NoiseGenerator(image_shape[-1], num_classes=None if l2l else num_classes,
                               noise_dim=0 if l2l else config.noise_dim, name="generator")
    features = tf.zeros([1, *image_shape[:-1], 3 * image_shape[-1]])
    noise = None if l2l else tf.zeros([1, config.noise_dim])
    generator(features, tf.zeros([1], tf.int32), noise)
    return generator


def synchronize_batch_norm(*models) -> None:
    """Makes every BatchNormalization layer (those inside CondBN too) normalize with the
    statistics of the global batch, all-reduced across replicas, as the reference's SyncBN did:
    with several replicas, each would otherwise see only its own share of the batch."""
    for model in models:
        for layer in batch_norm_layers(model) if model is not None else ():
            layer.synchronized = True


def clean_warmup_epochs(config: TrainConfig, steps_per_epoch: int) -> int:
    """The clean warm-up in whole epochs (rounded up), so phases switch at epoch boundaries."""
    if config.defense == "plain":
        return 0
    return math.ceil(config.clean_warmup_steps / steps_per_epoch)


def build_trainer(config: TrainConfig, num_classes: int, image_shape: Sequence[int],
                  steps_per_epoch: int, strategy: tf.distribute.Strategy | None = None,
                  jit_compile: bool = False, precision: str = "float32",
                  recompute: bool = False) -> Trainer:
    """Builds the classifier (and generator), optimizers and trainer for `config` inside
    `strategy.scope()`, with every variable created so a checkpoint can be restored into it.

    `precision` is a Keras dtype policy for the models ("mixed_bfloat16" computes in bfloat16
    with float32 variables); checkpoints are interchangeable between precisions. `recompute`
    (learned defenses) reruns each unroll step's generator in the backward pass instead of
    keeping its activations.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"batch size {config.batch_size} does not split evenly over "
                         f"{replicas} replicas; use a multiple of {replicas}")
    total_steps = config.epochs * steps_per_epoch
    warmup = clean_warmup_epochs(config, steps_per_epoch)
    previous_policy = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(precision)
        with strategy.scope():
            classifier = build_classifier(config.classifier, num_classes, image_shape)
            generator = build_generator(config, num_classes, image_shape)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    if replicas > 1:
        synchronize_batch_norm(classifier, generator)
    with strategy.scope():
        classifier_optimizer = sgd(config, config.f_lr, total_steps // 2, precision)
        cls = TRAINERS[config.defense]
        if generator is None:
            trainer = cls(classifier, config, steps_per_epoch, warmup, name=config.defense)
            trainer.compile(optimizer=classifier_optimizer, jit_compile=jit_compile)
        else:
            generator_optimizer = sgd(config, config.g_lr,
                                      total_steps // 2 - warmup * steps_per_epoch, precision)
            trainer = cls(classifier, generator, config, steps_per_epoch, warmup,
                          recompute=recompute, name=config.defense)
            trainer.compile(classifier_optimizer, generator_optimizer, jit_compile=jit_compile)
            generator_optimizer.build(generator.trainable_variables)
        classifier_optimizer.build(classifier.trainable_variables)
    return trainer


__all__ = [
    "PRECISIONS", "TRAINERS", "L2LDATrainer", "L2LTrainer", "PGDTrainer", "PlainTrainer",
    "Trainer", "auto_precision", "build_generator", "build_trainer", "clean_warmup_epochs",
    "cpu_flags", "global_batch", "minimize", "sgd", "synchronize_batch_norm",
]
