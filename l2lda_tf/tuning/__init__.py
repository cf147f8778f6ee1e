"""Hyperparameter search (keras-tuner) over λ and the learning rates, scored on a validation
split carved from the training data by PGD-k accuracy, ties broken by clean accuracy."""

from l2lda_tf.tuning.search import run_search, train_best
from l2lda_tf.tuning.space import (
    LAMBDA_RANGE,
    LEARNING_RATE_RANGE,
    objective_value,
    search_space,
    trial_config,
)
from l2lda_tf.tuning.split import validation_dataset, validation_size
from l2lda_tf.tuning.tuner import TUNERS, DefenseTuner, build_oracle, is_worker

__all__ = [
    "LAMBDA_RANGE", "LEARNING_RATE_RANGE", "TUNERS", "DefenseTuner", "build_oracle",
    "is_worker", "objective_value", "run_search", "search_space", "train_best",
    "trial_config", "validation_dataset", "validation_size",
]
