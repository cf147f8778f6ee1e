import gzip
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from l2lda_tf.data import (
    load_dataset,
    load_mnist_idx,
    load_mnist_tfds,
    read_idx,
    training_batches,
)
from tests.conftest import MNIST_DIR


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_mnist_dir(path, n_test=30, n_train=0):
    rng = np.random.default_rng(0)
    splits = {"t10k": n_test, "train": n_train}
    for prefix, n in splits.items():
        if n:
            write_idx(path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
            write_idx(path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return path


def test_digits_is_real_fixed_and_mnist_shaped(digits):
    assert digits.image_shape == (28, 28, 1)
    assert len(digits.train_labels) + len(digits.eval_labels) == 1797
    assert set(np.unique(digits.train_labels)) == set(range(10))
    again = load_dataset("digits")
    np.testing.assert_array_equal(again.eval_images, digits.eval_images)
    # no eval image is also a training image
    train = {img.tobytes() for img in digits.train_images}
    assert sum(img.tobytes() in train for img in digits.eval_images) < 5  # UCI has a few dupes


def test_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)


def test_idx_errors_name_the_problem(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01\x00\x00\x00\x01x"))
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "bad.gz")
    write_idx(tmp_path / "short.gz", np.zeros((4, 2), np.uint8))
    data = gzip.decompress((tmp_path / "short.gz").read_bytes())[:-3]
    (tmp_path / "short.gz").write_bytes(gzip.compress(data))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(tmp_path / "short.gz")
    # a header cut after 6 bytes: names the file instead of numpy's "buffer is smaller"
    (tmp_path / "cut.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00\x00"))
    with pytest.raises(ValueError, match=r"cut.gz: IDX header cut short \(6 bytes, a "
                       r"3-dimensional header needs 16\)"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "junk.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="not a readable IDX file"):
        read_idx(tmp_path / "junk.gz")


def test_mnist_idx_test_only_split(tmp_path):
    fake_mnist_dir(tmp_path, n_test=8010)
    data = load_mnist_idx(tmp_path)
    assert len(data.train_labels) == 8000 and len(data.eval_labels) == 10
    assert data.image_shape == (28, 28, 1) and data.train_images.dtype == np.uint8


def test_mnist_idx_full_split(tmp_path):
    fake_mnist_dir(tmp_path, n_test=20, n_train=50)
    data = load_mnist_idx(tmp_path)
    assert (len(data.train_labels), len(data.eval_labels)) == (50, 20)


def test_mnist_missing_files_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist_idx(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        load_mnist_idx(tmp_path)


@pytest.mark.skipif(not MNIST_DIR.exists(), reason=f"real MNIST test files not at {MNIST_DIR}")
def test_real_mnist_test_set():
    data = load_mnist_idx(MNIST_DIR)
    assert (len(data.train_labels), len(data.eval_labels)) == (8000, 2000)
    assert data.train_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the official order
    assert 30 < data.train_images.mean() < 40  # MNIST's mean intensity is about 33


def test_mnist_through_tfds(online):
    with tfds.testing.mock_data(num_examples=12):
        data = load_mnist_tfds()
    assert data.image_shape == (28, 28, 1)
    assert len(data.train_labels) == 12 and len(data.eval_labels) == 12


def test_offline_mnist_fails_at_once_saying_what_to_download(monkeypatch, tmp_path):
    import time

    import l2lda_tf.data.tfds_arrays as tfds_arrays

    def no_load(*args, **kwargs):
        raise AssertionError("tfds.load must not be tried offline")

    monkeypatch.setattr(tfds_arrays, "unreachable", lambda url: "Name or service not known")
    monkeypatch.setattr(tfds, "load", no_load)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"mnist is not prepared in .*tfds and cannot be "
                       r"downloaded \(https://storage.googleapis.com/cvdf-datasets/mnist/ "
                       r"unreachable: Name or service not known\)\. Without network, download "
                       r"train-images-idx3-ubyte.gz, .*t10k-labels-idx1-ubyte.gz from"):
        load_mnist_tfds(data_dir=str(tmp_path / "tfds"))
    assert time.monotonic() - start < 5


def test_unreachable_host_is_reported_within_seconds():
    import time

    from l2lda_tf.data.tfds_arrays import PROBE_SECONDS, unreachable

    start = time.monotonic()
    assert unreachable("https://l2lda-test.invalid/mnist/")  # .invalid never resolves
    assert time.monotonic() - start < PROBE_SECONDS + 2


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*digits.*mnist"):
        load_dataset("imagenet")


def test_training_batches_are_deterministic_and_resumable(tiny_dataset):
    def collect(first, last):
        ds = training_batches(tiny_dataset.train_images, tiny_dataset.train_labels, 8, 3,
                              first, last)
        return [(x.numpy(), y.numpy()) for x, y in ds]

    full = collect(0, 3)
    assert len(full) == 3 * (40 // 8)
    x, _ = full[0]
    assert x.dtype == np.float32 and x.shape == (8, 12, 12, 1) and 0 <= x.min() <= x.max() <= 1
    resumed = collect(1, 3)
    for (xa, ya), (xb, yb) in zip(full[5:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # each epoch is a permutation of the training set, and epochs differ in order
    epoch0 = np.concatenate([y for _, y in full[:5]])
    assert sorted(epoch0.tolist()) == sorted(tiny_dataset.train_labels.tolist())
    assert not np.array_equal(full[0][1], full[5][1])


def test_training_batches_reject_oversized_batch(tiny_dataset):
    with pytest.raises(ValueError, match="batch size 64 exceeds the 40 training images"):
        training_batches(tiny_dataset.train_images, tiny_dataset.train_labels, 64, 0, 0, 1)
