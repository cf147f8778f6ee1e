"""The attack battery: building the paper's attacks against a classifier and running them over
an eval set, keeping per-example correctness so Min and Worst-case can be computed."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from l2lda_tf.attacks import (
    GAP,
    AdvGAN,
    L2LDAAttack,
    cw_linf,
    default_step_size,
    fgsm,
    most_damaging,
    pgd,
    transfer,
)
from l2lda_tf.data import ImageDataset
from l2lda_tf.evaluation.autoattack import AutoAttack, standard_attack

DEFAULT_ATTACKS = ("fgsm", "pgd10", "pgd100", "cw100", "cw1000", "advgan", "gap", "l2lda",
                   "autoattack")
AUTOATTACK = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "autoattack")
_PATTERN = re.compile(r"^(fgsm|advgan|gap|l2lda|pgd(\d+)|cw(\d+)|" + "|".join(AUTOATTACK) + ")$")

Attack = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


@dataclass(frozen=True)
class AttackSettings:
    """What the attacks need beyond their names: ε and the budgets of the trained attacks."""

    epsilon: float
    samples: int = 10  # S, noise samples of the L2L-DA attack
    train_steps: int = 500  # AdvGAN and GAP generator training steps
    l2lda_steps: int = 200  # L2L-DA generator fine-tuning steps
    batch_size: int = 100  # batches for attack training and evaluation
    unroll_steps: int = 10  # T, α, λ and d of the L2L-DA attack (a run's own, when it has them)
    alpha: float = 0.25
    lam: float = 0.02
    noise_dim: int = 8
    cw_learning_rate: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.epsilon <= 1:
            raise ValueError(f"epsilon must be in (0, 1], got {self.epsilon}")
        if min(self.samples, self.train_steps, self.l2lda_steps, self.batch_size,
               self.unroll_steps, self.noise_dim) < 1:
            raise ValueError("samples, train_steps, l2lda_steps, batch_size, unroll_steps and "
                             "noise_dim must be positive")


def parse_attacks(text: str | list[str]) -> list[str]:
    """Validates attack names: fgsm, pgdK, cwK (any K ≥ 1), advgan, gap, l2lda, and
    AutoAttack's apgd-ce, apgd-dlr, apgd-t, fab-t, square or the whole `autoattack`."""
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    for name in names:
        match = _PATTERN.match(name)
        if not match or any(k is not None and int(k) < 1 for k in match.groups()[1:]):
            raise ValueError(f"unknown attack {name!r}; expected fgsm, pgdK, cwK (K ≥ 1), "
                             "advgan, gap, l2lda, apgd-ce, apgd-dlr, apgd-t, fab-t, square or "
                             "autoattack")
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"attacks must be a non-empty list without repeats, got {names}")
    return names


def display_name(name: str) -> str:
    """Column names as in the paper's table: PGD10, CW1000, AdvGAN, L2L-DA, ..."""
    fixed = {"fgsm": "FGSM", "advgan": "AdvGAN", "gap": "GAP", "l2lda": "L2L-DA",
             "apgd-ce": "APGD-CE", "apgd-dlr": "APGD-DLR", "apgd-t": "APGD-T", "fab-t": "FAB-T",
             "square": "Square", "autoattack": "AutoAttack"}
    if name in fixed:
        return fixed[name]
    if name.startswith("transfer-"):
        return "Transfer-" + display_name(name[len("transfer-"):])
    return name.upper()


def gradient_attack(name: str, model: keras.Model, settings: AttackSettings,
                    num_classes: int | None = None) -> Attack:
    """FGSM, PGD-k, CW-k or one of AutoAttack's attacks (standard settings; the targeted ones
    need `num_classes`) against `model` as a compiled (x, y) → x_adv."""
    eps = settings.epsilon
    if name == "autoattack":
        return AutoAttack(model, eps, num_classes)
    if name in AUTOATTACK:
        return standard_attack(name, model, eps, num_classes)
    if name == "fgsm":
        return tf.function(lambda x, y: fgsm(model, x, y, eps))
    if name.startswith("pgd"):
        steps = int(name[3:])
        size = default_step_size(eps, steps)
        return tf.function(lambda x, y: most_damaging(
            model, x, y, pgd(model, x, y, eps, steps=steps, step_size=size)))
    if name.startswith("cw"):
        steps = int(name[2:])
        return tf.function(lambda x, y: cw_linf(
            model, x, y, eps, steps=steps, kappa=0.0, learning_rate=settings.cw_learning_rate))
    raise ValueError(f"{name!r} is not a gradient attack")


def build_attack(name: str, classifier: keras.Model, dataset: ImageDataset,
                 settings: AttackSettings, generator=None, verbose: int = 0) -> Attack:
    """One attack against `classifier`, trained first on the training split if it learns
    (AdvGAN, GAP, L2L-DA; L2L-DA starts from `generator` when the run has one)."""
    if name not in ("advgan", "gap", "l2lda"):
        return gradient_attack(name, classifier, settings, dataset.num_classes)
    keras.utils.set_random_seed(settings.seed)
    if name == "l2lda":
        attacker = L2LDAAttack(classifier, dataset.image_shape, dataset.num_classes,
                               settings.epsilon, generator=generator, samples=settings.samples,
                               unroll_steps=settings.unroll_steps, alpha=settings.alpha,
                               lam=settings.lam, noise_dim=settings.noise_dim,
                               seed=settings.seed)
        steps = settings.l2lda_steps
    else:
        cls = AdvGAN if name == "advgan" else GAP
        attacker = cls(classifier, dataset.image_shape, settings.epsilon)
        steps = settings.train_steps
    attacker.compile()
    attacker.train_on(dataset.train_images, dataset.train_labels, steps, settings.batch_size,
                      settings.seed, verbose)
    return attacker.attack


def transfer_attack(name: str, surrogate: keras.Model, target: keras.Model,
                    settings: AttackSettings, num_classes: int | None = None) -> Attack:
    """A gradient attack crafted on `surrogate` and evaluated on `target` (black-box)."""
    crafted = gradient_attack(name, surrogate, settings, num_classes)
    return lambda x, y: transfer(lambda _, x, y: crafted(x, y), surrogate, target, x, y)


@dataclass
class BatteryOutcome:
    """Per-example correctness per column ("natural" first), seconds spent per attack, and for
    AutoAttack the per-example robustness after each of its stages and their seconds."""

    correct: dict[str, np.ndarray]
    attack_seconds: dict[str, float]
    images: int
    stages: dict[str, np.ndarray] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)


def run_battery(classifier: keras.Model, attacks: dict[str, Attack], images: np.ndarray,
                labels: np.ndarray, epsilon: float, batch_size: int = 100,
                progress: bool = False) -> BatteryOutcome:
    """Runs every attack on every batch of the uint8 `images`, one attack after the other (with
    a progress bar each when `progress`); checks each output lies in the threat model
    (|x_adv − x|∞ ≤ ε, [0, 1], same shape and dtype) and raises if not."""
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"need as many labels as images, and some: {len(images)}, "
                         f"{len(labels)}")
    starts = range(0, len(images), batch_size)

    def batch(start):
        return (tf.constant(images[start:start + batch_size], tf.float32) / 255.0,
                tf.constant(labels[start:start + batch_size], tf.int64))

    correct = {"natural": np.concatenate([_correct(classifier, *batch(s)) for s in starts])}
    seconds = dict.fromkeys(attacks, 0.0)
    for name, attack in attacks.items():
        bar = (keras.utils.Progbar(len(images), stateful_metrics=["accuracy"], unit_name="image")
               if progress else None)
        if bar:
            print(f"{display_name(name)}:", flush=True)
        columns = []
        for start in starts:
            x, y = batch(start)
            began = time.perf_counter()
            x_adv = attack(x, y)
            x_adv.numpy()  # wait for the result before stopping the clock
            seconds[name] += time.perf_counter() - began
            check_threat_model(name, x_adv, x, epsilon)
            columns.append(_correct(classifier, x_adv, y))
            if bar:
                done = np.concatenate(columns)
                bar.add(len(x), [("accuracy", 100.0 * done.mean())])
        correct[name] = np.concatenate(columns)
    outcome = BatteryOutcome(correct, seconds, len(images))
    for attack in attacks.values():
        if isinstance(attack, AutoAttack):
            outcome.stages = {k: np.concatenate(v) for k, v in attack.stages.items()}
            outcome.stage_seconds = dict(attack.stage_seconds)
    return outcome


def check_threat_model(name: str, x_adv: tf.Tensor, x: tf.Tensor, epsilon: float) -> None:
    """Raises if an attack's output leaves the ε-ball or [0, 1], or changes shape or dtype."""
    if x_adv.shape != x.shape or x_adv.dtype != x.dtype:
        raise RuntimeError(f"attack {name} returned {x_adv.dtype} {x_adv.shape}, "
                           f"expected {x.dtype} {x.shape}")
    distance = float(tf.reduce_max(tf.abs(x_adv - x)))
    low, high = float(tf.reduce_min(x_adv)), float(tf.reduce_max(x_adv))
    if distance > epsilon + 1e-5 or low < 0.0 or high > 1.0:
        raise RuntimeError(f"attack {name} left the threat model: |δ|∞ = {distance:.6f} "
                           f"(ε = {epsilon}), pixels in [{low:.4f}, {high:.4f}]")


def _correct(model, x, y) -> np.ndarray:
    predictions = tf.argmax(model(x, training=False), axis=-1)
    return (predictions.numpy() == y.numpy())
