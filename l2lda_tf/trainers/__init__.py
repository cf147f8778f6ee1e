"""Defenses as Keras models with custom `train_step`s, and the factory that builds them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import keras
import tensorflow as tf

from l2lda_tf.config import TrainConfig
from l2lda_tf.models import CLASSIFIERS, build_classifier, build_noise_generator
from l2lda_tf.optimizers import sgd
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


def build_generator(config: TrainConfig, num_classes: int, image_shape: Sequence[int],
                    synchronized: bool = False):
    """The attacker of a learned defense, with its weights created (None for other defenses).
    L2L's attacker has no noise and never sees the label."""
    if config.defense not in ("l2l", "l2lda"):
        return None
    l2l = config.defense == "l2l"
    return build_noise_generator(image_shape, None if l2l else num_classes,
                                 0 if l2l else config.noise_dim, synchronized)


def clean_warmup_epochs(config: TrainConfig, steps_per_epoch: int) -> int:
    """The epochs that hold clean warm-up steps (rounded up); the last of them switches to
    adversarial steps mid-epoch when the warm-up is not a whole number of epochs."""
    if config.defense == "plain":
        return 0
    return math.ceil(config.clean_warmup_steps / steps_per_epoch)


def check_settings(config: TrainConfig, precision: str, replicas: int) -> None:
    """What `build_trainer` refuses: an unknown classifier or precision, or a batch that does
    not split evenly over the replicas (`experiment.train` checks before writing anything)."""
    if config.classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {config.classifier!r}; known: "
                         f"{sorted(CLASSIFIERS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if config.batch_size % replicas:
        raise ValueError(f"batch size {config.batch_size} does not split evenly over "
                         f"{replicas} replicas; use a multiple of {replicas}")


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
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    check_settings(config, precision, replicas)
    total_steps = config.epochs * steps_per_epoch
    warmup = clean_warmup_epochs(config, steps_per_epoch)
    previous_policy = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(precision)
        with strategy.scope():
            # with several replicas, batch norm all-reduces its statistics (the authors' SyncBN)
            classifier = build_classifier(config.classifier, num_classes, image_shape,
                                          synchronized=replicas > 1)
            generator = build_generator(config, num_classes, image_shape, replicas > 1)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    with strategy.scope():
        # evaluation always runs the classifier in float32
        eval_classifier = None if precision == "float32" else build_classifier(
            config.classifier, num_classes, image_shape)
        # only the classifier's rate decays: the attacker keeps adapting (the authors' code)
        classifier_optimizer = sgd(config, config.f_lr, config.decay_step(total_steps),
                                   precision)
        cls = TRAINERS[config.defense]
        if generator is None:
            trainer = cls(classifier, config, steps_per_epoch, warmup,
                          eval_classifier=eval_classifier, name=config.defense)
            trainer.compile(optimizer=classifier_optimizer, jit_compile=jit_compile)
        else:
            generator_optimizer = sgd(config, config.g_lr, precision=precision)
            trainer = cls(classifier, generator, config, steps_per_epoch, warmup,
                          recompute=recompute, eval_classifier=eval_classifier,
                          name=config.defense)
            trainer.compile(classifier_optimizer, generator_optimizer, jit_compile=jit_compile)
            generator_optimizer.build(generator.trainable_variables)
        classifier_optimizer.build(classifier.trainable_variables)
    return trainer


__all__ = [
    "PRECISIONS", "TRAINERS", "L2LDATrainer", "L2LTrainer", "PGDTrainer", "PlainTrainer",
    "Trainer", "auto_precision", "build_generator", "build_trainer", "check_settings",
    "clean_warmup_epochs", "cpu_flags", "global_batch", "minimize", "sgd",
]
