"""MNIST from its official IDX files or through tensorflow-datasets."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from l2lda_tf.data.dataset import ImageDataset
from l2lda_tf.data.tfds_arrays import check_download_possible, load_tfds_arrays

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
TFDS_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"  # where TFDS downloads from
TEST_ONLY_TRAIN = 8000  # with only the test files: first 8,000 train, the rest eval


def read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file (gzipped or not): magic 0x0000 08 NDIM, big-endian dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable IDX file ({err})") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header cut short ({len(data)} bytes, a {ndim}-dimensional "
                         f"header needs {4 + 4 * ndim}); download the file again")
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {tuple(dims)} but holds {body.size} bytes "
                         "(truncated or corrupt)")
    return body.reshape(dims)


def load_mnist_idx(data_dir: str | Path) -> ImageDataset:
    """MNIST from a directory of the official `.gz` IDX files.

    With the four files: the official 60k/10k split. With only the two t10k files (as in the
    offline test set): the first 8,000 test digits train, the last 2,000 evaluate.
    """
    data_dir = Path(data_dir)
    if data_dir.is_file():
        raise FileNotFoundError(f"MNIST data directory {data_dir} is a file; give the folder "
                                f"holding {' and '.join(FILES['test'])}")
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MNIST data directory {data_dir} does not exist; put "
                                f"{' and '.join(FILES['test'])} (and optionally "
                                f"{' and '.join(FILES['train'])}) there, from {TFDS_URL}")
    have = {split: all((data_dir / f).exists() for f in files) for split, files in FILES.items()}
    if not have["test"]:
        raise FileNotFoundError(
            f"{data_dir} must hold the official MNIST files {' and '.join(FILES['test'])}"
            f" (and optionally {' and '.join(FILES['train'])})")

    def split(name):
        images, labels = (read_idx(data_dir / f) for f in FILES[name])
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"{data_dir}: MNIST images must be 28×28, got {images.shape[1:]}")
        if len(images) != len(labels):
            raise ValueError(f"{data_dir}: {len(images)} {name} images but {len(labels)} labels")
        return images[..., None], labels.astype(np.int64)

    test_images, test_labels = split("test")
    if have["train"]:
        train_images, train_labels = split("train")
        return ImageDataset("mnist", train_images, train_labels, test_images, test_labels, 10)
    cut = TEST_ONLY_TRAIN
    return ImageDataset("mnist", test_images[:cut], test_labels[:cut],
                        test_images[cut:], test_labels[cut:], 10)


def load_mnist_tfds(data_dir: str | None = None) -> ImageDataset:
    """MNIST through tensorflow-datasets (downloads on first use into its data dir)."""
    check_download_possible(
        "mnist", data_dir, TFDS_URL,
        f"Without network, download {', '.join(FILES['train'] + FILES['test'])} from "
        f"{TFDS_URL} elsewhere, put them in one directory and load MNIST from it as the data "
        "directory")
    return load_tfds_arrays("mnist", "mnist", ("train", "test"), data_dir)
