"""Any classifier as the attacks' `model`: a `.keras` file or a SavedModel directory that maps
images in [0, 1] to logits or probabilities (probabilities become log-probabilities, which
are valid logits: same softmax, same argmax)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

OUTPUT_KINDS = ("auto", "logits", "probabilities")


class Classifier:
    """`model(x, training=False)` → logits, around a loaded callable."""

    def __init__(self, forward, output: str, source: str):
        self.forward, self.output, self.source = forward, output, source

    def __call__(self, x, training=False):
        scores = tf.cast(self.forward(tf.cast(x, tf.float32)), tf.float32)
        if self.output == "probabilities":
            return tf.math.log(tf.maximum(scores, 1e-30))
        return scores


def _saved_model_forward(path: Path):
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        if not callable(loaded):
            raise ValueError(f"{path}: the SavedModel has neither a serving_default signature "
                             "nor a __call__; export one that maps images to scores")
        return lambda x: loaded(x), loaded
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        raise ValueError(f"{path}: serving_default takes {sorted(inputs)}; the evaluator needs "
                         "a signature with one input, the images")
    name = next(iter(inputs))
    outputs = list(signature.structured_outputs)
    preferred = [k for k in ("logits", "probabilities", "probs", "scores", "predictions")
                 if k in outputs]
    floats = [k for k in outputs if signature.structured_outputs[k].dtype.is_floating]
    key = (preferred or floats or [None])[0]
    if key is None:
        raise ValueError(f"{path}: serving_default has no float output (outputs: {outputs})")
    return (lambda x: signature(**{name: x})[key]), (loaded, key)


def load_classifier(path: str | Path, sample: np.ndarray, output: str = "auto") -> Classifier:
    """Loads a `.keras` file or a SavedModel directory and decides whether it returns logits or
    probabilities (`output`="auto": probabilities when, on the float `sample` images, every row
    is non-negative and sums to 1), checking a declared kind against the sample too."""
    path = Path(path)
    if output not in OUTPUT_KINDS:
        raise ValueError(f"output must be one of {OUTPUT_KINDS}, got {output!r}")
    if not path.exists():
        raise FileNotFoundError(f"--model {path} does not exist")
    if path.is_file() and path.suffix in (".keras", ".h5"):
        model = keras.saving.load_model(str(path), compile=False)
        forward, keep = (lambda x: model(x, training=False)), model
    elif path.is_dir() and (path / "saved_model.pb").exists():
        forward, keep = _saved_model_forward(path)
    else:
        raise ValueError(f"--model {path} is neither a .keras file nor a SavedModel directory "
                         "(one with saved_model.pb)")
    scores = np.asarray(forward(tf.constant(sample, tf.float32)), np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(sample):
        raise ValueError(f"--model {path} returned shape {scores.shape} for {len(sample)} "
                         "images; expected (images, classes)")
    looks_like_probabilities = bool(np.all(scores >= 0) and np.all(scores <= 1) and np.allclose(
        scores.sum(axis=1), 1.0, atol=1e-3))
    if output == "auto":
        output = "probabilities" if looks_like_probabilities else "logits"
    elif output == "probabilities" and not looks_like_probabilities:
        raise ValueError(f"--model {path} was declared to output probabilities, but its rows "
                         "are not non-negative and summing to 1; use --model-output logits")
    classifier = Classifier(forward, output, str(path))
    classifier.keep = keep  # the loaded object owns the variables the closure reads
    return classifier
