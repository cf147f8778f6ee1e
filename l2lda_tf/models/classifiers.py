"""Classifiers of the paper: LeNet-5 (MNIST), ResNet-20 (CIFAR-10), ResNet-18 (Tiny ImageNet).

Every classifier takes images in [0, 1] (the ResNets standardize them inside), so attacks work
in pixel space (docs/algorithm.md, "Threat model"). Outputs are logits. Batch norm uses the
authors' PyTorch settings (momentum 0.9 in Keras terms, ε 1e-5); `synchronized` normalizes with
the global batch's statistics across replicas.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

# Per-channel mean and standard deviation of each dataset's training images.
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "tiny_imagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}


@keras.saving.register_keras_serializable(package="l2lda_tf")
class Standardize(keras.layers.Layer):
    """(x − mean) / std per channel with fixed statistics: keeps attacks in pixel space."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"need one positive std per mean, got mean={mean}, std={std}")
        self.mean, self.std = tuple(mean), tuple(std)

    def call(self, images):
        return (images - tf.constant(self.mean, images.dtype)) / tf.constant(self.std,
                                                                             images.dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def _normalization(mean: Sequence[float], std: Sequence[float]) -> Standardize:
    return Standardize(mean, std, name="normalize")


@keras.saving.register_keras_serializable(package="l2lda_tf")
class LeNet5(keras.Model):
    """LeNet-5 as in the authors' code: conv(6,5,pad 2) pool conv(16,5) pool conv(120,5) fc84
    fc(K), ReLU and 2×2 max-pooling, on the raw [0, 1] image (no standardization). Their
    conv(120,5) sees the whole 5×5 map of a 28×28 image, so it is a dense layer on the flattened
    map here, which also serves smaller images.

    Conv kernels (conv(120,5) included) start N(0, 0.02) and the other dense kernels
    Glorot-uniform, biases 0 (their init). With
    standardized input and Glorot conv kernels the clean phase leaves a classifier so confident
    that the attacker gets almost no gradient and may never start (docs/results.md).
    """

    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes

        def conv_init():
            return keras.initializers.RandomNormal(0.0, 0.02)

        self.body = [
            keras.layers.Conv2D(6, 5, padding="same", activation="relu", name="conv1",
                                kernel_initializer=conv_init()),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(16, 5, activation="relu", name="conv2",
                                kernel_initializer=conv_init()),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(120, activation="relu", name="conv3",
                               kernel_initializer=conv_init()),
            keras.layers.Dense(84, activation="relu", name="fc"),
            # float32 logits under mixed precision: losses, margins and input gradients
            keras.layers.Dense(num_classes, name="logits", dtype="float32"),
        ]

    def call(self, images, training=None):
        h = images
        for layer in self.body:
            h = layer(h, training=training)
        return h

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def _batch_norm(name: str, synchronized: bool) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=synchronized,
                                           name=name)


def _he_conv(filters: int, kernel: int, stride: int, name: str) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                               kernel_initializer="he_normal", name=name)


@keras.saving.register_keras_serializable(package="l2lda_tf")
class BasicBlock(keras.layers.Layer):
    """Two 3×3 conv-BN layers with a residual connection (He et al. 2016).

    shortcut "A": identity, subsampled and zero-padded in channels when the shape changes
    (the CIFAR ResNets); "B": a 1×1 conv + BN projection when the shape changes (ResNet-18).
    """

    def __init__(self, filters: int, stride: int = 1, shortcut: str = "B",
                 synchronized: bool = False, **kwargs):
        super().__init__(**kwargs)
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.filters, self.stride, self.shortcut = filters, stride, shortcut
        self.synchronized = synchronized

        self.conv1 = _he_conv(filters, 3, stride, "conv1")
        self.bn1 = _batch_norm("bn1", synchronized)
        self.conv2 = _he_conv(filters, 3, 1, "conv2")
        self.bn2 = _batch_norm("bn2", synchronized)
        self.projection = None

    def build(self, input_shape):
        self.reshapes = self.stride != 1 or input_shape[-1] != self.filters
        if self.shortcut == "B" and self.reshapes:
            self.projection = [_he_conv(self.filters, 1, self.stride, "proj_conv"),
                               _batch_norm("proj_bn", self.synchronized)]

    def _shortcut(self, x, training):
        if not self.reshapes:
            return x
        if self.projection is not None:
            return self.projection[1](self.projection[0](x), training=training)
        x = x[:, :: self.stride, :: self.stride, :]
        missing = self.filters - x.shape[-1]
        return tf.pad(x, [[0, 0], [0, 0], [0, 0], [missing // 2, missing - missing // 2]])

    def call(self, x, training=None):
        h = tf.nn.relu(self.bn1(self.conv1(x), training=training))
        h = self.bn2(self.conv2(h), training=training)
        return tf.nn.relu(h + self._shortcut(x, training))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "stride": self.stride,
                "shortcut": self.shortcut, "synchronized": self.synchronized}


@keras.saving.register_keras_serializable(package="l2lda_tf")
class ResNet(keras.Model):
    """A 3×3-stem ResNet of BasicBlocks, global average pooling and a linear classifier.

    ResNet-20: widths (16, 32, 64), 3 blocks each, shortcut A. ResNet-18 for 64×64 inputs:
    widths (64, 128, 256, 512), 2 blocks each, shortcut B, stride-1 stem and no max-pool.
    """

    def __init__(self, num_classes: int, widths: Sequence[int], blocks: Sequence[int],
                 shortcut: str, mean: Sequence[float], std: Sequence[float],
                 synchronized: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.widths, self.blocks = num_classes, tuple(widths), tuple(blocks)
        self.shortcut, self.mean, self.std = shortcut, tuple(mean), tuple(std)
        self.synchronized = synchronized
        self.normalize = _normalization(mean, std)
        self.stem = _he_conv(widths[0], 3, 1, "stem")
        self.stem_bn = _batch_norm("stem_bn", synchronized)
        self.stages = [
            BasicBlock(width, stride=(1 if stage == 0 or b else 2), shortcut=shortcut,
                       synchronized=synchronized, name=f"stage{stage + 1}_block{b + 1}")
            for stage, (width, count) in enumerate(zip(widths, blocks))
            for b in range(count)
        ]
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.logits = keras.layers.Dense(num_classes, name="logits", dtype="float32")

    def call(self, images, training=None):
        h = tf.nn.relu(self.stem_bn(self.stem(self.normalize(images)), training=training))
        for block in self.stages:
            h = block(h, training=training)
        return self.logits(self.pool(h))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "widths": self.widths, "blocks": self.blocks, "shortcut": self.shortcut,
                "mean": self.mean, "std": self.std, "synchronized": self.synchronized}


def resnet20(num_classes: int = 10, synchronized: bool = False) -> ResNet:
    return ResNet(num_classes, (16, 32, 64), (3, 3, 3), "A", *NORMALIZATION["cifar10"],
                  synchronized=synchronized, name="resnet20")


def resnet18(num_classes: int = 200, synchronized: bool = False) -> ResNet:
    return ResNet(num_classes, (64, 128, 256, 512), (2, 2, 2, 2), "B",
                  *NORMALIZATION["tiny_imagenet"], synchronized=synchronized, name="resnet18")


def lenet5(num_classes: int = 10, synchronized: bool = False) -> LeNet5:
    return LeNet5(num_classes, name="lenet5")  # no batch norm to synchronize


CLASSIFIERS = {"lenet5": lenet5, "resnet20": resnet20, "resnet18": resnet18}


def build_classifier(name: str, num_classes: int, image_shape: Sequence[int],
                     synchronized: bool = False) -> keras.Model:
    """Builds classifier `name` for images of `image_shape` (H, W, C) with its weights created."""
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; known: {sorted(CLASSIFIERS)}")
    model = CLASSIFIERS[name](num_classes, synchronized=synchronized)
    model(tf.zeros([1, *image_shape]))
    return model
