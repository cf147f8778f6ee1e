"""CIFAR-10 from the official python-pickle archive (or its extracted folder), or through TFDS."""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from l2lda_tf.data.dataset import ImageDataset
from l2lda_tf.data.tfds_arrays import check_download_possible, load_tfds_arrays

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TFDS_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"  # what TFDS downloads
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
SIDE = 32


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays, lists and bytes only: a pickle can run any callable it
    names, so a tampered archive must not be able to name more than array reconstruction."""

    _reconstruct = np.ndarray(0).__reduce__()[0]  # numpy.core or numpy._core, by version
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # the official files (numpy 1)
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,  # bytes in Python 3 protocol-2 pickles
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch (dict with b"data" [N, 3072] planar R, G, B rows and b"labels") as
    uint8 NHWC images [N, 32, 32, 3] and int64 labels [N]."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
        images, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError,
            AttributeError, IndexError) as err:
        raise ValueError(f"{where}: not a CIFAR-10 python batch (corrupt or wrong file: "
                         f"{err!r}); download {URL} again") from err
    if images.ndim != 2 or images.shape[1] != 3 * SIDE * SIDE or images.dtype != np.uint8:
        raise ValueError(f"{where}: CIFAR-10 images must be uint8 rows of 3×32×32 = 3072 "
                         f"values, got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{where}: labels outside 0…9")
    return images.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1), labels


def _read_archive(path: Path) -> dict[str, bytes]:
    """The six batch files of the official archive, by name."""
    wanted = {f"{FOLDER}/{name}": name for name in (*TRAIN_BATCHES, TEST_BATCH)}
    found = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    found[wanted[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise ValueError(f"{path} is corrupt or not the official archive ({err}); "
                         f"download {URL} again") from err
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise ValueError(f"{path} lacks {FOLDER}/{', '.join(missing)}; is it the official "
                         f"archive? Download {URL} again")
    return found


def _read_folder(folder: Path) -> dict[str, bytes]:
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks the CIFAR-10 batch files {', '.join(missing)}")
    return {n: (folder / n).read_bytes() for n in (*TRAIN_BATCHES, TEST_BATCH)}


def load_cifar10_local(data_dir: str | Path) -> ImageDataset:
    """CIFAR-10 (50,000 train / 10,000 test) from `data_dir` holding the official
    `cifar-10-python.tar.gz`, its extracted `cifar-10-batches-py/`, or being that folder."""
    data_dir = Path(data_dir)
    if data_dir.is_file():
        raise FileNotFoundError(f"CIFAR-10 data directory {data_dir} is a file; give the folder "
                                f"holding {ARCHIVE} (or the extracted {FOLDER}/)")
    if not data_dir.is_dir():
        raise FileNotFoundError(f"CIFAR-10 data directory {data_dir} does not exist; download "
                                f"{URL} into it (extracted or not)")
    if (data_dir / TEST_BATCH).exists():
        files = _read_folder(data_dir)
    elif (data_dir / FOLDER).is_dir():
        files = _read_folder(data_dir / FOLDER)
    elif (data_dir / ARCHIVE).exists():
        files = _read_archive(data_dir / ARCHIVE)
    else:
        raise FileNotFoundError(f"{data_dir} holds neither {ARCHIVE} nor {FOLDER}/: download "
                                f"{URL} into {data_dir} (or load it through TFDS)")
    train = [read_cifar_batch(files[n], f"{data_dir}: {n}") for n in TRAIN_BATCHES]
    test_images, test_labels = read_cifar_batch(files[TEST_BATCH], f"{data_dir}: {TEST_BATCH}")
    return ImageDataset("cifar10", np.concatenate([x for x, _ in train]),
                        np.concatenate([y for _, y in train]), test_images, test_labels, 10)


def load_cifar10_tfds(data_dir: str | None = None) -> ImageDataset:
    """CIFAR-10 through tensorflow-datasets (downloads on first use into its data dir)."""
    check_download_possible("cifar10", data_dir, TFDS_URL,
                            f"Without network, download {URL} elsewhere and load CIFAR-10 "
                            "from the directory holding it as the data directory")
    try:
        return load_tfds_arrays("cifar10", "cifar10", ("train", "test"), data_dir=data_dir)
    except OSError as err:  # requests' ConnectionError after TFDS's retries, among others
        if isinstance(err, FileNotFoundError):
            raise
        raise RuntimeError(f"tensorflow-datasets could not download CIFAR-10 ({err}); without "
                           f"network, download {URL} elsewhere and load CIFAR-10 from the "
                           "directory holding it as the data directory") from err
