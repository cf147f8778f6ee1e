"""Results tables, the threat-model guard of the battery, the diversity figure and the
`training.evaluate` / `training.visualize` commands end to end."""

import json

import numpy as np
import pytest
import tensorflow as tf

from l2lda_tf.evaluation import (
    AttackSettings,
    BatteryOutcome,
    Results,
    diversity_grid,
    load_results,
    markdown_table,
    noise_diversity,
    parse_attacks,
    run_battery,
    save_png,
    write_results,
)


def results(defense="PGD10", columns=None):
    columns = columns or {"natural": [1, 1, 1, 1, 0], "fgsm": [1, 1, 0, 1, 0],
                          "pgd10": [1, 0, 1, 1, 0]}
    outcome = BatteryOutcome({k: np.array(v, bool) for k, v in columns.items()},
                             {k: 0.5 for k in columns if k != "natural"}, 5)
    return Results.from_outcome(defense, "runs/x", 0.3, outcome, {"fgsm": 0.0}, {})


def test_min_is_the_lowest_column_and_worst_case_is_per_example():
    acc = results().accuracies()
    assert list(acc) == ["Natural", "FGSM", "PGD10", "Min", "Worst-case"]
    assert (acc["Natural"], acc["FGSM"], acc["PGD10"]) == (80.0, 60.0, 60.0)
    assert acc["Min"] == 60.0
    assert acc["Worst-case"] == 40.0  # examples 0 and 3 survive both attacks


def test_transfer_columns_are_shown_but_not_in_min_or_worst_case():
    acc = results(columns={"natural": [1, 1], "fgsm": [1, 0], "transfer-pgd10": [0, 0]})
    acc = acc.accuracies()
    assert acc["Transfer-PGD10"] == 0.0 and acc["Min"] == 50.0 and acc["Worst-case"] == 50.0


def test_results_round_trip_and_files(tmp_path):
    rows = [results("Plain"), results("L2L-DA")]
    write_results(rows[:1], tmp_path / "one")
    again = load_results(tmp_path / "one" / "results.json")
    assert again.accuracies() == rows[0].accuracies()
    assert again.seconds_per_1000() == {"FGSM": 100.0, "PGD10": 100.0}
    csv_lines = (tmp_path / "one" / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "defense,Natural,FGSM,PGD10,Min,Worst-case"
    assert csv_lines[1] == "Plain,80.00,60.00,60.00,60.00,40.00"
    assert list((tmp_path / "one" / "logs").glob("events.out.tfevents.*"))

    write_results(rows, tmp_path / "table", name="table")
    table = (tmp_path / "table" / "table.md").read_text()
    assert "| Plain | 80.00 |" in table and "| L2L-DA | 80.00 |" in table
    assert len(json.loads((tmp_path / "table" / "table.json").read_text())) == 2


def test_table_aligns_defenses_evaluated_with_different_attacks():
    other = results("L2L-DA", {"natural": [1, 0], "gap": [0, 0]})
    header = markdown_table([results(), other]).splitlines()[0]
    assert header == "| defense | Natural | FGSM | PGD10 | GAP | Min | Worst-case |"


def test_attack_names_are_validated():
    assert parse_attacks("fgsm, pgd7,cw3,l2lda") == ["fgsm", "pgd7", "cw3", "l2lda"]
    for bad in ("pgd", "pgd0", "deepfool", "fgsm,fgsm", ""):
        with pytest.raises(ValueError):
            parse_attacks(bad)


def test_battery_rejects_an_attack_that_leaves_the_ball():
    import keras

    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    images = np.full((3, 4, 4, 1), 128, np.uint8)
    labels = np.zeros(3, np.int64)
    with pytest.raises(RuntimeError, match="too_far left the threat model"):
        run_battery(model, {"too_far": lambda x, y: x + 0.2}, images, labels, epsilon=0.1)
    with pytest.raises(RuntimeError, match="expected"):
        run_battery(model, {"wrong_dtype": lambda x, y: tf.cast(x, tf.float16)}, images,
                    labels, epsilon=0.1)
    outcome = run_battery(model, {"identity": lambda x, y: x}, images, labels, 0.1, 2)
    np.testing.assert_array_equal(outcome.correct["identity"], outcome.correct["natural"])


def test_evaluate_or_reuse_reuses_only_a_matching_evaluation(tmp_path, monkeypatch):
    from l2lda_tf.evaluation import cache_key, evaluate_or_reuse
    from l2lda_tf.evaluation import runs as runs_module

    fresh = []
    monkeypatch.setattr(runs_module, "evaluate_run",
                        lambda *args, **kwargs: fresh.append(kwargs) or "fresh")
    settings, attacks = AttackSettings(epsilon=0.3), ["fgsm", "pgd10"]

    def cache(**key_options):
        earlier = results()
        earlier.settings = cache_key(attacks, settings, 5, **key_options)
        write_results([earlier], tmp_path / "eval")

    cache()
    assert isinstance(evaluate_or_reuse(tmp_path, attacks, settings, 5), Results)
    assert not fresh
    # Any difference in what was run means a fresh evaluation, the surrogate included: a cached
    # row without a Transfer column must not stand in for one with it.
    assert evaluate_or_reuse(tmp_path, attacks, settings, 5, surrogate_dir="plain") == "fresh"
    assert evaluate_or_reuse(tmp_path, ["fgsm"], settings, 5) == "fresh"
    assert evaluate_or_reuse(tmp_path, attacks, settings, None) == "fresh"
    assert evaluate_or_reuse(tmp_path, attacks, AttackSettings(epsilon=0.2), 5) == "fresh"
    cache(surrogate_dir="plain", transfer_with="pgd10")
    assert evaluate_or_reuse(tmp_path, attacks, settings, 5, surrogate_dir="plain",
                             transfer_with="fgsm") == "fresh"
    assert isinstance(evaluate_or_reuse(tmp_path, attacks, settings, 5, surrogate_dir="plain",
                                        transfer_with="pgd10"), Results)
    # A row written before the surrogate was recorded is not reused for a transfer request.
    earlier = results()
    earlier.settings = {k: v for k, v in cache_key(attacks, settings, 5).items()
                        if k not in ("surrogate", "transfer_with")}
    write_results([earlier], tmp_path / "eval")
    assert evaluate_or_reuse(tmp_path, attacks, settings, 5, surrogate_dir="plain") == "fresh"
    assert len(fresh) == 6


def test_settings_are_checked():
    with pytest.raises(ValueError, match="epsilon"):
        AttackSettings(epsilon=0.0)
    with pytest.raises(ValueError, match="must be positive"):
        AttackSettings(epsilon=0.1, samples=0)


def test_diversity_is_mean_pairwise_l1_between_noises():
    deltas = np.zeros((3, 2, 2, 2, 1), np.float32)
    deltas[1] += 0.3  # sample 1 differs by 0.3 everywhere from samples 0 and 2
    assert noise_diversity(deltas) == pytest.approx((0.3 + 0.0 + 0.3) / 3)
    with pytest.raises(ValueError, match="two noise samples"):
        noise_diversity(deltas[:1])


def test_grid_shows_zero_noise_as_mid_grey(tmp_path):
    adversarial = np.ones((4, 3, 5, 5, 1), np.float32)  # S = 4 noises, 3 classes
    grid = diversity_grid(adversarial, np.zeros_like(adversarial), 0.3, pad=2, scale=1)
    assert grid.shape == (3 * 7 + 2, 2 * 4 * 7 + 6 + 2, 1) and grid.dtype == np.uint8
    right = grid[2:7, 2 + 4 * 7 + 6:2 + 4 * 7 + 6 + 5, 0]  # first noise cell
    assert np.all(right == 128)
    from PIL import Image

    path = save_png(grid, tmp_path / "fig.png")
    assert Image.open(path).size == (grid.shape[1], grid.shape[0])


@pytest.mark.slow
def test_evaluate_and_visualize_commands_end_to_end(tmp_path, capsys):
    from l2lda_tf.config import preset
    from l2lda_tf.experiment import train
    from training.evaluate import main as evaluate
    from training.visualize import main as visualize

    runs = {}
    for defense in ("plain", "l2lda"):
        config = preset("digits", defense, batch_size=8, epochs=1, steps_per_epoch=3,
                        eval_pgd_steps=2, unroll_steps=2, pgd_steps=2, epsilon_warmup_epochs=0)
        runs[defense] = tmp_path / defense
        train(config, runs[defense], verbose=0)
    common = ["--limit", "20", "--batch-size", "10", "--attack-train-steps", "2",
              "--l2lda-steps", "2", "--samples", "2"]
    code = evaluate(["--run", str(runs["l2lda"]), "--attacks", "fgsm,pgd3,l2lda",
                     "--surrogate", str(runs["plain"]), *common])
    assert code == 0
    saved = json.loads((runs["l2lda"] / "eval" / "results.json").read_text())
    assert saved["images"] == 20 and saved["defense"] == "L2L-DA"
    assert set(saved["accuracy"]) == {"Natural", "FGSM", "PGD3", "L2L-DA", "Transfer-PGD10",
                                      "Min", "Worst-case"}
    assert saved["accuracy"]["Min"] <= saved["accuracy"]["Natural"]

    code = evaluate(["--runs", str(runs["plain"]), str(runs["l2lda"]), "--out",
                     str(tmp_path / "table"), "--attacks", "fgsm,pgd3", *common])
    assert code == 0
    table = (tmp_path / "table" / "table.md").read_text()
    assert "| Plain |" in table and "| L2L-DA |" in table

    code = visualize(["--run", str(runs["l2lda"]), "--samples", "3", "--images", "10",
                      "--out", str(tmp_path / "div.png")])
    assert code == 0 and (tmp_path / "div.png").exists()
    assert "diversity=" in capsys.readouterr().out
    assert visualize(["--run", str(runs["plain"]), "--out", str(tmp_path / "x.png")]) == 2
    assert "no generator" in capsys.readouterr().err
