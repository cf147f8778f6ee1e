"""A hyperparameter search as one call: run or resume it, report it, train its best values.

Layout of a search directory:
    search.json        the search's settings (a rerun must ask for the same ones)
    search/            keras-tuner's project: oracle.json, trial_<id>/trial.json and, per
                       trial, run/ (a training run directory, as `training.fit` writes)
    hparams/           TensorBoard HParams: the experiment and one session per trial
    trials.md          every trial: status, values, validation accuracies, errors
    best.json          the best trial's values, objective and accuracies, and its full config
    best/              `--train-best`: the best values trained on the full training split
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from l2lda_tf.config import TrainConfig
from l2lda_tf.data import ImageDataset
from l2lda_tf.experiment import train
from l2lda_tf.files import write_atomically
from l2lda_tf.tuning.reports import write_hparams_config, write_reports
from l2lda_tf.tuning.space import search_space
from l2lda_tf.tuning.split import validation_dataset
from l2lda_tf.tuning.tuner import DefenseTuner, build_oracle, is_worker

DEFAULT_VALIDATION_SHARE = 0.1


def setting_differences(saved: dict, settings: dict) -> list[str]:
    """`name: saved …, now …` for each setting that differs, config fields one by one."""
    differences = []
    for key in sorted(saved.keys() | settings.keys()):
        old, new = saved.get(key), settings.get(key)
        if key == "config" and isinstance(old, dict) and isinstance(new, dict):
            differences += [f"config.{k}: saved {old.get(k)!r}, now {new.get(k)!r}"
                            for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
        elif old != new:
            differences.append(f"{key}: saved {old!r}, now {new!r}")
    return differences


def check_settings(out_dir: Path, settings: dict) -> None:
    """Records the search's settings, or checks that the search in `out_dir` used the same.

    Only `max_trials` may change between runs: raising it extends a finished search.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "search.json"
    if path.exists():
        saved = {**json.loads(path.read_text()), "max_trials": settings["max_trials"]}
        differences = setting_differences(saved, settings)
        if differences:
            raise ValueError(f"{out_dir} holds a search with other settings "
                             f"({', '.join(differences)}); rerun with the same settings to "
                             "resume, or choose a new --out")
    write_atomically(path, json.dumps(settings, indent=2, sort_keys=True))


def run_search(base: TrainConfig, dataset: ImageDataset, out_dir: str | Path,
               tuner: str = "bayesian", max_trials: int = 10, tune_rates: bool = False,
               validation_share: float = DEFAULT_VALIDATION_SHARE,
               verbose: int = 1) -> dict | None:
    """Runs or resumes the search in `out_dir`; returns `best.json`'s content, or None if no
    trial has completed or this process is a distributed worker (the chief reports).

    Every trial trains `base` with the trial's values on `dataset`'s training split minus a
    validation split (a fixed `validation_share`, seeded by `base.seed`); the eval split is
    never used. In keras-tuner's distributed mode (KERASTUNER_* variables) the chief serves the
    oracle and writes the reports, and the workers run the trials.
    """
    if max_trials < 1:
        raise ValueError(f"max_trials must be positive, got {max_trials}")
    out_dir = Path(out_dir)
    space = search_space(base.defense, tune_rates)
    validation = validation_dataset(dataset, validation_share, base.seed)
    # keras-tuner treats seed 0 as "draw a random seed"
    oracle = build_oracle(tuner, space, max_trials, base.epochs, seed=base.seed + 1)
    check_settings(out_dir, {
        "config": dataclasses.asdict(base), "tuner": tuner, "tune_rates": tune_rates,
        "validation_share": validation_share, "max_trials": max_trials})
    tuned = [hp.name for hp in space.space]
    search = DefenseTuner(oracle, base, validation, out_dir, tuned,
                          train_verbose=2 if verbose >= 2 else 0)
    if is_worker():
        search.search(verbose=verbose)
        return None
    write_hparams_config(out_dir / "hparams", space, search.pgd_key)
    search.search(verbose=verbose)
    # A chief's oracle last saved itself before its final trial left `ongoing_trials`; without
    # this save a rerun would retry that finished trial.
    search.save()
    return write_reports(out_dir, search.oracle, base, search.pgd_key,
                         len(validation.eval_labels), tuned)


def train_best(out_dir: str | Path, dataset: ImageDataset, verbose: int | str = "auto") -> dict:
    """Trains `best.json`'s configuration into `out_dir/best` on the full training split and
    reports on the eval split: the same `experiment.train` run as `training.fit`."""
    out_dir = Path(out_dir)
    path = out_dir / "best.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: no trial of the search has completed yet")
    config = TrainConfig(**json.loads(path.read_text())["config"])
    return train(config, out_dir / "best", dataset=dataset, verbose=verbose)
