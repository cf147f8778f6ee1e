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


class MeanThreshold:
    """Class 0 when an image's mean pixel is above 0.5, else class 1: attacks are easy to fake."""

    def __call__(self, x, training=False):
        centred = 10.0 * (tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2, 3]) - 0.5)
        return tf.stack([centred, -centred], axis=1)


def test_autoattack_runs_each_attack_only_on_the_points_still_robust():
    from l2lda_tf.evaluation import STAGES, AutoAttack

    model, eps = MeanThreshold(), 0.2
    # Example i carries its index in a corner pixel; all start correctly classified (class 0).
    x = np.full((6, 4, 4, 1), 0.6, np.float32)
    x[:, 0, 0, 0] = np.arange(6) / 10.0
    x, y = tf.constant(x), tf.constant(np.zeros(6, np.int64))
    breaks = {"apgd-ce": {0, 1}, "apgd-t": {2}, "fab-t": set(), "square": {5}}
    seen = {}

    def fake(stage):
        def attack(x_sub, y_sub):
            index = np.round(x_sub.numpy()[:, 0, 0, 0] * 10).astype(int)
            seen[stage] = sorted(index)
            hit = np.isin(index, list(breaks[stage]))[:, None, None, None]
            return tf.where(hit, x_sub - eps, x_sub)  # mean 0.4: class 1
        return attack

    autoattack = AutoAttack(model, eps, num_classes=2)
    autoattack.attacks = {stage: fake(stage) for stage in STAGES}
    x_adv = autoattack(x, y)
    assert seen == {"apgd-ce": [0, 1, 2, 3, 4, 5], "apgd-t": [2, 3, 4, 5], "fab-t": [3, 4, 5],
                    "square": [3, 4, 5]}
    robust = {stage: list(np.flatnonzero(v[0])) for stage, v in autoattack.stages.items()}
    assert robust == {"apgd-ce": [2, 3, 4, 5], "apgd-t": [3, 4, 5], "fab-t": [3, 4, 5],
                      "square": [3, 4]}
    np.testing.assert_array_equal(np.argmax(model(x_adv), 1), [1, 1, 1, 0, 0, 1])
    assert set(autoattack.stage_seconds) == set(STAGES)


def test_autoattack_is_the_headline_and_enters_min_and_worst_case(tmp_path):
    columns = {"natural": [1, 1, 1, 1, 0], "pgd10": [1, 1, 1, 0, 0],
               "autoattack": [1, 0, 1, 0, 0]}
    stages = {"apgd-ce": [1, 1, 1, 0, 0], "apgd-t": [1, 0, 1, 0, 0], "fab-t": [1, 0, 1, 0, 0],
              "square": [1, 0, 1, 0, 0]}
    outcome = BatteryOutcome({k: np.array(v, bool) for k, v in columns.items()},
                             {"pgd10": 1.0, "autoattack": 4.0}, 5,
                             {k: np.array(v, bool) for k, v in stages.items()},
                             dict.fromkeys(stages, 1.0))
    r = Results.from_outcome("L2L-DA", "runs/x", 0.1, outcome, {}, {})
    acc = r.accuracies()
    assert acc["AutoAttack"] == acc["Min"] == acc["Worst-case"] == 40.0
    assert r.headline() == ("AutoAttack", 40.0)
    assert r.stage_accuracies() == {"apgd-ce": 60.0, "apgd-t": 40.0, "fab-t": 40.0,
                                    "square": 40.0}
    write_results([r], tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["robust_accuracy"] == 40.0 and metrics["robust_attack"] == "AutoAttack"
    report = (tmp_path / "results.md").read_text()
    assert "| after APGD-CE | + APGD-T | + FAB-T | + Square |" in report
    assert "AutoAttack: FAB-T" in report
    assert load_results(tmp_path / "results.json").stages == r.stages


def tiny_keras(softmax: bool):
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.layers.Input((28, 28, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(10, activation="softmax" if softmax else None)])


def test_load_classifier_detects_and_checks_logits_or_probabilities(tmp_path):
    from l2lda_tf.evaluation import load_classifier
    from l2lda_tf.export import export_classifier

    sample = np.random.default_rng(0).uniform(size=(8, 28, 28, 1)).astype(np.float32)
    for softmax in (False, True):
        model = tiny_keras(softmax)
        model.save(tmp_path / f"m{softmax}.keras")
        loaded = load_classifier(tmp_path / f"m{softmax}.keras", sample)
        assert loaded.output == ("probabilities" if softmax else "logits")
        # Log-probabilities are logits of the same softmax.
        np.testing.assert_allclose(tf.nn.softmax(loaded(sample)), tf.nn.softmax(
            model(sample) if not softmax else tf.math.log(model(sample))), atol=1e-5)
    with pytest.raises(ValueError, match="declared to output probabilities"):
        load_classifier(tmp_path / "mFalse.keras", sample, "probabilities")
    export_classifier(tiny_keras(False), (28, 28, 1), tmp_path / "saved")  # softmax outputs
    saved = load_classifier(tmp_path / "saved", sample)
    assert saved.output == "probabilities"
    np.testing.assert_array_equal(np.argmax(saved(sample), 1),
                                  np.argmax(tiny_keras(False)(sample), 1))
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "missing.keras", sample)
    with pytest.raises(ValueError, match="neither a .keras file nor a SavedModel"):
        load_classifier(tmp_path, sample)


class Noisy(MeanThreshold):
    def __call__(self, x, training=False):
        return super().__call__(x) + tf.random.normal([tf.shape(x)[0], 2])


class ZeroGradient(MeanThreshold):
    def __call__(self, x, training=False):
        return super().__call__(0.0 * x + tf.stop_gradient(tf.round(x)))


def test_sanity_checks_flag_randomness_zero_gradients_and_a_pgd_gap():
    from l2lda_tf.evaluation import sanity_warnings

    x = tf.constant(np.full((4, 4, 4, 1), 0.6, np.float32))
    y = tf.constant(np.zeros(4, np.int64))
    assert sanity_warnings(MeanThreshold(), x, y, {"PGD10": 44.0, "AutoAttack": 40.0}) == []
    assert "randomized" in " ".join(sanity_warnings(Noisy(), x, y, {}))
    assert "zero input gradient on 100.0%" in " ".join(sanity_warnings(ZeroGradient(), x, y, {}))
    gap = sanity_warnings(MeanThreshold(), x, y, {"PGD10": 44.0, "AutoAttack": 37.8})
    assert len(gap) == 1 and "6.2 points" in gap[0] and "gradient masking" in gap[0]
    square = sanity_warnings(MeanThreshold(), x, y, {}, {"fab-t": 40.0, "square": 38.0})
    assert len(square) == 1 and "Square" in square[0]


def test_evaluate_any_keras_model_from_the_command_line(tmp_path, capsys):
    from training.evaluate import main as evaluate

    tiny_keras(False).save(tmp_path / "net.keras")
    args = ["--model", str(tmp_path / "net.keras"), "--dataset", "digits", "--limit", "20",
            "--batch-size", "10", "--attacks", "pgd3,apgd-ce", "--verbose", "0"]
    assert evaluate(args) == 2
    assert "--model needs --dataset and --epsilon" in capsys.readouterr().err
    assert evaluate([*args, "--epsilon", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "assuming it returns logits" in out and "robust accuracy" in out
    metrics = json.loads((tmp_path / "net-eval" / "metrics.json").read_text())
    assert metrics["images"] == 20 and metrics["robust_attack"] == "Min"
    assert set(metrics["accuracy"]) == {"Natural", "PGD3", "APGD-CE", "Min", "Worst-case"}
