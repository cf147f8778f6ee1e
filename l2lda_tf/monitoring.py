"""Watching training: adversarial examples and noises in TensorBoard each epoch, and a warning
when the attacker of a learned defense gets no gradient."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """Tiles [N, H, W, C] images row-major into one [1, rows·H, columns·W, C] image."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    padded = np.zeros((rows * columns, h, w, c), images.dtype)
    padded[:n] = images
    grid = padded.reshape(rows, columns, h, w, c).transpose(0, 2, 1, 3, 4)
    return grid.reshape(1, rows * h, columns * w, c)


class AdversarialImages(keras.callbacks.Callback):
    """Writes a grid of the trainer's adversarial examples and of their noises shown as
    (δ/ε + 1)/2 (zero noise is mid-grey) for a fixed set of eval images, every epoch."""

    def __init__(self, log_dir: str | Path, images: np.ndarray, labels: np.ndarray,
                 epsilon: float, columns: int = 8):
        super().__init__()
        self.images = tf.convert_to_tensor(images, tf.float32)
        self.labels = tf.convert_to_tensor(labels)
        self.epsilon, self.columns = epsilon, columns
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "images"))

    def on_epoch_end(self, epoch, logs=None):
        adversarial = self.model.adversarial_examples(self.images, self.labels)
        noise = (adversarial - self.images) / self.epsilon
        with self.writer.as_default(step=epoch + 1):
            tf.summary.image("adversarial_examples",
                             image_grid(adversarial.numpy(), self.columns))
            tf.summary.image("noise", image_grid(((noise + 1) / 2).numpy(), self.columns))
        self.writer.flush()


class StuckAttackerWarning(keras.callbacks.Callback):
    """Warns after an adversarial epoch in which the attacker of a learned defense is stuck:
    - its gradient norm (`g_grad_norm`, the epoch's mean) stayed below `threshold`, so an
      over-confident classifier gives it no signal (the authors' code stuck at 8e-4); or
    - it collapsed to one perturbation: its images ignore z (`diversity` below
      `collapse_share`·ε) while the classifier still gets `accuracy` of them right. A generator
      whose tanh saturates at ±1 everywhere (δ = ±ε on every pixel) gets almost no gradient,
      and a confident classifier soon learns the shift (docs/algorithm.md, "A collapsed
      attacker")."""

    def __init__(self, threshold: float = 1e-3, collapse_share: float = 0.01,
                 accuracy: float = 0.9):
        super().__init__()
        self.threshold, self.collapse_share, self.accuracy = threshold, collapse_share, accuracy

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not getattr(self.model, "adversarial", False):
            return

        def mean(key):
            value = logs.get(key)
            return None if value is None else float(np.asarray(value).reshape(-1)[0])

        log = logging.getLogger("l2lda_tf")
        norm, diversity, accuracy = mean("g_grad_norm"), mean("diversity"), mean("adv_acc")
        if norm is not None and norm < self.threshold:
            log.warning(
                "epoch %d: the generator's gradient norm averaged %.1e (< %.0e); the attacker "
                "may be stuck against an over-confident classifier: watch adv_acc, and consider "
                "a shorter clean warm-up or a larger generator rate", epoch + 1, norm,
                self.threshold)
        elif diversity is not None and accuracy is not None and accuracy >= self.accuracy:
            epsilon = float(self.model.epsilon_now())
            if diversity < self.collapse_share * epsilon:
                log.warning(
                    "epoch %d: the attacker has collapsed to one perturbation: its images ignore "
                    "z (diversity %.1e, below %g·ε) and the classifier gets %.0f%% of them "
                    "right; a saturated generator rarely recovers: if adv_acc stays this high, "
                    "train a new run with another --seed or a shorter --clean-warmup-steps",
                    epoch + 1, diversity, self.collapse_share, 100 * accuracy)
