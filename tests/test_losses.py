import numpy as np
import tensorflow as tf

from l2lda_tf.losses import pairwise_diversity


def paired(images_a, images_b, z_a, z_b):
    return tf.concat([images_a, images_b], 0), tf.concat([z_a, z_b], 0)


def test_diversity_is_zero_for_identical_noise_and_outputs():
    x = tf.random.uniform([3, 6, 6, 1], seed=0)
    z = tf.random.normal([3, 8], seed=1)
    np.testing.assert_allclose(pairwise_diversity(*paired(x, x, z, z)).numpy(), 0.0)


def test_diversity_grows_with_output_difference():
    x = tf.random.uniform([3, 6, 6, 1], seed=0)
    z_a, z_b = tf.random.normal([3, 8], seed=1), tf.random.normal([3, 8], seed=2)
    values = [pairwise_diversity(*paired(x, x + shift, z_a, z_b)).numpy()
              for shift in (0.01, 0.05, 0.2)]
    assert np.all(values[0] < values[1]) and np.all(values[1] < values[2])


def test_diversity_matches_its_definition():
    x_a, x_b = tf.zeros([1, 2, 2, 1]), tf.fill([1, 2, 2, 1], 0.5)
    z_a, z_b = tf.zeros([1, 4]), tf.fill([1, 4], 2.0)
    # mean|x_a − x_b| = 0.5, mean|z_a − z_b| = 2 → 0.25
    np.testing.assert_allclose(pairwise_diversity(*paired(x_a, x_b, z_a, z_b)).numpy(), [0.25],
                               rtol=1e-6)
