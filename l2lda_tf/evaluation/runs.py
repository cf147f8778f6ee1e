"""Evaluating a training run directory under the attack battery (what `training.evaluate`
does), with reuse of an earlier evaluation made with the same settings."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from l2lda_tf.data import ImageDataset, load_dataset
from l2lda_tf.evaluation.battery import (
    AttackSettings,
    build_attack,
    run_battery,
    transfer_attack,
)
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
    run_dir/eval/results.{json,csv,md} and TensorBoard summaries in run_dir/eval/logs."""
    run_dir = Path(run_dir)
    trainer = load_run(run_dir)
    config = trainer.config
    settings = settings or settings_from_config(config)
    dataset = dataset or load_dataset(config.dataset, data_dir)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    images, labels = dataset.eval_images[:limit], dataset.eval_labels[:limit]

    built, setup_seconds = {}, {}
    for name in attacks:
        began = time.perf_counter()
        built[name] = build_attack(name, trainer.classifier, dataset, settings,
                                   getattr(trainer, "generator", None), verbose)
        setup_seconds[name] = time.perf_counter() - began
        log.info("%s: built %s in %.1f s", run_dir, name, setup_seconds[name])
    surrogate_name = None
    if surrogate_dir is not None:
        surrogate_name = f"transfer-{transfer_with}"
        surrogate = load_run(surrogate_dir).classifier
        built[surrogate_name] = transfer_attack(transfer_with, surrogate, trainer.classifier,
                                                settings)
    outcome = run_battery(trainer.classifier, built, images, labels, settings.epsilon,
                          settings.batch_size)
    recorded = {**dataclasses.asdict(settings), "attacks": attacks, "limit": limit,
                "surrogate": str(surrogate_dir) if surrogate_dir else None,
                "transfer_with": transfer_with if surrogate_dir else None}
    results = Results.from_outcome(defense_label(config), str(run_dir), settings.epsilon,
                                   outcome, setup_seconds, recorded)
    write_results([results], run_dir / "eval")
    return results


def evaluate_or_reuse(run_dir: str | Path, attacks: list[str], settings: AttackSettings | None,
                      limit: int | None, **kwargs) -> Results:
    """An earlier run_dir/eval/results.json if made with the same attacks, limit and settings;
    otherwise a fresh `evaluate_run`."""
    path = Path(run_dir) / "eval" / "results.json"
    if path.exists() and settings is not None:
        earlier = load_results(path)
        wanted = {**dataclasses.asdict(settings), "attacks": attacks, "limit": limit}
        if all(earlier.settings.get(k) == v for k, v in wanted.items()):
            log.info("reusing %s", path)
            return earlier
    return evaluate_run(run_dir, attacks, settings, limit=limit, **kwargs)
