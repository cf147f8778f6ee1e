"""AutoAttack's standard evaluation (Croce & Hein, ICML 2020): APGD-CE, APGD-T, FAB-T and Square
with fixed hyperparameters, each run only on the points the earlier ones left robust."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from l2lda_tf.attacks import apgd, fab_targeted, margin, square
from l2lda_tf.attacks.utils import scatter_rows

STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")


def standard_attack(name: str, model, epsilon: float, num_classes: int) -> Callable:
    """One of AutoAttack's four attacks with its standard settings, as (x, y) → x_adv:
    APGD-CE (100 steps, 1 run), APGD-T (DLR, 100 steps, 9 targets), FAB-T (100 steps,
    9 targets) and Square (5,000 queries, p_init = 0.8). With K < 10 classes the targeted
    attacks take the K − 1 other classes."""
    targets = min(9, num_classes - 1)
    if name == "apgd-ce":
        return lambda x, y: apgd(model, x, y, epsilon, loss="ce", steps=100)
    if name == "apgd-dlr":
        return lambda x, y: apgd(model, x, y, epsilon, loss="dlr", steps=100)
    if name == "apgd-t":
        return lambda x, y: apgd(model, x, y, epsilon, loss="dlr", steps=100, targets=targets)
    if name == "fab-t":
        return lambda x, y: fab_targeted(model, x, y, epsilon, steps=100, targets=targets)
    if name == "square":
        return lambda x, y: square(model, x, y, epsilon, queries=5000, p_init=0.8)
    raise ValueError(f"{name!r} is not one of AutoAttack's attacks")


class AutoAttack:
    """The standard sequence as one attack (x, y) → x_adv: per example, the first adversarial
    point found, else the most damaging point of the last attack. After each call, `stages`
    holds per stage the per-example robustness so far and `stage_seconds` the time spent."""

    def __init__(self, model, epsilon: float, num_classes: int, stages=STAGES):
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown AutoAttack stages {sorted(unknown)}; use {STAGES}")
        self.model = model
        self.attacks = {s: standard_attack(s, model, epsilon, num_classes) for s in stages}
        self.stages: dict[str, list[np.ndarray]] = {s: [] for s in stages}
        self.stage_seconds = dict.fromkeys(stages, 0.0)

    def __call__(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        best = x
        robust = margin(y, self.model(x, training=False)).numpy() <= 0
        for name, attack in self.attacks.items():
            began = time.perf_counter()
            index = np.flatnonzero(robust)
            if len(index):
                index_t = tf.constant(index, tf.int64)
                x_adv = attack(tf.gather(x, index_t), tf.gather(y, index_t))
                best = scatter_rows(best, index_t, tf.cast(x_adv, tf.float32))
                robust[index] = margin(tf.gather(y, index_t),
                                       self.model(x_adv, training=False)).numpy() <= 0
            self.stage_seconds[name] += time.perf_counter() - began
            self.stages[name].append(robust.copy())
        return best
