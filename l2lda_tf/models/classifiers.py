"""Classifiers of the paper: LeNet-5 (MNIST), ResNet-20 (CIFAR-10), ResNet-18 (Tiny ImageNet).

Every classifier takes images in [0, 1] and normalizes them itself, so attacks work in pixel
space (ALGORITHM.md, "Threat model"). Outputs are logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

# Per-channel mean and standard deviation of each dataset's training images.
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
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
    """LeNet-5 with ReLU and max-pooling: conv(6,5) pool conv(16,5) pool fc120 fc84 fc(K)."""

    def __init__(self, num_classes: int = 10, mean=NORMALIZATION["mnist"][0],
                 std=NORMALIZATION["mnist"][1], **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.mean, self.std = num_classes, tuple(mean), tuple(std)
        self.normalize = _normalization(mean, std)
        self.body = [
            keras.layers.Conv2D(6, 5, padding="same", activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(16, 5, activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(120, activation="relu", name="fc1"),
            keras.layers.Dense(84, activation="relu", name="fc2"),
            # float32 logits under mixed precision: losses, margins and input gradients
            keras.layers.Dense(num_classes, name="logits", dtype="float32"),
        ]

    def call(self, images, training=None):
        h = self.normalize(images)
        for layer in self.body:
            h = layer(h, training=training)
        return h

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "mean": self.mean, "std": self.std}


def _he_conv(filters: int, kernel: int, stride: int, name: str) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                               kernel_initializer="he_normal", name=name)


@keras.saving.register_keras_serializable(package="l2lda_tf")
class BasicBlock(keras.layers.Layer):
    """Two 3×3 conv-BN layers with a residual connection (He et al. 2016).

    shortcut "A": identity, subsampled and zero-padded in channels when the shape changes
    (the CIFAR ResNets); "B": a 1×1 conv + BN projection when the shape changes (ResNet-18).
    """

    def __init__(self, filters: int, stride: int = 1, shortcut: str = "B", **kwargs):
        super().__init__(**kwargs)
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.filters, self.stride, self.shortcut = filters, stride, shortcut

        self.conv1 = _he_conv(filters, 3, stride, "conv1")
        self.bn1 = keras.layers.BatchNormalization(name="bn1")
        self.conv2 = _he_conv(filters, 3, 1, "conv2")
        self.bn2 = keras.layers.BatchNormalization(name="bn2")
        self.projection = None

    def build(self, input_shape):
        self.reshapes = self.stride != 1 or input_shape[-1] != self.filters
        if self.shortcut == "B" and self.reshapes:
            self.projection = [_he_conv(self.filters, 1, self.stride, "proj_conv"),
                               keras.layers.BatchNormalization(name="proj_bn")]

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
                "shortcut": self.shortcut}


@keras.saving.register_keras_serializable(package="l2lda_tf")
class ResNet(keras.Model):
    """A 3×3-stem ResNet of BasicBlocks, global average pooling and a linear classifier.

    ResNet-20: widths (16, 32, 64), 3 blocks each, shortcut A. ResNet-18 for 64×64 inputs:
    widths (64, 128, 256, 512), 2 blocks each, shortcut B, stride-1 stem and no max-pool.
    """

    def __init__(self, num_classes: int, widths: Sequence[int], blocks: Sequence[int],
                 shortcut: str, mean: Sequence[float], std: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.widths, self.blocks = num_classes, tuple(widths), tuple(blocks)
        self.shortcut, self.mean, self.std = shortcut, tuple(mean), tuple(std)
        self.normalize = _normalization(mean, std)
        self.stem = _he_conv(widths[0], 3, 1, "stem")
        self.stem_bn = keras.layers.BatchNormalization(name="stem_bn")
        self.stages = [
            BasicBlock(width, stride=(1 if stage == 0 or b else 2), shortcut=shortcut,
                       name=f"stage{stage + 1}_block{b + 1}")
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
                "mean": self.mean, "std": self.std}


def resnet20(num_classes: int = 10) -> ResNet:
    return ResNet(num_classes, (16, 32, 64), (3, 3, 3), "A", *NORMALIZATION["cifar10"],
                  name="resnet20")


def resnet18(num_classes: int = 200) -> ResNet:
    return ResNet(num_classes, (64, 128, 256, 512), (2, 2, 2, 2), "B",
                  *NORMALIZATION["tiny_imagenet"], name="resnet18")


def lenet5(num_classes: int = 10) -> LeNet5:
    return LeNet5(num_classes, name="lenet5")


CLASSIFIERS = {"lenet5": lenet5, "resnet20": resnet20, "resnet18": resnet18}


def build_classifier(name: str, num_classes: int, image_shape: Sequence[int]) -> keras.Model:
    """Builds classifier `name` for images of `image_shape` (H, W, C) with its weights created."""
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; known: {sorted(CLASSIFIERS)}")
    model = CLASSIFIERS[name](num_classes)
    model(tf.zeros([1, *image_shape]))
    return model
