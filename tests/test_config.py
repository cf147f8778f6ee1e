import dataclasses

import pytest

from l2lda_tf.config import PRESETS, TrainConfig, preset, step_budget


@pytest.mark.parametrize("dataset,classifier,epsilon,lam,g_lr,f_lr,gamma", [
    ("mnist", "lenet5", 0.3, 0.02, 0.01, 0.01, 0.1),
    ("cifar10", "resnet20", 8 / 255, 0.5, 0.01, 0.01, 0.1),
    ("tiny_imagenet", "resnet18", 8 / 255, 0.3, 0.025, 0.005, 0.3),
])
def test_presets_are_the_papers_settings(dataset, classifier, epsilon, lam, g_lr, f_lr, gamma):
    config = preset(dataset)
    assert (config.classifier, config.epsilon, config.lam, config.g_lr, config.f_lr,
            config.lr_decay) == (classifier, epsilon, lam, g_lr, f_lr, gamma)
    assert (config.unroll_steps, config.alpha, config.noise_dim) == (10, 0.25, 8)
    assert (config.momentum, config.weight_decay, config.clip_norm) == (0.9, 1e-5, 1.0)
    assert config.epsilon_warmup_epochs == 0 and config.clean_share == 0  # L2L-DA as specified


def test_mnist_warmups():
    assert preset("mnist").clean_warmup_steps == 1000
    pgd = preset("mnist", "pgd")
    assert (pgd.clean_share, pgd.epsilon_warmup_epochs) == (0.5, 10)
    assert preset("mnist", "plain").clean_warmup_steps == 0


def test_flags_override_and_none_keeps_the_preset():
    config = preset("digits", "pgd", lam=0.5, epochs=None)
    assert config.lam == 0.5 and config.epochs == PRESETS["digits"].epochs
    assert config.defense == "pgd"


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        preset("svhn")
    with pytest.raises(ValueError, match="unknown defense 'fgsm'"):
        preset("mnist", "fgsm")
    with pytest.raises(ValueError, match="clean_share must be in"):
        preset("mnist", clean_share=1.0)


def test_json_round_trip_and_differences():
    config = preset("cifar10")
    assert TrainConfig.from_json(config.to_json()) == config
    other = dataclasses.replace(config, lam=1.0)
    assert config.differences(other) == {"lam": (0.5, 1.0)}


@pytest.mark.parametrize("steps,train,batch,expected", [
    (3, 1438, 50, {"steps_per_epoch": 3, "epochs": 1}),
    (60, 1438, 50, {"steps_per_epoch": 28, "epochs": 3}),
    (56, 1438, 50, {"steps_per_epoch": 28, "epochs": 2}),
    (5, 10, 50, {"steps_per_epoch": 1, "epochs": 5}),
])
def test_step_budget(steps, train, batch, expected):
    assert step_budget(steps, train, batch) == expected


def test_step_budget_must_be_positive():
    with pytest.raises(ValueError, match="--steps must be positive"):
        step_budget(0, 100, 10)
