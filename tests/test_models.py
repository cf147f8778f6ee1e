import keras
import numpy as np
import pytest
import tensorflow as tf

from l2lda_tf.models import (
    ConditionalBatchNormalization,
    NoiseGenerator,
    build_classifier,
)


def generator_inputs(shape, batch=2, noise_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    h, w, c = shape
    features = tf.constant(rng.normal(size=(batch, h, w, 3 * c)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 10, batch))
    noise = tf.constant(rng.normal(size=(batch, noise_dim)).astype(np.float32))
    return features, labels, noise


CONVS = (keras.layers.Conv2D, keras.layers.Conv2DTranspose)


def test_generator_layers_follow_the_specification():
    generator = NoiseGenerator(channels=3, num_classes=10)
    generator(*generator_inputs((32, 32, 3)))
    convs = [(layer.name, type(layer).__name__, layer.filters, layer.kernel_size, layer.strides)
             for layer in generator.layers if isinstance(layer, CONVS)]
    assert convs == [
        ("conv1", "Conv2D", 64, (3, 3), (1, 1)),
        ("conv2", "Conv2D", 64, (4, 4), (2, 2)),
        ("conv3", "Conv2D", 128, (4, 4), (2, 2)),
        ("deconv1", "Conv2DTranspose", 64, (4, 4), (2, 2)),
        ("deconv2", "Conv2DTranspose", 64, (4, 4), (2, 2)),
        ("out_conv", "Conv2D", 3, (3, 3), (1, 1)),
    ]
    assert all(not layer.use_bias for layer in generator.layers if isinstance(layer, CONVS))
    norms = [layer.name for layer in generator.layers
             if isinstance(layer, ConditionalBatchNormalization)]
    assert norms == ["norm2", "norm_up1", "norm_up2"]
    # z̃ is concatenated before each down convolution: 3C + d, then 64 + d twice.
    assert [generator.get_layer(n).kernel.shape[2] for n in ("conv1", "conv2", "conv3")] == [
        9 + 8, 64 + 8, 64 + 8]
    # the deconvolutions see the skips: 64 (deconv1 out) + 64 (skip2) into deconv2, etc.
    assert generator.get_layer("deconv2").kernel.shape[3] == 64 + 64
    assert generator.get_layer("out_conv").kernel.shape[2] == 64 + 64
    assert [generator.get_layer(n).units for n in ("z_dense1", "z_dense2")] == [8, 8]


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (64, 64, 3)])
def test_generator_output_shape_and_range(shape):
    generator = NoiseGenerator(channels=shape[-1], num_classes=10)
    out = generator(*generator_inputs(shape), training=True)
    assert out.shape == (2, *shape)
    assert np.all(np.abs(out.numpy()) <= 1.0)


def test_generator_initialisation():
    generator = NoiseGenerator(channels=1, num_classes=10)
    generator(*generator_inputs((28, 28, 1)))
    kernel = generator.get_layer("conv2").kernel.numpy()
    assert abs(kernel.mean()) < 0.002 and abs(kernel.std() - 0.02) < 0.002
    dense = generator.get_layer("z_dense1")
    assert np.all(dense.bias.numpy() == 0)
    limit = np.sqrt(6 / (8 + 8))  # Glorot-uniform bound for 8 → 8
    assert np.abs(dense.kernel.numpy()).max() <= limit


def test_generator_noise_changes_output_and_l2l_variant_needs_none():
    generator = NoiseGenerator(channels=1, num_classes=10)
    features, labels, noise = generator_inputs((28, 28, 1))
    a = generator(features, labels, noise)
    b = generator(features, labels, noise + 1.0)
    assert not np.allclose(a, b)
    l2l = NoiseGenerator(channels=1, num_classes=None, noise_dim=0)
    assert l2l(features, None, None).shape == (2, 28, 28, 1)
    with pytest.raises(ValueError, match="noise"):
        generator(features, labels, None)


def test_conditional_batch_norm_uses_the_label():
    layer = ConditionalBatchNormalization(num_classes=4)
    x = tf.random.normal([6, 5, 5, 3], seed=1)
    out_0 = layer(x, tf.zeros([6], tf.int32), training=True)
    out_1 = layer(x, tf.ones([6], tf.int32), training=True)
    assert not np.allclose(out_0, out_1)
    # γ_y, β_y really are per class: shifting β of class 2 moves only class-2 examples.
    layer.beta.assign(tf.tensor_scatter_nd_update(layer.beta, [[2]], [[5.0, 5.0, 5.0]]))
    labels = tf.constant([0, 2, 0, 2, 1, 3])
    out = layer(x, labels, training=True).numpy()
    before = layer(x, tf.constant([0, 0, 0, 0, 1, 3]), training=True).numpy()
    np.testing.assert_allclose(out[[0, 2, 4, 5]], before[[0, 2, 4, 5]], atol=1e-5)
    gamma_ratio = (layer.gamma[2] / layer.gamma[0]).numpy()
    np.testing.assert_allclose(out[1], before[1] * gamma_ratio + 5.0, atol=1e-4)


def test_conditional_batch_norm_has_no_affine_of_its_own_and_serializes():
    layer = ConditionalBatchNormalization(num_classes=3)
    layer(tf.zeros([2, 4, 4, 2]), tf.constant([0, 1]))
    assert sorted(w.name for w in layer.trainable_weights) == ["beta", "gamma"]
    clone = ConditionalBatchNormalization.from_config(layer.get_config())
    assert clone.num_classes == 3


def test_generator_config_round_trip():
    generator = NoiseGenerator(channels=3, num_classes=200, noise_dim=8)
    clone = NoiseGenerator.from_config(generator.get_config())
    assert (clone.channels, clone.num_classes, clone.noise_dim) == (3, 200, 8)


@pytest.mark.parametrize("name,shape,classes,params", [
    ("lenet5", (28, 28, 1), 10, 61_706),
    ("resnet20", (32, 32, 3), 10, 269_722),  # He et al.'s 0.27M
    ("resnet18", (64, 64, 3), 200, 11_271_432),
])
def test_classifiers(name, shape, classes, params):
    model = build_classifier(name, classes, shape)
    x = tf.random.uniform([2, *shape])
    assert model(x).shape == (2, classes)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == params
    clone = type(model).from_config(model.get_config())
    assert clone(x).shape == (2, classes)


def test_classifier_normalizes_inside():
    model = build_classifier("lenet5", 10, (28, 28, 1))
    normalized = model.normalize(tf.fill([1, 28, 28, 1], 0.1307))
    np.testing.assert_allclose(normalized.numpy(), 0.0, atol=1e-6)


def test_unknown_classifier():
    with pytest.raises(ValueError, match="unknown classifier 'vgg'"):
        build_classifier("vgg", 10, (32, 32, 3))
