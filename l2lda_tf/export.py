"""SavedModel export in TF Serving's layout: `BASE/<model>/<version>/` with named signatures.

Classifier `serving_default`: `images` float32 [N,H,W,C] in [0, 1] → `probabilities` [N,K],
`classes` int64 [N]. Generator `serving_default`: `images`, `labels` int64 [N], `seed` int64 [N]
(one per image: the same image, label and seed give the same attack) → `adversarial_images`,
`noise` (= adversarial_images − images), by the T-step unroll against the exported classifier.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

from l2lda_tf.attacks import unrolled_attack


def _checked_images(images: tf.Tensor) -> tf.Tensor:
    """Fails a request whose images are not finite values in [0, 1]."""
    checks = [
        tf.debugging.assert_all_finite(images, "images must be finite (no NaN or Inf)"),
        tf.debugging.assert_greater_equal(images, 0.0, message="images must be in [0, 1]"),
        tf.debugging.assert_less_equal(images, 1.0, message="images must be in [0, 1]"),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(images)


def _serving_module(models, serve) -> tf.Module:
    """A module holding the models' variables and `serve`, not the Keras models themselves:
    saving a Keras model as a child would make TensorFlow trace its `call` with guessed
    arguments. `serve` reaches the models through its closure."""
    module = tf.Module()
    module.model_variables = [v for model in models for v in model.variables]
    module.serve = serve
    return module


def classifier_module(classifier, image_shape: Sequence[int]) -> tf.Module:
    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32, name="images")])
    def serve(images):
        probabilities = tf.nn.softmax(classifier(_checked_images(images), training=False))
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1)}

    return _serving_module([classifier], serve)


def generator_module(classifier, generator, image_shape: Sequence[int], num_classes: int,
                     epsilon: float, steps: int, alpha: float) -> tf.Module:
    dim = generator.noise_dim

    def noise_from(seed):
        if not dim:
            return None
        return tf.map_fn(lambda s: tf.random.stateless_normal([dim], tf.stack([s, 0])), seed,
                         fn_output_signature=tf.float32)

    @tf.function(input_signature=[
        tf.TensorSpec([None, *image_shape], tf.float32, name="images"),
        tf.TensorSpec([None], tf.int64, name="labels"),
        tf.TensorSpec([None], tf.int64, name="seed"),
    ])
    def serve(images, labels, seed):
        images = _checked_images(images)
        checks = [
            tf.debugging.assert_equal(tf.shape(labels)[0], tf.shape(images)[0],
                                      message="need one label per image"),
            tf.debugging.assert_equal(tf.shape(seed)[0], tf.shape(images)[0],
                                      message="need one seed per image"),
            tf.debugging.assert_non_negative(labels, message="labels must be class indices"),
            tf.debugging.assert_less(labels, tf.constant(num_classes, tf.int64),
                                     message=f"labels must be < {num_classes}"),
        ]
        with tf.control_dependencies(checks):
            unroll = unrolled_attack(classifier, generator, images, labels, noise_from(seed),
                                     epsilon, steps, alpha)
        adversarial = unroll.images[-1]
        return {"adversarial_images": adversarial, "noise": adversarial - images}

    return _serving_module([classifier, generator], serve)


def save_module(module: tf.Module, path: str | Path) -> Path:
    """Writes `module` as a SavedModel at `path`, replacing any previous one only once the new
    one is complete (written beside it, then renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def export_classifier(classifier, image_shape: Sequence[int], path: str | Path) -> Path:
    return save_module(classifier_module(classifier, image_shape), path)


def export_generator(classifier, generator, image_shape: Sequence[int], num_classes: int,
                     epsilon: float, steps: int, alpha: float, path: str | Path) -> Path:
    module = generator_module(classifier, generator, image_shape, num_classes, epsilon, steps,
                              alpha)
    return save_module(module, path)
