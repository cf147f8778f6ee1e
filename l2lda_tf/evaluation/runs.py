"""Evaluating a training run directory, or any classifier, under the attack battery (what
`training.evaluate` does), with reuse of an earlier evaluation made with the same settings."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import tensorflow as tf

from l2lda_tf.data import ImageDataset, load_dataset
from l2lda_tf.evaluation.battery import (
    AttackSettings,
    build_attack,
    run_battery,
    transfer_attack,
)
from l2lda_tf.evaluation.checks import sanity_warnings
from l2lda_tf.evaluation.results import Results, defense_label, load_results, write_results
from l2lda_tf.experiment import load_run

log = logging.getLogger(__name__)


def settings_from_config(config, **overrides) -> AttackSettings:
    """Attack settings for a run: its ε, and its T, α, λ and d for the L2L-DA attack
    (L2L runs have no noise, so the attack keeps its own d = 8)."""
    fields = dict(epsilon=config.epsilon, unroll_steps=config.unroll_steps, alpha=config.alpha,
                  lam=config.lam, noise_dim=config.noise_dim or 8)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return AttackSettings(**fields)


def evaluate_run(run_dir: str | Path, attacks: list[str], settings: AttackSettings | None = None,
                 dataset: ImageDataset | None = None, data_dir: str | Path | None = None,
                 limit: int | None = None, surrogate_dir: str | Path | None = None,
                 transfer_with: str = "pgd10", verbose: int = 0) -> Results:
    """Loads the run's classifier (and generator), builds each attack (training the learned
    ones on the training split), runs them on the first `limit` eval images and writes
    run_dir/eval/results.{json,csv,md}, metrics.json and TensorBoard summaries in
    run_dir/eval/logs."""
    run_dir = Path(run_dir)
    trainer = load_run(run_dir)
    config = trainer.config
    settings = settings or settings_from_config(config)
    dataset = dataset or load_dataset(config.dataset, data_dir)
    return evaluate_classifier(trainer.classifier, dataset, attacks, settings, run_dir / "eval",
                               defense=defense_label(config), source=str(run_dir),
                               generator=trainer.generator, limit=limit,
                               surrogate_dir=surrogate_dir, transfer_with=transfer_with,
                               verbose=verbose)


def evaluate_classifier(classifier, dataset: ImageDataset, attacks: list[str],
                        settings: AttackSettings, out_dir: str | Path, *, defense: str,
                        source: str, generator=None, limit: int | None = None,
                        surrogate_dir: str | Path | None = None, transfer_with: str = "pgd10",
                        verbose: int = 0, recorded: dict | None = None) -> Results:
    """Any classifier (`model(x, training=False)` → logits, images in [0, 1]) under the
    attacks, with the sanity checks; writes out_dir/results.{json,csv,md} and metrics.json."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    images, labels = dataset.eval_images[:limit], dataset.eval_labels[:limit]

    built, setup_seconds = {}, {}
    for name in attacks:
        began = time.perf_counter()
        # Keras verbosity for the learned attacks' training: a line per epoch at verbose 2.
        built[name] = build_attack(name, classifier, dataset, settings, generator,
                                   2 if verbose > 1 else 0)
        setup_seconds[name] = time.perf_counter() - began
        log.info("%s: built %s in %.1f s", source, name, setup_seconds[name])
    if surrogate_dir is not None:
        surrogate = load_run(surrogate_dir).classifier
        built[f"transfer-{transfer_with}"] = transfer_attack(transfer_with, surrogate, classifier,
                                                             settings, dataset.num_classes)
    outcome = run_battery(classifier, built, images, labels, settings.epsilon,
                          settings.batch_size, progress=verbose > 0)
    recorded = {**cache_key(attacks, settings, limit, surrogate_dir, transfer_with),
                **(recorded or {})}
    results = Results.from_outcome(defense, source, settings.epsilon, outcome, setup_seconds,
                                   recorded)
    x = tf.constant(images[:settings.batch_size], tf.float32) / 255.0
    y = tf.constant(labels[:settings.batch_size], tf.int64)
    results.warnings = sanity_warnings(classifier, x, y, results.accuracies(),
                                       results.stage_accuracies())
    for warning in results.warnings:
        log.warning("%s: %s", source, warning)
    write_results([results], out_dir)
    return results


def cache_key(attacks: list[str], settings: AttackSettings, limit: int | None,
              surrogate_dir: str | Path | None = None, transfer_with: str = "pgd10") -> dict:
    """What an earlier evaluation must have been made with to be reused."""
    return {**dataclasses.asdict(settings), "attacks": list(attacks), "limit": limit,
            "surrogate": str(surrogate_dir) if surrogate_dir else None,
            "transfer_with": transfer_with if surrogate_dir else None}


def evaluate_or_reuse(run_dir: str | Path, attacks: list[str], settings: AttackSettings | None,
                      limit: int | None, **kwargs) -> Results:
    """An earlier run_dir/eval/results.json if made with the same attacks, limit, settings,
    surrogate and transfer attack; otherwise a fresh `evaluate_run`."""
    path = Path(run_dir) / "eval" / "results.json"
    if path.exists() and settings is not None:
        earlier = load_results(path)
        wanted = cache_key(attacks, settings, limit, kwargs.get("surrogate_dir"),
                           kwargs.get("transfer_with", "pgd10"))
        if all(earlier.settings.get(k, "missing") == v for k, v in wanted.items()):
            log.info("reusing %s", path)
            return earlier
    return evaluate_run(run_dir, attacks, settings, limit=limit, **kwargs)
