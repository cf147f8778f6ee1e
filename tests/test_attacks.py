import keras
import numpy as np
import pytest
import tensorflow as tf

from l2lda_tf.attacks import (
    cross_entropy,
    margin,
    normalize_gradient,
    pgd,
    project,
    unrolled_attack,
)
from l2lda_tf.models import NoiseGenerator


def smooth_classifier(shape=(8, 8, 1), classes=3, seed=0):
    """A tiny classifier with non-zero second derivatives (tanh), for gradient-flow tests."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.layers.Input(shape), keras.layers.Flatten(),
                              keras.layers.Dense(16, activation="tanh"),
                              keras.layers.Dense(classes)])
    return model


def batch(shape=(8, 8, 1), n=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.uniform(size=(n, *shape)).astype(np.float32)),
            tf.constant(rng.integers(0, classes, n)))


def assert_in_threat_model(x_adv, x, epsilon):
    x_adv, x = np.asarray(x_adv), np.asarray(x)
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    assert np.abs(x_adv - x).max() <= epsilon + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_project_clips_to_ball_and_box():
    x = tf.constant([[0.0, 0.5, 1.0]])
    out = project(tf.constant([[-1.0, 0.9, 2.0]]), x, 0.3).numpy()
    np.testing.assert_allclose(out, [[0.0, 0.8, 1.0]])


def test_normalize_gradient_is_per_example_and_channel():
    g = tf.random.normal([3, 5, 5, 2], seed=0) * tf.constant([1.0, 100.0])
    norms = tf.sqrt(tf.reduce_sum(tf.square(normalize_gradient(g)), axis=[1, 2]))
    np.testing.assert_allclose(norms.numpy(), 1.0, rtol=1e-5)
    assert np.all(normalize_gradient(tf.zeros([1, 2, 2, 1])).numpy() == 0)


def test_margin_is_positive_exactly_when_misclassified():
    logits = tf.constant([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    np.testing.assert_allclose(margin(tf.constant([0, 0]), logits).numpy(), [-2.0, 2.0])


@pytest.mark.parametrize("keep_best", [True, False])
def test_pgd_stays_in_threat_model_and_raises_loss(keep_best):
    model = smooth_classifier()
    x, y = batch(n=16)
    x_adv = pgd(model, x, y, 0.1, steps=10, keep_best=keep_best)
    assert_in_threat_model(x_adv, x, 0.1)
    clean = cross_entropy(y, model(x)).numpy().mean()
    assert cross_entropy(y, model(x_adv)).numpy().mean() > clean


def test_pgd_keeps_each_examples_most_damaging_iterate():
    model = smooth_classifier()
    x, y = batch(n=16)
    options = dict(step_size=0.15)  # large steps, so iterates overshoot and margins oscillate

    def run(steps, keep_best):
        tf.random.set_seed(1)  # the same random start every time
        return margin(y, model(pgd(model, x, y, 0.2, steps=steps, keep_best=keep_best,
                                   **options))).numpy()

    iterates = np.stack([run(k, keep_best=False) for k in range(6)])  # x_0 … x_5
    np.testing.assert_allclose(run(5, keep_best=True), iterates.max(0), rtol=1e-5, atol=1e-6)
    assert np.any(iterates.max(0) > iterates[-1] + 1e-4)  # the last iterate is not always best


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_unrolled_attack_stays_in_threat_model_at_every_step(shape):
    classifier = smooth_classifier(shape)
    generator = NoiseGenerator(shape[-1], num_classes=3)
    x, y = batch(shape)
    unroll = unrolled_attack(classifier, generator, x, y, tf.random.normal([4, 8]), 0.05,
                             steps=4, training=True)
    assert len(unroll.images) == len(unroll.losses) == 4
    for x_t in unroll.images:
        assert_in_threat_model(x_t, x, 0.05)


class ProbeGenerator:
    """o_t = tanh(w_t · (x ‖ δ ‖ ∇̃) summed over channels): one weight vector per step, so
    gradients can be traced to the step that used them. `replay` swaps in recorded ∇̃ values
    as constants, giving by construction the gradient that treats ∇̃ as an input."""

    noise_dim = 0

    def __init__(self, steps, channels=1):
        self.weights = [tf.Variable(tf.fill([3 * channels], 0.3 + 0.1 * t)) for t in range(steps)]
        self.calls, self.recorded, self.replay = 0, [], False

    def __call__(self, features, labels, noise, training=None):
        t, self.calls = self.calls, self.calls + 1
        c = features.shape[-1] // 3
        if self.replay:
            features = tf.concat([features[..., : 2 * c], self.recorded[t]], axis=-1)
        else:
            self.recorded.append(tf.constant(features[..., 2 * c:]))
        return tf.tanh(tf.reduce_sum(features * self.weights[t], axis=-1, keepdims=True) * 5.0)


def unroll_loss_and_gradient(classifier, probe, x, y):
    """Σ_t mean CE of a 3-step unroll (ε = 0.3) and its gradient in the probe's weights."""
    with tf.GradientTape() as tape:
        unroll = unrolled_attack(classifier, probe, x, y, None, 0.3, steps=3, training=True)
        loss = tf.add_n([tf.reduce_mean(loss) for loss in unroll.losses])
    return loss, tape.gradient(loss, probe.weights)


def test_generator_gradient_flows_through_delta_across_steps():
    classifier = smooth_classifier()
    x, y = batch()
    probe = ProbeGenerator(steps=3)
    with tf.GradientTape() as tape:
        unroll = unrolled_attack(classifier, probe, x, y, None, 0.3, steps=3, training=True)
        last_step_loss = tf.reduce_mean(unroll.losses[-1])
    first_step_weights_gradient = tape.gradient(last_step_loss, probe.weights[0])
    # The loss at x_3 depends on the weights used at step 0 only through δ_1 → δ_2 → δ_3.
    assert first_step_weights_gradient is not None
    assert np.abs(first_step_weights_gradient.numpy()).max() > 1e-6


def test_generator_gradient_is_not_taken_through_the_input_gradient():
    classifier = smooth_classifier()
    x, y = batch()
    probe = ProbeGenerator(steps=3)
    loss, ours = unroll_loss_and_gradient(classifier, probe, x, y)

    probe.calls, probe.replay = 0, True
    replay_loss, constant_input = unroll_loss_and_gradient(classifier, probe, x, y)

    np.testing.assert_allclose(loss.numpy(), replay_loss.numpy(), rtol=1e-6)
    for a, b in zip(ours, constant_input):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7)

    # And the check has teeth: differentiating through ∇ would change the gradient.
    probe.calls, probe.replay, probe.recorded = 0, False, []
    with tf.GradientTape() as tape:
        delta, grads_through = tf.zeros_like(x), []
        x_t = x
        for _ in range(3):
            with tf.GradientTape() as inner:
                inner.watch(x_t)
                ce = cross_entropy(y, classifier(x_t))
            gradient = inner.gradient(ce, x_t)  # no stop_gradient
            feats = tf.concat([x, delta, normalize_gradient(gradient)], -1)
            delta = tf.clip_by_value(delta + 0.25 * 0.3 * probe(feats, y, None), -0.3, 0.3)
            x_t = tf.clip_by_value(x + delta, 0, 1)
            grads_through.append(tf.reduce_mean(cross_entropy(y, classifier(x_t))))
        second_order_loss = tf.add_n(grads_through)
    second_order = tape.gradient(second_order_loss, probe.weights)
    assert any(not np.allclose(a.numpy(), b.numpy(), rtol=1e-3)
               for a, b in zip(ours, second_order))


def test_generator_gradient_equals_differentiating_through_the_classifier():
    # the unroll backpropagates into x_t with the ∇_t it computed; written naively, the same
    # loss differentiated through f at every step must give the same gradient
    classifier = smooth_classifier()
    x, y = batch()
    probe = ProbeGenerator(steps=3)
    loss, ours = unroll_loss_and_gradient(classifier, probe, x, y)

    probe.calls, probe.replay = 0, True
    with tf.GradientTape() as tape:
        delta, naive_loss = tf.zeros_like(x), 0.0
        for _ in range(3):
            step = probe(tf.concat([x, delta, tf.zeros_like(x)], axis=-1), y, None)
            delta = tf.clip_by_value(delta + 0.25 * 0.3 * step, -0.3, 0.3)
            logits = classifier(tf.clip_by_value(x + delta, 0.0, 1.0), training=False)
            naive_loss += tf.reduce_mean(cross_entropy(y, logits))
    naive = tape.gradient(naive_loss, probe.weights)

    np.testing.assert_allclose(loss.numpy(), naive_loss.numpy(), rtol=1e-6)
    for a, b in zip(ours, naive, strict=True):
        assert np.abs(b.numpy()).max() > 1e-6
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7)


def test_recomputation_gives_the_same_gradients_and_updates_batch_norm_once():
    classifier = smooth_classifier((8, 8, 1))
    keras.utils.set_random_seed(3)
    generator = NoiseGenerator(1, num_classes=3, noise_dim=4)
    x, y = batch((8, 8, 1))
    noise = tf.random.normal([4, 4])
    generator(tf.zeros([1, 8, 8, 3]), tf.zeros([1], tf.int32), tf.zeros([1, 4]))
    initial = generator.get_weights()

    @tf.function
    def gradients(recompute):
        with tf.GradientTape() as tape:
            unroll = unrolled_attack(classifier, generator, x, y, noise, 0.1, steps=3,
                                     training=True, recompute=recompute)
            loss = tf.add_n([tf.reduce_sum(loss) for loss in unroll.losses])
        return loss, tape.gradient(loss, generator.trainable_variables)

    results = {}
    for recompute in (False, True):
        generator.set_weights(initial)
        loss, grads = gradients(recompute)
        # non-trainable weights: the batch-norm moving statistics, updated once per step
        results[recompute] = (loss.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads],
                              [w.numpy() for w in generator.non_trainable_weights])
    (loss, grads, stats), (loss_r, grads_r, stats_r) = results[False], results[True]
    np.testing.assert_allclose(loss, loss_r, rtol=1e-6)
    for a, b in zip(grads, grads_r, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert stats and any(np.abs(s - i).max() > 1e-6 for s, i in zip(
        stats, [w for w, v in zip(initial, generator.weights) if not v.trainable]))
    for a, b in zip(stats, stats_r, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
