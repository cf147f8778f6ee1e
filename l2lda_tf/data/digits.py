"""scikit-learn's bundled handwritten digits (real, offline), upsampled to MNIST's 28×28×1."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from l2lda_tf.data.dataset import ImageDataset

EVAL_SHARE = 0.2
SPLIT_SEED = 0  # the split is fixed: the same images are held out in every run


def load_digits() -> ImageDataset:
    """1,797 8×8 digits (UCI, 16 grey levels) scaled to [0, 1], resized bilinearly to 28×28,
    and split 80/20 by a fixed permutation."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    images = tf.image.resize(images, [28, 28], method="bilinear", antialias=True).numpy()
    images = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_eval = int(round(EVAL_SHARE * len(labels)))
    eval_idx, train_idx = order[:n_eval], order[n_eval:]
    return ImageDataset("digits", images[train_idx], labels[train_idx],
                        images[eval_idx], labels[eval_idx], num_classes=10)
