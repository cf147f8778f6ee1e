"""Reads a tensorflow-datasets image dataset into the in-memory uint8 arrays of `ImageDataset`."""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import tensorflow as tf

from l2lda_tf.data.dataset import ImageDataset

CHUNK = 10_000  # `batch_size=-1` aborts under tfds.testing.mock_data; batch the tf.data instead


def split_arrays(split: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """All (image, label) pairs of a supervised split as uint8 images and int64 labels."""
    import tensorflow_datasets as tfds

    images, labels = [], []
    for x, y in tfds.as_numpy(split.batch(CHUNK).prefetch(tf.data.AUTOTUNE)):
        images.append(x)
        labels.append(y)
    return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int64)


PROBE_SECONDS = 5


def unreachable(url: str) -> str | None:
    """Why `url` cannot be fetched (no network, unknown host, timeout), or None if its server
    answers; takes at most `PROBE_SECONDS`."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                               timeout=PROBE_SECONDS).close()
    except urllib.error.HTTPError:
        return None  # the server answered
    except (OSError, ValueError) as err:
        return str(getattr(err, "reason", err))
    return None


def check_download_possible(tfds_name: str, data_dir: str | None, url: str,
                            offline_help: str) -> None:
    """Unless `tfds_name` is prepared already, checks within seconds that `url` (where TFDS
    downloads it from) answers, rather than let TFDS retry for minutes; raises RuntimeError
    with `offline_help` (what to download, where to put it) when it does not."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if builder.is_prepared():
        return
    reason = unreachable(url)
    if reason is not None:
        raise RuntimeError(f"{tfds_name} is not prepared in {builder.data_dir_root} and cannot "
                           f"be downloaded ({url} unreachable: {reason}). {offline_help}")


def load_tfds_arrays(tfds_name: str, name: str, splits: tuple[str, str],
                     data_dir: str | None = None, download_config=None) -> ImageDataset:
    """`tfds.load`s the (train, eval) `splits` of `tfds_name`, preparing it on first use."""
    import tensorflow_datasets as tfds

    kwargs = {"download_config": download_config} if download_config is not None else {}
    (train, evaluation), info = tfds.load(
        tfds_name, split=list(splits), as_supervised=True, data_dir=data_dir, with_info=True,
        download_and_prepare_kwargs=kwargs)
    return ImageDataset(name, *split_arrays(train), *split_arrays(evaluation),
                        num_classes=info.features["label"].num_classes)
