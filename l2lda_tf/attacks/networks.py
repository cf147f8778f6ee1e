"""Small image-to-image and critic networks for the trained attacks (AdvGAN, GAP)."""

from __future__ import annotations

from collections.abc import Sequence

import keras


def perturbation_network(image_shape: Sequence[int], width: int = 32,
                         name: str = "perturbation") -> keras.Model:
    """An encoder–decoder mapping an image [H, W, C] to an unbounded map of the same shape;
    the attack scales it into the ε-ball. Two stride-2 stages, so H and W need not be even
    (the output is cropped back). Instance normalization, as in AdvGAN: unlike batch norm it
    behaves the same in training and inference, which matters for generators trained briefly."""
    height, width_px, channels = image_shape
    inputs = keras.Input(tuple(image_shape))
    h = inputs
    for filters, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
        h = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(h)
        h = keras.layers.GroupNormalization(groups=-1)(h)
        h = keras.layers.ReLU()(h)
    for filters in (2 * width, width):
        h = keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same", use_bias=False)(h)
        h = keras.layers.GroupNormalization(groups=-1)(h)
        h = keras.layers.ReLU()(h)
    h = keras.layers.Cropping2D(((0, h.shape[1] - height), (0, h.shape[2] - width_px)))(h)
    outputs = keras.layers.Conv2D(channels, 3, padding="same")(h)
    return keras.Model(inputs, outputs, name=name)


def discriminator_network(image_shape: Sequence[int], width: int = 32,
                          name: str = "discriminator") -> keras.Model:
    """A conv critic: one logit per image, real (clean) vs fake (perturbed)."""
    inputs = keras.Input(tuple(image_shape))
    h = inputs
    for filters in (width, 2 * width):
        h = keras.layers.Conv2D(filters, 4, strides=2, padding="same")(h)
        h = keras.layers.LeakyReLU(0.2)(h)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(h))
    return keras.Model(inputs, outputs, name=name)
