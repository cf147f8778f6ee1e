import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from l2lda_tf.data import ImageDataset  # noqa: E402

# The real MNIST test set lives in shared/ beside the checkout, never in the repo.
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-test"
MNIST_DIR = Path(os.environ.get("L2LDA_MNIST_DIR", SHARED_MNIST))


@pytest.fixture
def tiny_dataset() -> ImageDataset:
    """40 train / 16 eval random 12×12 grey images, 3 classes: shapes, not learning."""
    rng = np.random.default_rng(0)

    def split(n):
        return (rng.integers(0, 256, (n, 12, 12, 1), dtype=np.uint8),
                rng.integers(0, 3, n).astype(np.int64))

    return ImageDataset("tiny", *split(40), *split(16), num_classes=3)


@pytest.fixture(scope="session")
def digits():
    from l2lda_tf.data import load_digits

    return load_digits()
