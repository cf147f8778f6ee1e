import dataclasses

import pytest

from l2lda_tf.config import (
    DEFENSE_OVERRIDES,
    DEFENSES,
    PRESETS,
    ConfigError,
    TrainConfig,
    field_types,
    preset,
    step_budget,
)

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("field,value,problem", [
    ("f_lr", INF, "must be a finite number, got inf"),
    ("lam", NAN, "must be a finite number, got nan"),
    ("lam", -1, "must be in [0, ∞), got -1"),
    ("f_lr", -1.0, "must be in (0, ∞), got -1.0"),
    ("g_lr", 0.0, "must be in (0, ∞), got 0.0"),
    ("epsilon_warmup_epochs", -3, "must be in [0, ∞), got -3"),
    ("seed", -1, "must be in [0, 2147483647], got -1"),
    ("seed", 2**31, "must be in [0, 2147483647]"),
    ("epsilon", 0.0, "must be in (0, 1], got 0.0"),
    ("epsilon", 1.5, "must be in (0, 1], got 1.5"),
    ("momentum", 1.0, "must be in [0, 1), got 1.0"),
    ("clean_share", 1.0, "must be in [0, 1), got 1.0"),
    ("lr_decay", 0.0, "must be in (0, 1]"),
    ("lr_decay_step", -1, "must be in [0, ∞), got -1"),
    ("clip_norm", 0.0, "must be in (0, ∞)"),
    ("weight_decay", -INF, "must be a finite number"),
    ("batch_size", 0, "must be in [1, ∞), got 0"),
    ("epochs", 2.5, "must be an integer, got 2.5"),
    ("epochs", True, "must be an integer, got True"),
    ("steps_per_epoch", 0, "must be in [1, ∞)"),
    ("eval_pgd_steps", 0, "must be in [1, ∞)"),
    ("lam", "0.1", "must be a number, got '0.1'"),
    ("classifier", "", "must be a non-empty string"),
])
def test_bad_values_are_refused_naming_the_field(field, value, problem):
    with pytest.raises(ConfigError) as error:
        preset("digits", **{field: value})
    assert error.value.field == field and error.value.problem.startswith(problem)
    assert str(error.value).startswith(f"{field} {problem}")


@pytest.mark.parametrize("field,value", [
    ("epsilon", 1.0), ("lam", 0.0), ("lam", 1), ("clean_share", 0.0), ("momentum", 0.0),
    ("lr_decay", 1.0), ("lr_decay_step", 0), ("lr_decay_step", None), ("noise_dim", 0),
    ("seed", 0), ("seed", 2**31 - 1), ("weight_decay", 0.0), ("steps_per_epoch", None),
])
def test_values_at_the_edges_of_their_range_are_accepted(field, value):
    config = dataclasses.replace(preset("digits"), **{field: value})
    assert getattr(config, field) == value


def test_every_numeric_field_refuses_non_finite_values():
    # a field added without a range or a finiteness check fails here
    for field, kind in field_types().items():
        if kind in (int, float):
            for value in (NAN, INF):
                with pytest.raises(ConfigError, match=field):
                    preset("digits", **{field: value})


def test_unknown_dataset_and_defense():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        preset("svhn")
    with pytest.raises(ConfigError, match="defense must be one of plain, pgd, l2l, l2lda, got "
                       "'fgsm'"):
        preset("mnist", "fgsm")


def test_defense_overrides_apply_and_explicit_values_win():
    for (dataset, defense), fields in DEFENSE_OVERRIDES.items():
        config = preset(dataset, defense)
        assert {k: getattr(config, k) for k in fields} == fields
        assert config.defense == defense
    # an explicit value beats the defense's override; None keeps the preset
    assert preset("mnist", "pgd", clean_share=0.2).clean_share == 0.2
    assert preset("mnist", "pgd", clean_share=None).clean_share == 0.5
    assert preset("digits", lam=None).lam == PRESETS["digits"].lam


def test_every_preset_and_defense_is_valid_and_round_trips_through_json():
    for dataset in PRESETS:
        for defense in DEFENSES:
            config = preset(dataset, defense)
            assert TrainConfig.from_json(config.to_json()) == config
    config = preset("cifar10")
    assert config.differences(dataclasses.replace(config, lam=1.0)) == {"lam": (0.5, 1.0)}


def test_a_tampered_config_json_is_refused():
    text = preset("digits").to_json().replace('"lam": 0.02', '"lam": NaN')
    with pytest.raises(ConfigError, match="lam must be a finite number"):
        TrainConfig.from_json(text)


def test_decay_step():
    config = preset("mnist")  # None: half of the run
    assert config.decay_step(100) == 50
    assert dataclasses.replace(config, lr_decay_step=0).decay_step(100) == 0
    assert dataclasses.replace(config, lr_decay_step=30).decay_step(100) == 30


def test_every_field_has_a_help_line():
    for field in dataclasses.fields(TrainConfig):
        assert field.metadata.get("help"), f"{field.name} has no help line"


@pytest.mark.parametrize("steps,train,batch,expected", [
    (3, 1438, 50, {"steps_per_epoch": 3, "epochs": 1}),
    (60, 1438, 50, {"steps_per_epoch": 28, "epochs": 3}),
    (56, 1438, 50, {"steps_per_epoch": 28, "epochs": 2}),
    (5, 10, 50, {"steps_per_epoch": 1, "epochs": 5}),
])
def test_step_budget(steps, train, batch, expected):
    budget = step_budget(steps, train, batch)
    assert budget == expected
    assert budget["epochs"] * budget["steps_per_epoch"] >= steps


def test_step_budget_must_be_positive():
    with pytest.raises(ValueError, match="total number of steps must be a positive integer"):
        step_budget(0, 100, 10)
