"""What a search varies (λ, optionally the learning rates) and how it scores a trial."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import keras_tuner as kt

from l2lda_tf.config import TrainConfig

LAMBDA_RANGE = (1e-3, 10.0)  # λ, the diversity weight; sampled log-uniformly
LEARNING_RATE_RANGE = (1e-3, 1e-1)
TUNED_FIELDS = ("lam", "g_lr", "f_lr")  # hyperparameter names are TrainConfig fields
GENERATOR_DEFENSES = ("l2l", "l2lda")


def search_space(defense: str, tune_rates: bool = False) -> kt.HyperParameters:
    """λ for L2L-DA (the only defense with a diversity term); with `tune_rates`, the classifier's
    learning rate and, for the learned defenses, the generator's."""
    hp = kt.HyperParameters()
    if defense == "l2lda":
        hp.Float("lam", *LAMBDA_RANGE, sampling="log")
    if tune_rates:
        hp.Float("f_lr", *LEARNING_RATE_RANGE, sampling="log")
        if defense in GENERATOR_DEFENSES:
            hp.Float("g_lr", *LEARNING_RATE_RANGE, sampling="log")
    if not hp.space:
        raise ValueError(f"nothing to tune for defense {defense!r}: λ is only used by l2lda; "
                         "add --tune-rates to search the learning rates")
    return hp


def trial_config(base: TrainConfig, values: Mapping) -> TrainConfig:
    """`base` with a trial's values; Hyperband's `tuner/epochs` sets the epochs."""
    fields = {k: v for k, v in values.items() if k in TUNED_FIELDS}
    if "tuner/epochs" in values:
        fields["epochs"] = int(values["tuner/epochs"])
    return dataclasses.replace(base, **fields)


def objective_value(pgd_acc: float, clean_acc: float, validation_size: int) -> float:
    """PGD-k accuracy, ties broken by clean accuracy: pgd + clean / (n + 1).

    Accuracies on n validation images move in steps of 1/n and clean / (n + 1) < 1/n, so one
    more image classified correctly under attack always outweighs any clean-accuracy difference.
    """
    if validation_size < 1:
        raise ValueError(f"validation_size must be positive, got {validation_size}")
    return float(pgd_acc) + float(clean_acc) / (validation_size + 1)
