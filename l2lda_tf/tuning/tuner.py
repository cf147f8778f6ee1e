"""A keras-tuner `Tuner` whose trials are whole training runs (`experiment.train`).

`train` is not a plain `model.fit` (two players, checkpoints, resumption), so the tuner overrides
`run_trial` and leaves trial scheduling, retries and the search state to keras-tuner's oracle.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import keras
import keras_tuner as kt

from l2lda_tf.config import TrainConfig
from l2lda_tf.data import ImageDataset
from l2lda_tf.experiment import load_run, train
from l2lda_tf.tuning.reports import (
    COMPLETED,
    OBJECTIVE,
    last_line,
    write_reports,
    write_trial_hparams,
)
from l2lda_tf.tuning.space import objective_value, trial_config

log = logging.getLogger(__name__)
PROJECT = "search"  # keras-tuner's project directory inside the search directory
TUNERS = ("random", "bayesian", "hyperband")
MAX_CONSECUTIVE_FAILED_TRIALS = 3


def is_worker() -> bool:
    """True in keras-tuner's distributed mode on a worker (its results live in the chief)."""
    return ("KERASTUNER_ORACLE_IP" in os.environ
            and "chief" not in os.environ.get("KERASTUNER_TUNER_ID", ""))


def build_oracle(kind: str, space: kt.HyperParameters, max_trials: int, max_epochs: int,
                 seed: int) -> kt.Oracle:
    """keras-tuner's oracle of `kind`, maximizing the objective over `space`.

    Hyperband ignores `max_trials`: its brackets, from `max_epochs`, fix the number of trials.
    """
    objective = kt.Objective(OBJECTIVE, direction="max")
    common = {"objective": objective, "hyperparameters": space, "seed": seed,
              "max_consecutive_failed_trials": MAX_CONSECUTIVE_FAILED_TRIALS}
    if kind == "random":
        return kt.oracles.RandomSearchOracle(max_trials=max_trials, **common)
    if kind == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=max_trials, **common)
    if kind == "hyperband":
        return kt.oracles.HyperbandOracle(max_epochs=max_epochs, **common)
    raise ValueError(f"unknown tuner {kind!r}; expected one of {TUNERS}")


class DefenseTuner(kt.Tuner):
    """Trains each trial's configuration on the training split minus the validation split, into
    `search/trial_<id>/run`, and scores it on the validation split (`space.objective_value`).

    A trial interrupted mid-run is retried by the oracle on the next run and resumes from its
    run directory's checkpoint; a trial that raises is marked failed and the search goes on.
    """

    def __init__(self, oracle: kt.Oracle, base: TrainConfig, validation: ImageDataset,
                 out_dir: str | Path, tuned: list[str], train_verbose: int | str = 0):
        self.base = base
        self.validation = validation
        self.out_dir = Path(out_dir)
        self.tuned = tuned
        self.train_verbose = train_verbose
        self.pgd_key = f"pgd{base.eval_pgd_steps}_acc"
        super().__init__(oracle, directory=str(self.out_dir), project_name=PROJECT,
                         overwrite=False)

    def run_dir(self, trial_id: str) -> Path:
        return Path(self.get_trial_dir(trial_id)) / "run"

    def run_trial(self, trial, *args, **kwargs) -> dict:
        values = trial.hyperparameters.values
        config = trial_config(self.base, values)
        run_dir = self.run_dir(trial.trial_id)
        self.warm_start(values, run_dir)
        keras.backend.clear_session()
        metrics = train(config, run_dir, dataset=self.validation, verbose=self.train_verbose,
                        export_models=False)
        clean, pgd = metrics["clean_acc"], metrics[self.pgd_key]
        results = {OBJECTIVE: objective_value(pgd, clean, len(self.validation.eval_labels)),
                   "clean_acc": clean, self.pgd_key: pgd}
        write_trial_hparams(self.out_dir / "hparams", trial.trial_id, values, results,
                            metrics["steps"])
        return results

    def warm_start(self, values: dict, run_dir: Path) -> None:
        """Hyperband's promoted trials continue from their parent's checkpoint, as keras-tuner
        does for `fit` models; the run then trains on to the trial's `tuner/epochs`."""
        parent = values.get("tuner/trial_id")
        if parent and not (run_dir / "checkpoints").exists():
            shutil.copytree(self.run_dir(parent) / "checkpoints", run_dir / "checkpoints")

    def on_trial_end(self, trial) -> None:
        if trial.status != COMPLETED:
            log.warning("trial %s crashed (%s): %s", trial.trial_id, trial.status,
                        last_line(trial.message))
        try:
            super().on_trial_end(trial)  # raises once too many trials failed in a row
        finally:
            if not is_worker():
                write_reports(self.out_dir, self.oracle, self.base, self.pgd_key,
                              len(self.validation.eval_labels), self.tuned)

    def load_model(self, trial) -> keras.Model:
        """The classifier a trial trained (`get_best_models`), from its run's checkpoint."""
        return load_run(self.run_dir(trial.trial_id)).classifier
