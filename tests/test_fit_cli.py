import json

import pytest

from training.fit import main


def test_unknown_dataset_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "imagenet", "--out", "x"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err


def test_missing_data_directory(tmp_path, capsys):
    code = main(["--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--out",
                 str(tmp_path / "run")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


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


def test_bad_flag_values_are_reported(tmp_path, capsys):
    code = main(["--dataset", "digits", "--epsilon", "2", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "epsilon must be in (0, 1]" in capsys.readouterr().err


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
