import io
import json
import pickle
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from l2lda_tf.data import load_cifar10_local, load_cifar10_tfds, load_dataset, read_cifar_batch
from training.fit import main

BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
           "test_batch")


def cifar_batch(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    """A batch as the official archive pickles it: bytes keys, planar RGB rows of 3,072 values,
    labels as a list; the official files (numpy 1) name `numpy.core.multiarray`."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": rows,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}
    data = pickle.dumps(batch, protocol=2)
    return data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def cifar_arrays(per_batch=4, test=6, side=32, seed=0):
    """Random images and labels for the five train batches and the test batch."""
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, 256, (test if name == "test_batch" else per_batch,
                                         side, side, 3), dtype=np.uint8),
                   rng.integers(0, 10, test if name == "test_batch" else per_batch))
            for name in BATCHES}


def write_cifar_archive(directory, arrays, extract=False):
    """The official `cifar-10-python.tar.gz` (or its extracted folder) under `directory`."""
    files = {name: cifar_batch(*arrays[name], name) for name in BATCHES}
    files["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2)
    if extract:
        folder = directory / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return folder
    with tarfile.open(directory / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return directory / "cifar-10-python.tar.gz"


@pytest.fixture
def cifar_dir(tmp_path):
    arrays = cifar_arrays()
    write_cifar_archive(tmp_path, arrays)
    return tmp_path, arrays


def assert_exact(data, arrays):
    train = [arrays[n] for n in BATCHES[:5]]
    np.testing.assert_array_equal(data.train_images, np.concatenate([x for x, _ in train]))
    np.testing.assert_array_equal(data.train_labels, np.concatenate([y for _, y in train]))
    np.testing.assert_array_equal(data.eval_images, arrays["test_batch"][0])
    np.testing.assert_array_equal(data.eval_labels, arrays["test_batch"][1])
    assert data.image_shape == (32, 32, 3) and data.num_classes == 10


def test_archive_reads_back_the_exact_pixels(cifar_dir):
    directory, arrays = cifar_dir
    data = load_dataset("cifar10", directory)
    assert data.name == "cifar10" and len(data.train_labels) == 20
    assert_exact(data, arrays)


def test_planar_rows_become_nhwc(cifar_dir):
    directory, arrays = cifar_dir
    images, _ = arrays["data_batch_1"]
    rows = images.transpose(0, 3, 1, 2).reshape(4, -1)
    # row layout: 1,024 red values, then green, then blue, each row-major over 32×32
    assert rows[1, 2 * 1024 + 5 * 32 + 7] == images[1, 5, 7, 2]
    x, _ = read_cifar_batch(cifar_batch(*arrays["data_batch_1"], "b"), "b")
    assert x[1, 5, 7, 2] == images[1, 5, 7, 2]


def test_extracted_folder_or_its_parent(tmp_path):
    arrays = cifar_arrays(seed=1)
    folder = write_cifar_archive(tmp_path, arrays, extract=True)
    assert_exact(load_cifar10_local(tmp_path), arrays)
    assert_exact(load_cifar10_local(folder), arrays)


def test_missing_archive_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10_local(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"neither cifar-10-python.tar.gz nor "
                       r"cifar-10-batches-py/: download https://www.cs.toronto.edu/~kriz/"):
        load_cifar10_local(tmp_path)


def test_corrupt_archive(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"<html>404 not found</html>")
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz is corrupt or not the official"):
        load_cifar10_local(tmp_path)
    write_cifar_archive(tmp_path, cifar_arrays())
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # interrupted download
    with pytest.raises(ValueError, match="is corrupt or not the official archive"):
        load_cifar10_local(tmp_path)


def test_archive_without_a_batch(tmp_path):
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        data = cifar_batch(*cifar_arrays()["test_batch"], "test")
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="lacks cifar-10-batches-py/data_batch_1, data_batch_2"):
        load_cifar10_local(tmp_path)


def test_folder_missing_a_batch(tmp_path):
    folder = write_cifar_archive(tmp_path, cifar_arrays(), extract=True)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="lacks the CIFAR-10 batch files data_batch_3"):
        load_cifar10_local(tmp_path)


def test_wrong_image_size(tmp_path):
    arrays = cifar_arrays()
    arrays["data_batch_2"] = cifar_arrays(side=16)["data_batch_2"]
    write_cifar_archive(tmp_path, arrays)
    with pytest.raises(ValueError, match=r"data_batch_2: CIFAR-10 images must be uint8 rows of "
                       r"3×32×32 = 3072 values, got uint8 \(4, 768\)"):
        load_cifar10_local(tmp_path)


def test_a_batch_that_is_not_a_pickle_or_runs_code():
    with pytest.raises(ValueError, match="b1: not a CIFAR-10 python batch"):
        read_cifar_batch(b"garbage", "b1")

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        read_cifar_batch(pickle.dumps({b"data": Exploit()}), "b2")


def test_cifar10_through_tfds(online):
    with tfds.testing.mock_data(num_examples=12):
        data = load_dataset("cifar10")
    assert data.image_shape == (32, 32, 3) and data.num_classes == 10
    assert len(data.train_labels) == 12 and len(data.eval_labels) == 12
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int64


def test_offline_tfds_download_says_what_to_do(monkeypatch, tmp_path):
    import l2lda_tf.data.tfds_arrays as tfds_arrays

    def no_load(*args, **kwargs):
        raise AssertionError("tfds.load must not be tried offline")

    monkeypatch.setattr(tfds_arrays, "unreachable", lambda url: "Failed to resolve")
    monkeypatch.setattr(tfds, "load", no_load)
    with pytest.raises(RuntimeError, match="cifar10 is not prepared .* cannot be downloaded "
                       r"\(https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz unreachable: "
                       r"Failed to resolve\)\. Without network, download "
                       "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz elsewhere"):
        load_cifar10_tfds(data_dir=str(tmp_path / "tfds"))


def test_failed_tfds_download_says_what_to_do(monkeypatch, online):
    import requests

    def offline(*args, **kwargs):
        raise requests.ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(RuntimeError, match="could not download CIFAR-10 .*Failed to resolve.*"
                       "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
                       "elsewhere"):
        load_dataset("cifar10")


def test_data_dir_that_is_a_file_or_missing(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(FileNotFoundError, match="afile is a file; give the folder holding "
                       "cifar-10-python.tar.gz"):
        load_cifar10_local(afile)
    with pytest.raises(FileNotFoundError, match="does not exist; download https://"):
        load_cifar10_local(tmp_path / "nowhere")


@pytest.mark.slow
def test_fit_cli_pretrains_then_starts_adversarial_training_from_it(cifar_dir, capsys):
    directory, _ = cifar_dir
    common = ["--dataset", "cifar10", "--data-dir", str(directory), "--batch-size", "4",
              "--eval-pgd-steps", "1", "--verbose", "0"]
    clean = directory / "clean"
    assert main([*common, "--defense", "plain", "--epochs", "1", "--out", str(clean)]) == 0
    assert json.loads((clean / "metrics.json").read_text())["steps"] == 5  # 20 images / 4
    adversarial = directory / "pgd"
    assert main([*common, "--defense", "pgd", "--pgd-steps", "1", "--steps", "1",
                 "--init-from", str(clean), "--out", str(adversarial)]) == 0
    run = json.loads((adversarial / "run.json").read_text())
    assert run["init_from"] == str(clean.resolve()) and run["image_shape"] == [32, 32, 3]
    assert "pgd1_acc=" in capsys.readouterr().out


@pytest.mark.slow
def test_init_from_starts_l2lda_from_the_clean_classifier(cifar_dir, tmp_path):
    import keras

    from l2lda_tf.config import preset
    from l2lda_tf.experiment import load_run, train

    directory, _ = cifar_dir
    data = load_cifar10_local(directory)
    clean = tmp_path / "clean"
    train(preset("cifar10", "plain", batch_size=4, epochs=1, eval_pgd_steps=1), clean,
          dataset=data, verbose=0)
    pretrained = load_run(clean).classifier.get_weights()

    class FirstWeights(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.weights = self.model.classifier.get_weights()

    first = FirstWeights()
    config = preset("cifar10", "l2lda", batch_size=4, epochs=1, steps_per_epoch=1,
                    unroll_steps=2, eval_pgd_steps=1)
    metrics = train(config, tmp_path / "l2lda", dataset=data, verbose=0, callbacks=[first],
                    init_from=clean)
    assert metrics["steps"] == 1
    assert len(first.weights) == len(pretrained)  # batch-norm statistics included
    for ours, theirs in zip(first.weights, pretrained):
        np.testing.assert_array_equal(ours, theirs)

    with pytest.raises(ValueError, match=r"initial run .*clean: its classifier is resnet20 for "
                       r"10 classes of \(32, 32, 3\) images; this run needs lenet5"):
        train(preset("cifar10", "pgd", classifier="lenet5"), tmp_path / "other", dataset=data,
              init_from=clean)
    with pytest.raises(FileNotFoundError, match="is not a training run: config.json is missing"):
        train(config, tmp_path / "other", dataset=data, init_from=tmp_path / "nothing")
    assert not (tmp_path / "other").exists()  # checked before anything is written
