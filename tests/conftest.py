import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from l2lda_tf.data import ImageDataset  # noqa: E402

# The real MNIST test files (t10k IDX .gz) are never in the repo: L2LDA_MNIST_DIR names them.
MNIST_DIR = Path(os.environ.get("L2LDA_MNIST_DIR", "/nonexistent/mnist-test"))


@pytest.fixture
def tiny_dataset() -> ImageDataset:
    """40 train / 16 eval random 12×12 grey images, 3 classes: shapes, not learning."""
    return make_tiny_dataset()


def make_tiny_dataset() -> ImageDataset:
    rng = np.random.default_rng(0)

    def split(n):
        return (rng.integers(0, 256, (n, 12, 12, 1), dtype=np.uint8),
                rng.integers(0, 3, n).astype(np.int64))

    return ImageDataset("tiny", *split(40), *split(16), num_classes=3)


def tiny_config(defense: str = "plain", **overrides):
    """The digits preset shrunk for `tiny_dataset`: batches of 8 (5 steps an epoch), one
    epoch, 2-step attacks, no clean or ε warm-up; `overrides` change single fields."""
    from l2lda_tf.config import preset

    fields = dict(batch_size=8, epochs=1, unroll_steps=2, pgd_steps=2, eval_pgd_steps=2,
                  epsilon_warmup_epochs=0, clean_warmup_steps=0)
    return preset("digits", defense, **{**fields, **overrides})


@pytest.fixture(scope="session")
def tiny_l2lda_run(tmp_path_factory) -> Path:
    """A trained L2L-DA run on the tiny data (one short epoch), made once for all tests that
    load, export or serve a run."""
    from l2lda_tf.experiment import train

    run_dir = tmp_path_factory.mktemp("tiny_l2lda_run")
    train(tiny_config("l2lda"), run_dir, dataset=make_tiny_dataset(), verbose=0)
    return run_dir


@pytest.fixture
def online(monkeypatch):
    """tensorflow-datasets' download hosts count as reachable (for tests under
    `tfds.testing.mock_data`, which download nothing)."""
    import l2lda_tf.data.tfds_arrays as tfds_arrays

    monkeypatch.setattr(tfds_arrays, "unreachable", lambda url: None)


@pytest.fixture(scope="session")
def digits():
    from l2lda_tf.data import load_digits

    return load_digits()
