"""The noise generator g_φ(x̃, y, z) of L2L-DA (docs/algorithm.md, "The generator")."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence

import keras
import tensorflow as tf

from l2lda_tf.models.cond_bn import ConditionalBatchNormalization


def _conv_init():
    return keras.initializers.RandomNormal(0.0, 0.02)


@keras.saving.register_keras_serializable(package="l2lda_tf")
class NoiseGenerator(keras.Model):
    """U-Net-like generator producing o_t ∈ [−1, 1]^{H×W×C} from x̃ = (x, δ_t, ∇̃_t).

    Layers, in order: z-encoder ReLU(Dense_d(ReLU(Dense_d(z)))), then with the encoded z tiled
    and concatenated before each of the three down convolutions: conv(64,3,1)+LReLU = skip1;
    conv(64,4,2)+CondBN+LReLU = skip2; conv(128,4,2)+LReLU; deconv(64,4,2)+CondBN+ReLU ‖ skip2;
    deconv(64,4,2)+CondBN+ReLU ‖ skip1; conv(C,3,1)+tanh. No conv bias; kernels N(0, 0.02);
    dense layers Glorot-uniform with zero bias.

    `noise_dim=0` drops z (Chen et al.'s L2L attacker); `num_classes=None` replaces CondBN by
    ordinary BN, for attackers that must not see the label. The input channels are whatever the
    caller concatenates, so the same network serves the recurrent and the one-step attacks.
    `synchronized`: batch norm with the global batch's statistics across replicas.
    """

    def __init__(self, channels: int, num_classes: int | None = 10, noise_dim: int = 8,
                 synchronized: bool = False, **kwargs):
        super().__init__(**kwargs)
        if channels < 1 or noise_dim < 0:
            raise ValueError(f"need channels >= 1 and noise_dim >= 0, got {channels}, {noise_dim}")
        self.channels = channels
        self.num_classes = num_classes
        self.noise_dim = noise_dim
        self.synchronized = synchronized
        self._features_shape = None  # (H, W, 3C) of the first call: the build config
        self._frozen = 0  # open `frozen_moving_statistics` blocks (replicas trace in threads)
        self._frozen_lock = threading.Lock()

        def dense(name):
            return keras.layers.Dense(noise_dim, activation="relu", name=name,
                                      kernel_initializer="glorot_uniform", bias_initializer="zeros")

        def conv(filters, kernel, stride, name, transpose=False, dtype=None):
            layer = keras.layers.Conv2DTranspose if transpose else keras.layers.Conv2D
            return layer(filters, kernel, strides=stride, padding="same", use_bias=False,
                         kernel_initializer=_conv_init(), name=name, dtype=dtype)

        def norm(name):
            if num_classes is None:
                return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-10, name=name,
                                                       synchronized=synchronized)
            return ConditionalBatchNormalization(num_classes, synchronized=synchronized,
                                                 name=name)

        if noise_dim:
            self.z_dense1, self.z_dense2 = dense("z_dense1"), dense("z_dense2")
        self.conv1 = conv(64, 3, 1, "conv1")
        self.conv2 = conv(64, 4, 2, "conv2")
        self.norm2 = norm("norm2")
        self.conv3 = conv(128, 4, 2, "conv3")
        self.deconv1 = conv(64, 4, 2, "deconv1", transpose=True)
        self.norm_up1 = norm("norm_up1")
        self.deconv2 = conv(64, 4, 2, "deconv2", transpose=True)
        self.norm_up2 = norm("norm_up2")
        # o_t in float32 under mixed precision: α·ε·o_t is added to δ at full precision
        self.out_conv = conv(channels, 3, 1, "out_conv", dtype="float32")

    def _with_noise(self, h, z):
        if z is None:
            return h
        shape = tf.shape(h)
        tiled = tf.broadcast_to(z[:, None, None, :], [shape[0], shape[1], shape[2], self.noise_dim])
        return tf.concat([h, tiled], axis=-1)

    def _norm(self, layer, h, labels, training):
        if self.num_classes is None:
            return layer(h, training=training)
        return layer(h, labels, training=training)

    def call(self, features, labels=None, noise=None, training=None):
        """features: x̃ [N,H,W,·]; labels: [N] ints (CondBN only); noise: z [N,d] or None."""
        if self.num_classes is not None and labels is None:
            raise ValueError("this generator is class-conditional: pass labels")
        if self.noise_dim and noise is None:
            raise ValueError(f"this generator takes noise z of dimension {self.noise_dim}")
        if self._features_shape is None:
            self._features_shape = tuple(features.shape[1:])
        z = self.z_dense2(self.z_dense1(noise)) if self.noise_dim else None
        lrelu = keras.activations.leaky_relu
        skip1 = lrelu(self.conv1(self._with_noise(features, z)), 0.2)
        h = self.conv2(self._with_noise(skip1, z))
        skip2 = lrelu(self._norm(self.norm2, h, labels, training), 0.2)
        h = lrelu(self.conv3(self._with_noise(skip2, z)), 0.2)
        h = tf.nn.relu(self._norm(self.norm_up1, self.deconv1(h), labels, training))
        h = tf.concat([_crop_like(h, skip2), skip2], axis=-1)
        h = tf.nn.relu(self._norm(self.norm_up2, self.deconv2(h), labels, training))
        h = tf.concat([_crop_like(h, skip1), skip1], axis=-1)
        return tf.tanh(self.out_conv(h))

    def get_build_config(self):
        return {"features_shape": self._features_shape}

    def build_from_config(self, config):
        """Creates the weights for inputs of the saved shape, so `keras.saving.load_model` can
        load them (the call takes three inputs, which Keras cannot build from alone)."""
        shape = config.get("features_shape")
        if shape:
            self(tf.zeros([1, *shape]), tf.zeros([1], tf.int32),
                 tf.zeros([1, self.noise_dim]) if self.noise_dim else None)

    def batch_norms(self) -> list[keras.layers.BatchNormalization]:
        """The BatchNormalization layers that hold the moving statistics (inside CondBN too)."""
        norms = (self.norm2, self.norm_up1, self.norm_up2)
        return [n if self.num_classes is None else n.norm for n in norms]

    @contextlib.contextmanager
    def frozen_moving_statistics(self):
        """Momentum 1 for the batch norms (m ← 1·m + 0·batch statistic) in the ops built inside
        the block: a recomputed forward pass must not update the moving statistics twice."""
        norms = self.batch_norms()
        with self._frozen_lock:
            if self._frozen == 0:
                self._momenta = [n.momentum for n in norms]
                for n in norms:
                    n.momentum = 1.0
            self._frozen += 1
        try:
            yield
        finally:
            with self._frozen_lock:
                self._frozen -= 1
                if self._frozen == 0:
                    for n, momentum in zip(norms, self._momenta):
                        n.momentum = momentum

    def get_config(self):
        return {**super().get_config(), "channels": self.channels,
                "num_classes": self.num_classes, "noise_dim": self.noise_dim,
                "synchronized": self.synchronized}


def build_noise_generator(image_shape: Sequence[int], num_classes: int | None, noise_dim: int,
                          synchronized: bool = False, name: str = "generator") -> NoiseGenerator:
    """A generator for images of `image_shape` (H, W, C), its weights created: input x̃ has 3C
    channels (x ‖ δ ‖ ∇̃)."""
    generator = NoiseGenerator(image_shape[-1], num_classes=num_classes, noise_dim=noise_dim,
                               synchronized=synchronized, name=name)
    features = tf.zeros([1, *image_shape[:-1], 3 * image_shape[-1]])
    noise = tf.zeros([1, noise_dim]) if noise_dim else None
    generator(features, tf.zeros([1], tf.int32), noise)
    return generator


def _crop_like(h, reference):
    """Crops an upsampled map to the skip's size (odd sizes, e.g. 7 → 14 vs 13, round up)."""
    ref = tf.shape(reference)
    return h[:, : ref[1], : ref[2], :]
