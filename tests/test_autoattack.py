"""AutoAttack's attacks (APGD, FAB-T, Square): the threat model, the paper's schedules, the
ℓ∞ boundary projection, and, on a small trained digits model, comparisons with IBM ART and
a gradient-masked model."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linprog

from l2lda_tf.attacks import apgd, dlr_loss, fab_targeted, margin, square
from l2lda_tf.attacks.apgd import checkpoints
from l2lda_tf.attacks.fab import project_linf_onto_hyperplane
from l2lda_tf.attacks.square import square_fraction
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


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("epsilon", [0.03, 0.3])
def test_attack_stays_in_threat_model_and_never_helps(name, epsilon):
    model = smooth_classifier(classes=5)
    x, y = batch(n=12, classes=5)
    x_adv = ATTACKS[name](model, x, y, epsilon)
    assert_in_threat_model(x_adv, x, epsilon)
    # The clean input is a candidate: the margin can only grow.
    assert np.all(margin(y, model(x_adv)).numpy() >= margin(y, model(x)).numpy() - 1e-5)


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
