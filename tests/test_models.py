import keras
import numpy as np
import pytest
import tensorflow as tf

from l2lda_tf.models import (
    ConditionalBatchNormalization,
    NoiseGenerator,
    build_classifier,
    build_noise_generator,
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
    gamma = layer.gamma.numpy() + layer.gamma_shared.numpy()
    np.testing.assert_allclose(out[1], before[1] * gamma[2] / gamma[0] + 5.0, atol=1e-4)


def test_conditional_batch_norm_adds_a_shared_row_to_each_class_row():
    layer = ConditionalBatchNormalization(num_classes=50)
    x = tf.random.normal([4, 3, 3, 64], seed=2)
    labels = tf.constant([0, 1, 2, 3])
    layer(x, labels)
    # the authors' init: shared γ ~ N(1, 0.02), per-class γ ~ N(0, 0.02), β 0
    assert abs(layer.gamma_shared.numpy().mean() - 1.0) < 0.01
    assert abs(layer.gamma.numpy().mean()) < 0.005 and abs(layer.gamma.numpy().std() - 0.02) < 0.003
    assert np.all(layer.beta.numpy() == 0) and np.all(layer.beta_shared.numpy() == 0)
    normalized = layer.norm(x, training=True).numpy()
    gamma = layer.gamma.numpy()[[0, 1, 2, 3]] + layer.gamma_shared.numpy()
    np.testing.assert_allclose(layer(x, labels, training=True).numpy(),
                               normalized * gamma[:, None, None, :], atol=1e-5)
    # a step on the shared row moves every class: β_shared shifts all outputs
    layer.beta_shared.assign(tf.fill([64], 2.0))
    np.testing.assert_allclose(layer(x, labels, training=True).numpy(),
                               normalized * gamma[:, None, None, :] + 2.0, atol=1e-5)
    assert layer.epsilon == 1e-10 and layer.momentum == 0.9


def test_conditional_batch_norm_has_no_affine_of_its_own_and_serializes():
    layer = ConditionalBatchNormalization(num_classes=3, synchronized=True)
    layer(tf.zeros([2, 4, 4, 2]), tf.constant([0, 1]))
    assert sorted(w.name for w in layer.trainable_weights) == [
        "beta", "beta_shared", "gamma", "gamma_shared"]
    clone = ConditionalBatchNormalization.from_config(layer.get_config())
    assert clone.num_classes == 3 and clone.synchronized and clone.norm.synchronized


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


def test_lenet_sees_raw_pixels_with_the_authors_initialisation():
    model = build_classifier("lenet5", 10, (28, 28, 1))
    assert not any("normal" in layer.name for layer in model.layers)
    assert [layer.name for layer in model.body][:2] == ["conv1", "pool1"]
    for name in ("conv1", "conv2", "conv3"):  # conv3: their conv(120, 5) as a dense layer
        kernel = model.get_layer(name).kernel.numpy()
        assert abs(kernel.std() - 0.02) < 0.004, name
    # an all-zero image reaches conv1 as zeros: the logits are the biases' path alone (0)
    np.testing.assert_allclose(model(tf.zeros([1, 28, 28, 1])).numpy(), 0.0, atol=1e-7)


def test_resnet_batch_norm_uses_the_pytorch_settings():
    model = build_classifier("resnet20", 10, (32, 32, 3), synchronized=True)
    norms = [model.stem_bn] + [bn for block in model.stages for bn in (block.bn1, block.bn2)]
    assert all((bn.momentum, bn.epsilon, bn.synchronized) == (0.9, 1e-5, True) for bn in norms)
    # standardization stays inside the ResNets
    np.testing.assert_allclose(model.normalize(tf.constant([[[[0.4914, 0.4822, 0.4465]]]])),
                               0.0, atol=1e-6)


@pytest.mark.parametrize("name,shape,classes", [
    ("generator", (28, 28, 1), 10),
    ("lenet5", (28, 28, 1), 10),
    ("resnet20", (32, 32, 3), 10),
    ("resnet18", (16, 16, 3), 5),
])
def test_keras_save_and_load_round_trip(tmp_path, name, shape, classes):
    if name == "generator":
        model = build_noise_generator(shape, classes, 8)
        inputs = generator_inputs(shape)
    else:
        model = build_classifier(name, classes, shape)
        inputs = (tf.random.uniform([2, *shape], seed=3),)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    np.testing.assert_allclose(loaded(*inputs).numpy(), model(*inputs).numpy(), atol=1e-5)


def test_unknown_classifier():
    with pytest.raises(ValueError, match="unknown classifier 'vgg'"):
        build_classifier("vgg", 10, (32, 32, 3))
