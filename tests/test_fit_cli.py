import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from l2lda_tf.cli import flag_name, wants_tensorflow_logs
from l2lda_tf.config import TrainConfig
from training.fit import main, parse_args

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_dataset_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "imagenet", "--out", "x"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err


def test_missing_data_directory(tmp_path, capsys):
    code = main(["--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--out",
                 str(tmp_path / "run")])
    assert code == 2
    assert "does not exist; put t10k-images-idx3-ubyte.gz" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["--dataset", "mnist", "--data-dir", str(afile), "--out",
                 str(tmp_path / "run")]) == 2
    assert "is a file; give the folder holding" in capsys.readouterr().err


def test_steps_run_end_to_end_and_flags_override_the_preset(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--dataset", "digits", "--defense", "pgd", "--steps", "3", "--batch-size", "16",
                 "--lambda", "0.5", "--epsilon", "0.05", "--eval-pgd-steps", "2", "--seed", "7",
                 "--verbose", "0", "--out", str(out)])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["lam"], config["epsilon"], config["seed"]) == (0.5, 0.05, 7)
    assert config["clean_share"] == 0.5  # the pgd preset for digits
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3
    assert "pgd2_acc=" in capsys.readouterr().out


@pytest.mark.parametrize("flag,value,message", [
    ("--epsilon", "2", "--epsilon must be in (0, 1], got 2.0"),
    ("--f-lr", "inf", "--f-lr must be a finite number, got inf"),
    ("--lambda", "nan", "--lambda must be a finite number, got nan"),
    ("--lambda", "-1", "--lambda must be in [0, ∞), got -1.0"),
    ("--f-lr", "-1", "--f-lr must be in (0, ∞), got -1.0"),
    ("--epsilon-warmup-epochs", "-3", "--epsilon-warmup-epochs must be in [0, ∞), got -3"),
    ("--seed", "-1", "--seed must be in [0, 2147483647], got -1"),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, capsys, flag, value,
                                                            message):
    out = tmp_path / "run"
    assert main(["--dataset", "digits", flag, value, "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not out.exists()  # so the corrected command starts afresh


def test_steps_and_epochs_together_are_an_error(capsys):
    for extra in (["--epochs", "3"], ["--steps-per-epoch", "4"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["--steps", "10", *extra, "--out", "x"])
        assert exit_info.value.code == 2
        assert f"--steps sets the number of epochs and steps per epoch; drop {extra[0]}" in \
            capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--steps", "0", "--out", "x"])
    assert "--steps must be a positive integer" in capsys.readouterr().err


def test_every_config_field_is_a_flag_with_help(capsys):
    # derived from the dataclass: a new field gets a flag, and a flag's value reaches it
    values = {"classifier": "resnet20", "lr_decay_step": 7, "steps_per_epoch": 3}
    argv = ["--out", "x"]
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("dataset", "defense"):
            continue
        value = values.get(field.name, 3 if field.type in ("int", "int | None") else 0.125)
        values[field.name] = value
        argv += [flag_name(field.name), str(value)]
    args = parse_args(argv)
    assert {field: getattr(args, field) for field in values} == values
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m training.fit")
    assert "--lambda X λ, weight of the diversity term (preset: digits 0.02, mnist 0.02, " \
        "cifar10 0.5, tiny_imagenet 0.3)" in " ".join(text.split())
    assert "--f-lr X" in text and "--g-lr X" in text and "--steps N" in text
    options = [line.split()[0] for line in text.splitlines() if line.startswith("  --")]
    assert len(options) >= len(dataclasses.fields(TrainConfig)) - 2 + 10
    for line in text.splitlines():  # every option has a help line
        if line.startswith("  --") and len(line.split()) <= 2:
            following = text.splitlines()[text.splitlines().index(line) + 1]
            assert following.startswith(" " * 10), f"{line.strip()} has no help"


def test_verbose_levels_that_bring_tensorflow_logs_back():
    assert not wants_tensorflow_logs([])
    assert not wants_tensorflow_logs(["--verbose", "2", "--out", "x"])
    assert not wants_tensorflow_logs(["--verbose=0"])
    assert wants_tensorflow_logs(["--verbose", "3"])
    assert wants_tensorflow_logs(["--verbose=3"])
    assert wants_tensorflow_logs(["--run", "r", "--verbose"])  # a bare flag (other tools)
    assert wants_tensorflow_logs(["--verbose", "--run", "r"])


def run_cli(*argv, env_extra=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_start_up_is_quiet_unless_verbose():
    quiet = run_cli("training.fit", "--lambda", "-1", "--out", "x")
    assert quiet.returncode == 2
    assert quiet.stderr == "error: --lambda must be in [0, ∞), got -1.0\n"
    loud = run_cli("training.fit", "--lambda", "-1", "--verbose", "3", "--out", "x")
    assert loud.returncode == 2
    assert "absl::InitializeLog" in loud.stderr or "cuda" in loud.stderr.lower()


NOT_ALARMING = ("device: ", "precision: ", "Epoch ")


@pytest.mark.slow
def test_a_training_run_prints_nothing_alarming(tmp_path):
    result = run_cli("training.fit", "--dataset", "digits", "--defense", "l2lda", "--steps",
                     "2", "--batch-size", "16", "--unroll-steps", "2", "--eval-pgd-steps", "1",
                     "--verbose", "2", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    unexpected = [line for line in lines if not line.startswith(NOT_ALARMING)
                  and not line.lstrip().startswith(("1/1", "2/2"))]
    assert not unexpected, "\n".join(unexpected)
    assert "clean_acc=" in result.stdout


def test_speed_options_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    code = main(["--dataset", "digits", "--defense", "l2lda", "--steps", "2", "--batch-size", "8",
                 "--eval-pgd-steps", "1", "--mixed-precision", "mixed_bfloat16", "--recompute",
                 "--strategy", "one_device", "--verbose", "0", "--out", str(out)])
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    # a run may resume under another precision: the checkpoint holds float32 variables
    assert main(["--dataset", "digits", "--defense", "l2lda", "--steps", "2", "--batch-size", "8",
                 "--eval-pgd-steps", "1", "--precision", "float32", "--verbose", "0",
                 "--out", str(out)]) == 0
