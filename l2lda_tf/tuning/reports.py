"""What a search leaves behind: best.json, trials.md and TensorBoard HParams logs."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import keras_tuner as kt
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from l2lda_tf.config import TrainConfig
from l2lda_tf.files import write_atomically
from l2lda_tf.tuning.space import TUNED_FIELDS, trial_config

OBJECTIVE = "objective"
COMPLETED = "COMPLETED"
LABELS = {"lam": "λ", "g_lr": "g_lr", "f_lr": "f_lr"}


def trial_rows(trials: Mapping, base: TrainConfig, pgd_key: str) -> list[dict]:
    """One row per keras-tuner trial, in trial order: its status, the values it trained with,
    its validation metrics (None unless completed) and the last line of any error."""
    rows = []
    for trial_id in sorted(trials, key=lambda trial_id: int(trial_id)):
        trial = trials[trial_id]
        values = trial.hyperparameters.values
        config = trial_config(base, values)
        row = {"trial_id": trial_id, "status": trial.status,
               **{field: getattr(config, field) for field in TUNED_FIELDS},
               "epochs": config.epochs, "parent": values.get("tuner/trial_id")}
        for name in (OBJECTIVE, "clean_acc", pgd_key):
            completed = trial.status == COMPLETED and trial.metrics.exists(name)
            row[name] = float(trial.metrics.get_last_value(name)) if completed else None
        row["error"] = last_line(trial.message)
        rows.append(row)
    return rows


def last_line(message: str | None) -> str | None:
    """The last line of a trial's traceback: the exception and its message."""
    lines = (message or "").strip().splitlines()
    return lines[-1] if lines else None


def best_row(rows: list[dict]) -> dict | None:
    """The completed trial with the highest objective (the earliest one on an exact tie)."""
    completed = [row for row in rows if row["status"] == COMPLETED]
    return max(completed, key=lambda row: row[OBJECTIVE]) if completed else None


def write_reports(out_dir: Path, oracle: kt.Oracle, base: TrainConfig, pgd_key: str,
                  validation_size: int, tuned: list[str]) -> dict | None:
    """Rewrites `trials.md` and, once a trial has completed, `best.json`; returns the latter."""
    rows = trial_rows(oracle.trials, base, pgd_key)
    best = best_row(rows)
    write_atomically(out_dir / "trials.md",
                     trials_table(rows, best, pgd_key, validation_size, tuned))
    if best is None:
        return None
    values = {field: best[field] for field in TUNED_FIELDS}
    summary = {
        "trial_id": best["trial_id"], **values, "tuned": tuned,
        OBJECTIVE: best[OBJECTIVE], "clean_acc": best["clean_acc"], pgd_key: best[pgd_key],
        "validation_examples": validation_size,
        "trials": {"completed": sum(row["status"] == COMPLETED for row in rows),
                   "total": len(rows)},
        # what --train-best trains: the base configuration with the best values
        "config": dataclasses.asdict(dataclasses.replace(base, **values)),
    }
    write_atomically(out_dir / "best.json", json.dumps(summary, indent=2, sort_keys=True))
    return summary


def trials_table(rows: list[dict], best: dict | None, pgd_key: str, validation_size: int,
                 tuned: list[str]) -> str:
    """A markdown table of every trial; the best is starred."""
    attack = pgd_key.removesuffix("_acc").upper().replace("PGD", "PGD-")
    lines = [
        "# Search trials", "",
        f"Objective: {attack} accuracy on {validation_size} validation images carved from the "
        f"training split, ties broken by clean accuracy (objective = pgd + clean / "
        f"{validation_size + 1}). Tuned: {', '.join(LABELS[name] for name in tuned)}. "
        "★ marks the best trial.", "",
        f"| trial | status | λ | g_lr | f_lr | epochs | clean acc | {attack} acc | objective "
        "| error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def number(value, digits=4):
        return "" if value is None else f"{value:.{digits}g}"

    for row in rows:
        star = " ★" if best is not None and row["trial_id"] == best["trial_id"] else ""
        epochs = f"{row['epochs']} (from {row['parent']})" if row["parent"] else row["epochs"]
        error = (row["error"] or "").replace("|", "\\|") if row["status"] != COMPLETED else ""
        lines.append(
            f"| {row['trial_id']}{star} | {row['status']} | {number(row['lam'])} | "
            f"{number(row['g_lr'])} | {number(row['f_lr'])} | {epochs} | "
            f"{number(row['clean_acc'])} | {number(row[pgd_key])} | "
            f"{number(row[OBJECTIVE], 6)} | {error} |")
    return "\n".join(lines) + "\n"


def write_hparams_config(log_dir: Path, space: kt.HyperParameters, pgd_key: str) -> None:
    """The HParams experiment (the tuned ranges and the metrics), written once per search."""
    if any(log_dir.glob("events.out.tfevents.*")):
        return
    hparams = [hparams_api.HParam(hp.name, hparams_api.RealInterval(hp.min_value, hp.max_value))
               for hp in space.space]
    metrics = [hparams_api.Metric(name) for name in (OBJECTIVE, "clean_acc", pgd_key)]
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        hparams_api.hparams_config(hparams=hparams, metrics=metrics)
    writer.close()


def write_trial_hparams(log_dir: Path, trial_id: str, values: Mapping, results: Mapping,
                        step: int) -> None:
    """One HParams session: a trial's tuned values and its validation metrics."""
    writer = tf.summary.create_file_writer(str(log_dir / f"trial_{trial_id}"))
    with writer.as_default():
        hparams_api.hparams({k: float(v) for k, v in values.items() if k in TUNED_FIELDS},
                            trial_id=trial_id)
        for name, value in results.items():
            tf.summary.scalar(name, value, step=step)
    writer.close()
