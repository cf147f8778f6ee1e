"""SavedModel export in TF Serving's layout: `BASE/<model>/<version>/` with named signatures.

Classifier `serving_default`: `images` float32 [N,H,W,C] in [0, 1] → `probabilities` [N,K],
`classes` int64 [N]. Generator `serving_default`: `images`, `labels` int64 [N], `seed` int64 [N]
(one per image: the same image, label and seed give the same attack) → `adversarial_images`,
`noise` (= adversarial_images − images), by the T-step unroll against the exported classifier.

For TF Serving an export may also carry warm-up requests (`assets.extra/tf_serving_warmup_requests`,
PredictionLog records the server replays before it reports a version AVAILABLE), and a base path
gets a `models.config` (ModelServerConfig text format) naming its models. Those two need the
tensorflow-serving-api protos, imported only when asked for.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from l2lda_tf.attacks import unrolled_attack
from l2lda_tf.files import make_readable


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
    arguments. `serve` reaches the models through its closure.

    It tracks each Keras variable's backing `tf.Variable` (`.value`), not the Keras wrapper:
    with the wrapper, the graph holds two handles per weight and session-based loaders
    (`tensorflow_model_server`, `saved_model_cli run`) restore one while the signature reads
    the other ("Could not find variable", keras-team/keras#20095)."""
    module = tf.Module()
    module.model_variables = [v.value for model in models for v in model.variables]
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
                                     epsilon, steps=steps, alpha=alpha)
        adversarial = unroll.images[-1]
        return {"adversarial_images": adversarial, "noise": adversarial - images}

    return _serving_module([classifier, generator], serve)


WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MODEL_CONFIG_FILE = "models.config"


def save_module(module: tf.Module, path: str | Path,
                warmup_requests: Sequence[dict[str, np.ndarray]] = ()) -> Path:
    """Writes `module` as a SavedModel at `path`, replacing any previous one only once the new
    one is complete (written beside it, then renamed into place), so a server polling the base
    path never sees half a version. `warmup_requests` (input name → array) become TF Serving
    warm-up records for the model named by `path`'s parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
        if warmup_requests:
            write_warmup_requests(staging, path.parent.name, warmup_requests)
        make_readable(staging)
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


def sample_classifier_inputs(image_shape: Sequence[int], batch: int = 2) -> dict[str, np.ndarray]:
    """A valid request for the classifier signature: mid-grey images."""
    return {"images": np.full((batch, *image_shape), 0.5, np.float32)}


def sample_generator_inputs(image_shape: Sequence[int], num_classes: int,
                            batch: int = 2) -> dict[str, np.ndarray]:
    """A valid request for the generator signature: mid-grey images, labels 0, 1, …, seeds."""
    return {"images": np.full((batch, *image_shape), 0.5, np.float32),
            "labels": np.arange(batch, dtype=np.int64) % num_classes,
            "seed": np.arange(batch, dtype=np.int64)}


def export_classifier(classifier, image_shape: Sequence[int], path: str | Path, *,
                      warmup: bool = False) -> Path:
    """Exports the classifier signature; `warmup` adds a TF Serving warm-up request."""
    requests = [sample_classifier_inputs(image_shape)] if warmup else []
    return save_module(classifier_module(classifier, image_shape), path, requests)


def export_generator(classifier, generator, image_shape: Sequence[int], num_classes: int,
                     epsilon: float, steps: int, alpha: float, path: str | Path, *,
                     warmup: bool = False) -> Path:
    """Exports the generator signature; `warmup` adds a TF Serving warm-up request."""
    module = generator_module(classifier, generator, image_shape, num_classes, epsilon, steps,
                              alpha)
    requests = [sample_generator_inputs(image_shape, num_classes)] if warmup else []
    return save_module(module, path, requests)


def export_trainer(trainer, image_shape: Sequence[int], num_classes: int,
                   base: str | Path, version: int = 1, *, warmup: bool = False) -> dict[str, Path]:
    """Exports a trainer's classifier, and its generator for learned defenses, as version
    `version` under `base`; returns model name → the version folder written."""
    base = Path(base)
    written = {"classifier": export_classifier(trainer.classifier, image_shape,
                                               base / "classifier" / str(version),
                                               warmup=warmup)}
    if trainer.generator is not None:
        written["generator"] = export_generator(
            trainer.classifier, trainer.generator, image_shape, num_classes, trainer.config.epsilon,
            trainer.unroll_steps, trainer.alpha, base / "generator" / str(version),
            warmup=warmup)
    return written


def write_warmup_requests(export_dir: str | Path, model_name: str,
                          requests: Sequence[dict[str, np.ndarray]]) -> Path:
    """Writes `requests` as TF Serving warm-up records (TFRecord of PredictionLog with a
    PredictRequest on `serving_default`) into `export_dir/assets.extra/`."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path = Path(export_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = "serving_default"
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def versions(model_path: str | Path) -> list[int]:
    """The version numbers under a model's base path (its folders named by ASCII digits; others,
    such as `²` or `.1.staging`, are ignored as TF Serving ignores them), ascending."""
    model_path = Path(model_path)
    if not model_path.is_dir():
        return []
    return sorted(int(p.name) for p in model_path.iterdir()
                  if re.fullmatch(r"[0-9]+", p.name) and p.is_dir())


def next_version(base_path: str | Path, model_names: Sequence[str]) -> int:
    """One past the newest version of any of `model_names` under `base_path`, so models exported
    together share a version number."""
    newest = [v for name in model_names for v in versions(Path(base_path) / name)]
    return max(newest, default=0) + 1


def write_model_config(base_path: str | Path, model_names: Sequence[str]) -> Path:
    """Writes `base_path/models.config` (ModelServerConfig text format) serving each of
    `model_names` from `base_path/<name>`, as `tensorflow_model_server --model_config_file`
    reads it. Paths are absolute, as TF Serving wants them."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    base_path = Path(base_path).resolve()
    config = model_server_config_pb2.ModelServerConfig()
    for name in model_names:
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = str(base_path / name)
        entry.model_platform = "tensorflow"
    path = base_path / MODEL_CONFIG_FILE
    base_path.mkdir(parents=True, exist_ok=True)
    path.write_text(text_format.MessageToString(config))
    return path
