"""The attack battery: threat-model properties on random inputs, strength ordering on a small
trained LeNet-5, and agreement with CleverHans' TF2 attacks."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2lda_tf.attacks import (
    GAP,
    AdvGAN,
    L2LDAAttack,
    cw_linf,
    fgsm,
    margin,
    transfer,
    unrolled_attack,
)
from l2lda_tf.evaluation import AttackSettings, gradient_attack
from l2lda_tf.models import NoiseGenerator, build_classifier


def small_classifier(shape=(8, 8, 1), classes=3, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.layers.Input(shape), keras.layers.Flatten(),
                             keras.layers.Dense(16, activation="tanh"),
                             keras.layers.Dense(classes)])


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model(x, training=False).numpy(), -1) == np.asarray(y)))


def assert_valid_attack(model, x_adv, x, y, epsilon):
    """In the ε-ball and [0, 1], same shape and dtype, no more accurate than on clean x."""
    x_adv, x_np = np.asarray(x_adv), np.asarray(x)
    assert x_adv.shape == x_np.shape and x_adv.dtype == x_np.dtype
    assert np.abs(x_adv - x_np).max() <= epsilon + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert accuracy(model, x_adv, y) <= accuracy(model, x, y)


MODEL = small_classifier()


@pytest.mark.parametrize("name", ["fgsm", "pgd5", "pgd20", "cw10"])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), epsilon=st.floats(0.01, 0.5), n=st.integers(1, 9))
def test_gradient_attacks_stay_in_threat_model_and_never_help(name, seed, epsilon, n):
    rng = np.random.default_rng(seed)
    # Pixels at the box edges too: clipping to [0, 1] must win over the ball.
    x = tf.constant(np.clip(rng.uniform(-0.3, 1.3, (n, 8, 8, 1)), 0, 1).astype(np.float32))
    y = tf.constant(rng.integers(0, 3, n))
    attack = gradient_attack(name, MODEL, AttackSettings(epsilon=epsilon))
    assert_valid_attack(MODEL, attack(x, y), x, y, epsilon)


def test_trained_attacks_stay_in_threat_model_and_never_help(digits_small):
    images, labels = digits_small
    model = small_classifier((12, 12, 1), classes=3)
    x, y = tf.constant(images[:16] / 255.0, tf.float32), tf.constant(labels[:16])
    epsilon = 0.3
    attackers = [AdvGAN(model, (12, 12, 1), epsilon), GAP(model, (12, 12, 1), epsilon),
                 L2LDAAttack(model, (12, 12, 1), 3, epsilon, samples=2, unroll_steps=2)]
    for attacker in attackers:
        attacker.compile()
        attacker.train_on(images, labels, steps=2, batch_size=8)
        assert_valid_attack(model, attacker.attack(x, y), x, y, epsilon)


@pytest.fixture
def digits_small():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (24, 12, 12, 1), dtype=np.uint8),
            rng.integers(0, 3, 24).astype(np.int64))


def test_l2lda_attack_copies_the_run_generator_and_counts_every_sample():
    model = small_classifier((12, 12, 1), classes=3)
    generator = NoiseGenerator(1, num_classes=3, name="run_generator")
    generator(tf.zeros([1, 12, 12, 3]), tf.zeros([1], tf.int32), tf.zeros([1, 8]))
    samples, eps = 4, 0.2
    attacker = L2LDAAttack(model, (12, 12, 1), 3, eps, generator=generator, samples=samples,
                           unroll_steps=2, seed=3)
    for mine, theirs in zip(attacker.generator.get_weights(), generator.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    assert attacker.generator is not generator
    rng = np.random.default_rng(1)
    x = tf.constant(rng.uniform(size=(16, 12, 12, 1)).astype(np.float32))
    y = tf.constant(rng.integers(0, 3, 16))
    # Replay the attack's S noise draws to get each sample's x_T and margin.
    replay = tf.random.Generator.from_state(attacker.rng.state.numpy(), attacker.rng.algorithm)
    per_sample = np.stack([margin(y, model(unrolled_attack(
        model, attacker.generator, x, y, replay.normal([16, 8]), eps, steps=2).images[-1])).numpy()
        for _ in range(samples)])
    returned = margin(y, model(attacker.attack(x, y))).numpy()
    # Robust only if every sample fails: the returned image is the worst of the S samples
    # (and of the clean image), so it beats the first sample alone somewhere.
    expected = np.maximum(per_sample.max(0), margin(y, model(x)).numpy())
    np.testing.assert_allclose(returned, expected, rtol=1e-5, atol=1e-5)
    assert np.any(expected > per_sample[0] + 1e-4)


def test_transfer_uses_the_surrogates_gradients():
    target, surrogate = small_classifier(seed=0), small_classifier(seed=1)
    rng = np.random.default_rng(2)
    x = tf.constant(rng.uniform(size=(32, 8, 8, 1)).astype(np.float32))
    y = tf.constant(rng.integers(0, 3, 32))
    x_adv = transfer(fgsm, surrogate, target, x, y, epsilon=0.2)
    assert_valid_attack(target, x_adv, x, y, 0.2)
    crafted = fgsm(surrogate, x, y, 0.2).numpy()
    changed = np.any(np.asarray(x_adv) != np.asarray(x), axis=(1, 2, 3))
    np.testing.assert_array_equal(np.asarray(x_adv)[changed], crafted[changed])


def test_gap_log_loss_stays_finite_for_a_confident_classifier():
    from l2lda_tf.attacks.gap import log_cross_entropy
    from l2lda_tf.attacks.utils import cross_entropy

    logits = tf.constant([[30.0, 0.0, -1.0], [1.0, 2.0, 0.5], [0.0, 50.0, 0.0]])
    labels = tf.constant([0, 1, 0])
    ours = log_cross_entropy(labels, logits).numpy()
    assert np.all(np.isfinite(ours)) and ours[0] < -29  # float32 CE is exactly 0 there
    np.testing.assert_allclose(ours[1:], np.log(cross_entropy(labels, logits).numpy()[1:]),
                               rtol=1e-5)


def test_attack_arguments_are_checked():
    with pytest.raises(ValueError, match="epsilon must be in"):
        GAP(MODEL, (8, 8, 1), 1.5)
    with pytest.raises(ValueError, match="samples and unroll_steps"):
        L2LDAAttack(MODEL, (8, 8, 1), 3, 0.1, samples=0)


# Strength on a LeNet-5 trained on scikit-learn's real digits (28×28), ε = 0.1 (the preset).
EPS = 0.1
N_EVAL = 200


@pytest.fixture(scope="module")
def lenet(digits):
    keras.utils.set_random_seed(0)
    model = build_classifier("lenet5", digits.num_classes, digits.image_shape)
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.train_images / 255.0, digits.train_labels, epochs=6, batch_size=64,
              verbose=0)
    x = tf.constant(digits.eval_images[:N_EVAL] / 255.0, tf.float32)
    y = tf.constant(digits.eval_labels[:N_EVAL])
    assert accuracy(model, x, y) > 0.9
    return model, x, y


def attacked_accuracy(name, model, x, y, epsilon=EPS, seed=0):
    tf.random.set_seed(seed)
    x_adv = gradient_attack(name, model, AttackSettings(epsilon=epsilon))(x, y)
    assert_valid_attack(model, x_adv, x, y, epsilon)
    return accuracy(model, x_adv, y)


def test_more_iterations_are_at_least_as_strong(lenet):
    model, x, y = lenet
    acc = {name: attacked_accuracy(name, model, x, y)
           for name in ("fgsm", "pgd10", "pgd100", "cw100", "cw1000")}
    noise = 1.5 / N_EVAL  # one or two examples of random-start luck
    assert acc["pgd10"] <= acc["fgsm"]
    assert acc["pgd100"] <= acc["pgd10"] + noise
    assert acc["cw1000"] <= acc["cw100"] + noise
    assert acc["pgd10"] < accuracy(model, x, y) - 0.3  # the attacks do bite at ε = 0.1


def test_plain_model_falls_below_five_percent_under_pgd10_at_0_3(lenet):
    model, x, y = lenet
    assert attacked_accuracy("pgd10", model, x, y, epsilon=0.3) < 0.05


def test_fgsm_and_pgd_match_or_beat_cleverhans(lenet):
    from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    model, x, y = lenet
    theirs = fast_gradient_method(model, x, EPS, np.inf, clip_min=0.0, clip_max=1.0, y=y)
    ours = fgsm(model, x, y, EPS)
    # Ours returns the clean image where the step would help the model, CleverHans' step
    # everywhere else: the same image.
    stepped = np.any(ours.numpy() != x.numpy(), axis=(1, 2, 3))
    assert stepped.mean() > 0.8
    np.testing.assert_allclose(ours.numpy()[stepped], theirs.numpy()[stepped], atol=1e-6)
    assert accuracy(model, ours, y) <= accuracy(model, theirs, y)

    for steps, step_size in ((10, EPS / 4), (100, EPS / 12)):
        tf.random.set_seed(0)
        theirs = projected_gradient_descent(model, x, EPS, step_size, steps, np.inf,
                                            clip_min=0.0, clip_max=1.0, y=y, rand_init=True,
                                            sanity_checks=False)
        assert accuracy(model, theirs, y) >= attacked_accuracy(f"pgd{steps}", model, x, y)


def test_cw_keeps_each_examples_most_damaging_iterate(lenet):
    model, x, y = lenet
    clean = margin(y, model(x)).numpy()
    short = margin(y, model(cw_linf(model, x, y, EPS, steps=5))).numpy()
    assert np.all(short >= clean - 1e-5)
    # The margin loss stops at κ = 0: examples fooled stay fooled as k grows.
    longer = margin(y, model(cw_linf(model, x, y, EPS, steps=50))).numpy()
    assert np.all((longer > 0) | (short <= 0))
