import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from l2lda_tf import tuning
from l2lda_tf.config import TrainConfig
from l2lda_tf.tuning import (
    LAMBDA_RANGE,
    DefenseTuner,
    build_oracle,
    objective_value,
    run_search,
    search_space,
    trial_config,
    validation_dataset,
)
from l2lda_tf.tuning.search import check_settings
from training.tune import main

REPO = Path(__file__).resolve().parents[1]
# the smallest L2L-DA run: 2 unrolled steps, PGD-2 evaluation, one epoch of batches of 8
TINY = {"unroll_steps": 2, "eval_pgd_steps": 2, "batch_size": 8, "epochs": 1,
        "epsilon_warmup_epochs": 0}
TINY_FLAGS = ["--unroll-steps", "2", "--eval-pgd-steps", "2", "--batch-size", "8",
              "--epsilon-warmup-epochs", "0", "--steps", "2", "--verbose", "0"]


def tiny_config(**overrides) -> TrainConfig:
    return TrainConfig(dataset="tiny", classifier="lenet5", defense="l2lda",
                       **{**TINY, **overrides})


def rows_of(path: Path) -> list[list[str]]:
    """The body rows of trials.md, as lists of cells."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")][1:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


class CountingTrain:
    """Wraps `experiment.train` as the tuner calls it, counting calls; `fail_first` calls raise."""

    def __init__(self, monkeypatch, fail_first: int = 0):
        self.real, self.calls, self.fail_first = tuning.tuner.train, [], fail_first
        monkeypatch.setattr(tuning.tuner, "train", self)

    def __call__(self, config, out_dir, **kwargs):
        self.calls.append(config)
        if len(self.calls) <= self.fail_first:
            raise RuntimeError("simulated crash in training")
        return self.real(config, out_dir, **kwargs)


def test_validation_split_comes_from_training_and_never_from_eval(tiny_dataset):
    split = validation_dataset(tiny_dataset, 0.25, seed=3)
    assert (len(split.train_labels), len(split.eval_labels)) == (30, 10)

    def rows(images):
        return {image.tobytes() for image in images}

    train, val = rows(tiny_dataset.train_images), rows(split.eval_images)
    assert val <= train and rows(split.train_images) == train - val
    assert not val & rows(tiny_dataset.eval_images)
    again = validation_dataset(tiny_dataset, 0.25, seed=3)
    np.testing.assert_array_equal(again.eval_images, split.eval_images)
    with pytest.raises(ValueError, match="validation share must be in"):
        validation_dataset(tiny_dataset, 1.0, seed=0)
    with pytest.raises(ValueError, match="leaves 0 for validation"):
        validation_dataset(tiny_dataset, 0.01, seed=0)


def test_objective_ranks_pgd_accuracy_first_then_clean_accuracy():
    n = 144
    assert objective_value(51 / n, 0.0, n) > objective_value(50 / n, 1.0, n)
    assert objective_value(50 / n, 0.9, n) > objective_value(50 / n, 0.8, n)


def test_search_space_and_trial_configs():
    space = search_space("l2lda")
    (lam,) = space.space
    assert (lam.name, lam.min_value, lam.max_value, lam.sampling) == ("lam", *LAMBDA_RANGE, "log")
    assert [hp.name for hp in search_space("l2lda", tune_rates=True).space] == [
        "lam", "f_lr", "g_lr"]
    assert [hp.name for hp in search_space("pgd", tune_rates=True).space] == ["f_lr"]
    with pytest.raises(ValueError, match="nothing to tune for defense 'pgd'"):
        search_space("pgd")
    with pytest.raises(ValueError, match="unknown tuner 'grid'"):
        build_oracle("grid", space, max_trials=2, max_epochs=1, seed=1)
    config = trial_config(tiny_config(), {"lam": 0.5, "tuner/epochs": 3, "tuner/round": 1})
    assert (config.lam, config.epochs, config.g_lr) == (0.5, 3, 0.01)


def test_changed_settings_are_refused_but_more_trials_extend(tmp_path):
    settings = {"config": {"epochs": 1, "lam": 0.02}, "tuner": "random", "max_trials": 2}
    check_settings(tmp_path, settings)
    check_settings(tmp_path, {**settings, "max_trials": 5})
    with pytest.raises(ValueError, match=r"config.epochs: saved 1, now 2.*tuner: saved"):
        check_settings(tmp_path, {**settings, "config": {"epochs": 2, "lam": 0.02},
                                  "tuner": "bayesian"})


@pytest.mark.slow
def test_two_trial_search_writes_best_and_resumes_without_repeating(tiny_dataset, tmp_path,
                                                                    monkeypatch):
    train = CountingTrain(monkeypatch)
    args = dict(tuner="random", max_trials=2, validation_share=0.25, verbose=0)
    best = run_search(tiny_config(), tiny_dataset, tmp_path, **args)
    assert len(train.calls) == 2

    saved = json.loads((tmp_path / "best.json").read_text())
    assert saved == best
    assert LAMBDA_RANGE[0] <= best["lam"] <= LAMBDA_RANGE[1]
    assert best["config"]["lam"] == best["lam"] and best["tuned"] == ["lam"]
    assert best["objective"] == pytest.approx(
        objective_value(best["pgd2_acc"], best["clean_acc"], 10))
    rows = rows_of(tmp_path / "trials.md")
    assert [row[1] for row in rows] == ["COMPLETED", "COMPLETED"]
    assert max(float(row[8]) for row in rows) == pytest.approx(best["objective"], abs=1e-6)
    assert sorted(row[2] for row in rows) == sorted(f"{call.lam:.4g}" for call in train.calls)
    for trial in ("0", "1"):
        assert list((tmp_path / "hparams" / f"trial_{trial}").glob("events.out.tfevents.*"))
        assert (tmp_path / "search" / f"trial_{trial}" / "run" / "metrics.json").exists()

    run_search(tiny_config(), tiny_dataset, tmp_path, **args)
    assert len(train.calls) == 2, "a rerun of a finished search trained again"
    oracle = build_oracle("random", search_space("l2lda"), 2, 1, seed=1)
    tuner = DefenseTuner(oracle, tiny_config(), tiny_dataset, tmp_path, ["lam"])
    (classifier,) = tuner.get_best_models(1)
    assert classifier(tiny_dataset.eval_images[:2] / 255.0).shape == (2, 3)

    run_search(tiny_config(), tiny_dataset, tmp_path, **{**args, "max_trials": 3})
    assert len(train.calls) == 3
    assert len({call.lam for call in train.calls}) == 3
    assert len(rows_of(tmp_path / "trials.md")) == 3


@pytest.mark.slow
def test_a_crashed_trial_is_reported_and_the_search_goes_on(tiny_dataset, tmp_path,
                                                            monkeypatch):
    CountingTrain(monkeypatch, fail_first=1)
    best = run_search(tiny_config(), tiny_dataset, tmp_path, tuner="random", max_trials=2,
                      validation_share=0.25, verbose=0)
    rows = rows_of(tmp_path / "trials.md")
    assert [row[1] for row in rows] == ["FAILED", "COMPLETED"]
    assert "RuntimeError: simulated crash in training" in rows[0][-1]
    assert best["trial_id"] == "1"


def test_consecutive_crashes_stop_the_search(tiny_dataset, tmp_path, monkeypatch):
    CountingTrain(monkeypatch, fail_first=10)
    with pytest.raises(RuntimeError, match="consecutive failures exceeded"):
        run_search(tiny_config(), tiny_dataset, tmp_path, tuner="bayesian", max_trials=5,
                   validation_share=0.25, verbose=0)
    assert [row[1] for row in rows_of(tmp_path / "trials.md")] == ["FAILED"] * 3
    assert not (tmp_path / "best.json").exists()


def test_cli_reports_bad_flag_combinations(tmp_path, capsys):
    out = str(tmp_path / "search")
    assert main(["--defense", "pgd", "--out", out]) == 2
    assert "nothing to tune for defense 'pgd'" in capsys.readouterr().err
    assert main(["--tune-rates", "--g-lr", "0.1", "--out", out]) == 2
    assert "drop --g-lr and --f-lr" in capsys.readouterr().err


def test_cli_help_lists_exactly_the_options_it_has(capsys):
    import dataclasses

    from l2lda_tf.cli import flag_name
    from training.tune import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m training.tune")
    assert "--lambda" not in text  # λ is searched, never set
    for field in dataclasses.fields(TrainConfig):
        if field.name not in ("dataset", "defense", "lam"):
            assert flag_name(field.name) in text
    # each option the help names is accepted
    args = parse_args(["--out", "x", "--unroll-steps", "3", "--g-lr", "0.5", "--seed", "4"])
    assert (args.unroll_steps, args.g_lr, args.seed) == (3, 0.5, 4)
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--lambda", "0.1"])
    assert "unrecognized arguments: --lambda" in capsys.readouterr().err


def test_cli_refuses_bad_values_before_writing(tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["--f-lr", "nan", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "error: --f-lr must be a finite number, got nan\n"
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["--steps", "4", "--epochs", "2", "--out", str(out)])
    assert "drop --epochs" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_trains_the_best_values_on_the_full_training_split(tmp_path, monkeypatch, digits):
    seen = []
    real_train = tuning.search.train

    def spy(config, out_dir, dataset=None, **kwargs):
        seen.append((config, dataset))
        return real_train(config, out_dir, dataset=dataset, **kwargs)

    monkeypatch.setattr(tuning.search, "train", spy)
    out = tmp_path / "search"
    code = main(["--dataset", "digits", "--tuner", "random", "--max-trials", "1",
                 "--train-best", "--out", str(out), *TINY_FLAGS])
    assert code == 0
    best = json.loads((out / "best.json").read_text())
    ((config, dataset),) = seen
    assert config.lam == best["lam"] and config.steps_per_epoch == 2
    assert len(dataset.train_labels) == len(digits.train_labels)
    np.testing.assert_array_equal(dataset.eval_labels, digits.eval_labels)
    assert best["validation_examples"] == round(0.1 * len(digits.train_labels))
    metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert metrics["steps"] == 2
    assert (out / "best" / "export" / "classifier" / "1" / "saved_model.pb").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_chief_and_a_worker_complete_a_search_together(tmp_path, monkeypatch):
    out = tmp_path / "search"
    command = [sys.executable, "-m", "training.tune", "--dataset", "digits", "--tuner",
               "random", "--max-trials", "2", "--out", str(out), *TINY_FLAGS]
    base_env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1",
                "KERASTUNER_ORACLE_PORT": str(free_port()), "TF_CPP_MIN_LOG_LEVEL": "2"}
    processes, logs = {}, {}
    try:
        for role in ("chief", "tuner0"):
            logs[role] = tmp_path / f"{role}.log"
            with open(logs[role], "w") as log:
                processes[role] = subprocess.Popen(
                    command, cwd=REPO, env={**base_env, "KERASTUNER_TUNER_ID": role},
                    stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        for process in processes.values():
            process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    outputs = {role: path.read_text() for role, path in logs.items()}
    for role, process in processes.items():
        assert process.returncode == 0, f"{role} failed:\n{outputs[role][-3000:]}"
    assert "best: lam=" in outputs["chief"]
    assert [row[1] for row in rows_of(out / "trials.md")] == ["COMPLETED", "COMPLETED"]
    best = json.loads((out / "best.json").read_text())
    assert best["trials"] == {"completed": 2, "total": 2}
    # the worker saves its state when it ends a trial; the chief only served the oracle
    assert (out / "search" / "tuner0.json").exists()
    for trial in ("0", "1"):
        assert (out / "search" / f"trial_{trial}" / "run" / "metrics.json").exists()

    # the finished search resumes without the chief: nothing left to run
    train = CountingTrain(monkeypatch)
    assert main(command[3:]) == 0
    assert train.calls == []
