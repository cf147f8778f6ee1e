"""AutoAttack's attacks (APGD, FAB-T, Square): the threat model, the paper's schedules, the
ℓ∞ boundary projection, and, on a small trained digits model, comparisons with IBM ART and
a gradient-masked model."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linprog

from l2lda_tf.attacks import apgd, dlr_loss, fab_targeted, margin, pgd, square
from l2lda_tf.attacks.apgd import checkpoints
from l2lda_tf.attacks.fab import project_linf_onto_hyperplane
from l2lda_tf.attacks.square import square_fraction
from l2lda_tf.models import build_classifier
from tests.test_attacks import assert_in_threat_model, batch, smooth_classifier

EPS = 0.1
ATTACKS = {
    "apgd-ce": lambda m, x, y, eps: apgd(m, x, y, eps, steps=20),
    "apgd-dlr": lambda m, x, y, eps: apgd(m, x, y, eps, loss="dlr", steps=20),
    "apgd-t": lambda m, x, y, eps: apgd(m, x, y, eps, loss="dlr", steps=10, targets=3),
    "apgd-ce-restarts": lambda m, x, y, eps: apgd(m, x, y, eps, steps=10, restarts=2),
    "fab-t": lambda m, x, y, eps: fab_targeted(m, x, y, eps, steps=10, targets=3),
    "square": lambda m, x, y, eps: square(m, x, y, eps, queries=200),
}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow) if name in ("apgd-dlr", "apgd-ce-restarts")
    else name for name in ATTACKS])
def test_attack_stays_in_threat_model_and_never_helps(name, epsilon=0.2):
    model = smooth_classifier(classes=5)
    x, y = batch(n=12, classes=5)
    # Pixels at the box edges too: clipping to [0, 1] must win over the ball.
    x = tf.clip_by_value(1.6 * x - 0.3, 0.0, 1.0)
    x_adv = ATTACKS[name](model, x, y, epsilon)
    assert_in_threat_model(x_adv, x, epsilon)
    # The clean input is a candidate: the margin can only grow.
    assert np.all(margin(y, model(x_adv)).numpy() >= margin(y, model(x)).numpy() - 1e-5)



@pytest.mark.parametrize("name", ["apgd-t", "fab-t", "square"])
def test_attack_takes_a_single_example(name):
    # AutoAttack often leaves one robust point for the later stages: the compiled loops must
    # keep a batch of one's static shape (they failed with "enters the loop with shape (1, …)")
    model = build_classifier("lenet5", 10, (28, 28, 1))
    x = tf.random.stateless_uniform([1, 28, 28, 1], [0, 1])
    y = tf.argmax(model(x), -1)
    assert_in_threat_model(ATTACKS[name](model, x, y, EPS), x, EPS)


@pytest.mark.slow
def test_attacks_work_inside_tf_function():
    model = smooth_classifier(classes=5)
    x, y = batch(n=6, classes=5)
    compiled = tf.function(lambda x, y: apgd(model, x, y, EPS, steps=5, targets=2))
    assert_in_threat_model(compiled(x, y), x, EPS)


def test_apgd_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06): for 100 steps the
    # checks come after 22, 41, 57, 70, 80, 87, 93 and 99 steps, each over the window since.
    schedule = checkpoints(100)
    at = [i + 1 for i, w in enumerate(schedule) if w]
    assert at == [22, 41, 57, 70, 80, 87, 93, 99]
    assert [schedule[i - 1] for i in at] == [22, 19, 16, 13, 10, 7, 6, 6]


def test_dlr_loss_values_and_invariance():
    logits = tf.constant([[4.0, 1.0, 0.0, -1.0, -2.0]])
    y, t = tf.constant([0]), tf.constant([2])
    # Untargeted: −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3) = −3 / 4.
    np.testing.assert_allclose(dlr_loss(y, logits).numpy(), [-0.75], rtol=1e-6)
    # Targeted: −(z_y − z_t) / (z_π1 − (z_π3 + z_π4) / 2) = −4 / 4.5.
    np.testing.assert_allclose(dlr_loss(y, logits, t).numpy(), [-4 / 4.5], rtol=1e-6)
    moved = 3.0 * logits + 7.0
    np.testing.assert_allclose(dlr_loss(y, moved, t).numpy(), dlr_loss(y, logits, t).numpy(),
                               rtol=1e-5)


def test_apgd_refuses_dlr_with_too_few_classes():
    model = smooth_classifier(classes=3)
    x, y = batch(n=2)
    with pytest.raises(ValueError, match="at least 4 classes"):
        apgd(model, x, y, EPS, loss="dlr", targets=1)
    with pytest.raises(ValueError, match="loss must be one of"):
        apgd(model, x, y, EPS, loss="hinge")


def test_square_schedule_halves_p_at_the_papers_milestones():
    fractions = [float(square_fraction(q, 10000, 0.8)) for q in (0, 10, 11, 51, 8001)]
    np.testing.assert_allclose(fractions, [0.8, 0.8, 0.4, 0.2, 0.8 / 512])
    # Rescaled to the budget: 5,000 queries pass the first milestone after 5.
    assert float(square_fraction(6, 5000, 0.8)) == pytest.approx(0.4)


@pytest.mark.parametrize("seed", range(5))
def test_linf_hyperplane_projection_solves_the_linear_program(seed):
    rng = np.random.default_rng(seed)
    n = 6
    points = rng.uniform(size=(2, n)).astype(np.float32)
    w = rng.normal(size=(2, n)).astype(np.float32)
    w[0, 0] = 0.0  # a coordinate the hyperplane ignores must not move
    b = (w * points).sum(1) + 0.3 * rng.normal(size=2).astype(np.float32)  # reachable
    d = project_linf_onto_hyperplane(tf.constant(points), tf.constant(w), tf.constant(b)).numpy()
    for row in range(2):
        # min λ  s.t.  w·d = b − w·t,  −λ ≤ d_i ≤ λ,  0 ≤ t_i + d_i ≤ 1;  variables (d, λ).
        c = np.r_[np.zeros(n), 1.0]
        a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
        bounds = [(-p, 1 - p) for p in points[row]] + [(0, None)]
        lp = linprog(c, A_ub=a_ub, b_ub=np.zeros(2 * n), A_eq=np.r_[w[row], 0.0][None],
                     b_eq=[b[row] - w[row] @ points[row]], bounds=bounds)
        assert lp.status == 0
        np.testing.assert_allclose(np.abs(d[row]).max(), lp.x[-1], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(w[row] @ (points[row] + d[row]), b[row], atol=1e-4)
        assert np.all(points[row] + d[row] >= -1e-6) and np.all(points[row] + d[row] <= 1 + 1e-6)
    assert np.all(d[:, 0][w[:, 0] == 0] == 0)


def test_linf_hyperplane_projection_goes_to_the_nearest_corner_when_out_of_reach():
    points = tf.constant([[0.5, 0.5]])
    d = project_linf_onto_hyperplane(points, tf.constant([[1.0, -1.0]]), tf.constant([5.0]))
    np.testing.assert_allclose(d.numpy(), [[0.5, -0.5]])


# On a small trained digits classifier: the same 200 eval points for every comparison.
@pytest.fixture(scope="module")
def digits_lenet(digits):
    """Plain LeNet-5 trained 5 epochs on digits (97% eval accuracy, ~15 s), and 200 points."""
    from l2lda_tf.models import build_classifier

    keras.utils.set_random_seed(0)
    model = build_classifier("lenet5", digits.num_classes, digits.image_shape)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.fit(digits.train_images / 255.0, digits.train_labels, epochs=5, batch_size=64,
              verbose=0)
    x = tf.constant(digits.eval_images[:200] / 255.0, tf.float32)
    y = tf.constant(digits.eval_labels[:200])
    return model, x, y


def accuracy(model, x_adv, y) -> float:
    return 100.0 * float(np.mean(np.argmax(model(x_adv), -1) == np.asarray(y)))


def art_apgd(model, x, y, epsilon, loss_type):
    """IBM ART's APGD (100 steps, one start, step 2ε as AutoAttack) on the same Keras model."""
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    classifier = TensorFlowV2Classifier(
        model, nb_classes=10, input_shape=tuple(x.shape[1:]), clip_values=(0.0, 1.0),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    attack = AutoProjectedGradientDescent(classifier, eps=epsilon, eps_step=2 * epsilon,
                                          max_iter=100, nb_random_init=1, batch_size=100,
                                          loss_type=loss_type, verbose=False)
    return attack.generate(np.asarray(x), np.eye(10)[np.asarray(y)])


@pytest.mark.slow
@pytest.mark.parametrize("loss, art_loss", [("ce", "cross_entropy"),
                                            ("dlr", "difference_logits_ratio")])
def test_apgd_is_at_least_as_strong_as_arts(digits_lenet, loss, art_loss):
    pytest.importorskip("art")
    model, x, y = digits_lenet
    keras.utils.set_random_seed(1)
    ours = accuracy(model, apgd(model, x, y, EPS, loss=loss, steps=100), y)
    theirs = accuracy(model, tf.constant(art_apgd(model, x, y, EPS, art_loss)), y)
    print(f"APGD-{loss.upper()} at ε = {EPS}: ours {ours:.1f}%, ART {theirs:.1f}%")
    assert ours <= theirs + 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fab-t", "square"])
def test_fab_t_and_square_break_a_plain_model_at_0_3(digits_lenet, name):
    from l2lda_tf.evaluation import standard_attack

    model, x, y = digits_lenet
    keras.utils.set_random_seed(0)
    x_adv = standard_attack(name, model, 0.3, 10)(x[:100], y[:100])
    assert_in_threat_model(x_adv, x[:100], 0.3)
    assert accuracy(model, x_adv, y[:100]) < 5.0


class QuantizedInput(keras.layers.Layer):
    """Rounds pixels to 4 grey levels with a zero gradient (0·x + stop_gradient(round)): the
    classic gradient masking that fools gradient attacks but not score-based ones."""

    def call(self, x):
        return 0.0 * x + tf.stop_gradient(tf.round(x * 3.0) / 3.0)


@pytest.mark.slow
def test_square_breaks_what_pgd_cannot_on_a_gradient_masked_model(digits_lenet):
    model, x, y = digits_lenet
    masked = keras.Sequential([keras.layers.Input(x.shape[1:]), QuantizedInput(), model])
    x, y = x[:100], y[:100]
    keras.utils.set_random_seed(0)
    clean = accuracy(masked, x, y)
    with_pgd = accuracy(masked, pgd(masked, x, y, 0.3, steps=100, step_size=0.3 / 12), y)
    with_square = accuracy(masked, square(masked, x, y, 0.3, queries=5000), y)
    print(f"masked model at ε = 0.3: clean {clean:.0f}%, PGD-100 {with_pgd:.0f}%, "
          f"Square {with_square:.0f}%")
    assert with_pgd > 50.0 and with_square < 10.0
