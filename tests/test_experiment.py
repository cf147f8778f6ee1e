import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from l2lda_tf.experiment import train
from l2lda_tf.files import write_atomically
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


class Interrupted(Exception):
    pass


class InterruptAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise Interrupted


def small_config(defense="plain", **overrides):
    return tiny_config(defense, **{"epochs": 3, **overrides})


def test_run_directory_layout(tmp_path, tiny_dataset):
    metrics = train(small_config("l2lda", epochs=1), tmp_path, dataset=tiny_dataset, verbose=0)
    assert set(metrics) == {"clean_acc", "pgd2_acc", "steps"} and metrics["steps"] == 5
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert json.loads((tmp_path / "config.json").read_text())["defense"] == "l2lda"
    for model in ("classifier", "generator"):
        assert (tmp_path / "export" / model / "1" / "saved_model.pb").exists()
    assert list((tmp_path / "logs" / "images").glob("events.out.tfevents.*"))
    assert list((tmp_path / "logs" / "train").glob("events.out.tfevents.*"))


def test_load_run_restores_the_trained_models(tmp_path, tiny_dataset):
    from l2lda_tf.experiment import load_run

    config = small_config("l2lda", epochs=1)
    train(config, tmp_path, dataset=tiny_dataset, verbose=0)
    trainer = load_run(tmp_path)
    assert trainer.config == config and int(trainer.optimizer.iterations.numpy()) == 5
    x = tiny_dataset.eval_images[:4] / 255.0
    import tensorflow as tf

    exported = tf.saved_model.load(str(tmp_path / "export" / "classifier" / "1"))
    probabilities = exported.signatures["serving_default"](images=tf.constant(x, tf.float32))
    np.testing.assert_allclose(probabilities["probabilities"].numpy(),
                               tf.nn.softmax(trainer.classifier(x)).numpy(), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not a training run"):
        load_run(tmp_path / "export")


def test_interrupted_run_resumes_where_it_stopped(tmp_path, tiny_dataset):
    config = small_config()
    reference = tmp_path / "reference"
    train(config, reference, dataset=tiny_dataset, verbose=0)

    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(config, run, dataset=tiny_dataset, verbose=0, callbacks=[InterruptAfterEpoch(2)])
    assert not (run / "metrics.json").exists()
    metrics = train(config, run, dataset=tiny_dataset, verbose=0)
    assert metrics["steps"] == 15
    # the resumed run saw the same batches as the uninterrupted one, so it ends the same
    a = json.loads((reference / "metrics.json").read_text())
    assert metrics["clean_acc"] == pytest.approx(a["clean_acc"])

    # a finished run rerun does no more training
    assert train(config, run, dataset=tiny_dataset, verbose=0)["steps"] == 15


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, tiny_dataset, caplog):
    config = small_config(epochs=2)
    train(config, tmp_path, dataset=tiny_dataset, verbose=0)
    newest = sorted((tmp_path / "checkpoints").glob("ckpt-10.data-*"))[0]
    newest.write_bytes(b"\0" * 16)
    from l2lda_tf.checkpoints import Checkpointer
    from l2lda_tf.trainers import build_trainer

    trainer = build_trainer(config, 3, (12, 12, 1), steps_per_epoch=5)
    checkpointer = Checkpointer(trainer, tmp_path / "checkpoints")
    assert checkpointer.restore() == 1
    assert int(trainer.optimizer.iterations) == 5
    assert "ckpt-10 is unreadable" in caplog.text

    older = sorted((tmp_path / "checkpoints").glob("ckpt-5.data-*"))[0]
    older.write_bytes(b"\0" * 16)
    with pytest.raises(RuntimeError, match="no readable checkpoint"):
        Checkpointer(trainer, tmp_path / "checkpoints").restore()
    assert older.exists() and newest.exists()  # nothing was deleted


def test_rerun_with_another_configuration_is_refused(tmp_path, tiny_dataset):
    train(small_config(epochs=1), tmp_path, dataset=tiny_dataset, verbose=0)
    with pytest.raises(ValueError, match="lam: saved 0.02, now 0.5"):
        train(small_config(epochs=1, lam=0.5), tmp_path, dataset=tiny_dataset, verbose=0)


def fit_command(out, epochs):
    return [sys.executable, "-m", "training.fit", "--dataset", "digits", "--defense", "plain",
            "--batch-size", "16", "--epochs", str(epochs), "--eval-pgd-steps", "2",
            "--verbose", "2", "--out", str(out)]


@pytest.mark.slow
def test_killed_process_resumes_from_its_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(fit_command(out, 12), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = out / "checkpoints" / "checkpoint"
    deadline = time.time() + 300
    while time.time() < deadline and not (index.exists() and "ckpt-" in index.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert index.exists(), "no checkpoint was written before the kill"
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    saved_step = int(index.read_text().split('"ckpt-')[1].split('"')[0])

    resumed = subprocess.run(fit_command(out, 12), cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from epoch {saved_step // 89} (step {saved_step})" in resumed.stderr
    assert json.loads((out / "metrics.json").read_text())["steps"] == 12 * 89


def test_export_can_be_skipped(tmp_path, tiny_dataset):
    metrics = train(small_config(epochs=1), tmp_path, dataset=tiny_dataset, verbose=0,
                    export_models=False)
    assert metrics["steps"] == 5 and (tmp_path / "metrics.json").exists()
    assert not (tmp_path / "export").exists()


def test_rerun_on_other_data_is_refused_and_bad_batch_writes_nothing(tmp_path, tiny_dataset):
    from l2lda_tf.data import ImageDataset

    train(small_config(epochs=1), tmp_path, dataset=tiny_dataset, verbose=0)
    smaller = ImageDataset("tiny", tiny_dataset.train_images[:24], tiny_dataset.train_labels[:24],
                           tiny_dataset.eval_images, tiny_dataset.eval_labels, 3)
    with pytest.raises(ValueError, match="steps_per_epoch: saved 5, now 3"):
        train(small_config(epochs=1), tmp_path, dataset=smaller, verbose=0)

    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="batch size 64 exceeds the 40 training images"):
        train(small_config(batch_size=64), fresh, dataset=tiny_dataset, verbose=0)
    assert not fresh.exists()


class PoisonWeights(keras.callbacks.Callback):
    """Sets the classifier's trainable variable `which` to NaN before batch 2 of `epoch`."""

    def __init__(self, epoch, which):
        super().__init__()
        self.epoch_to_poison, self.epoch, self.which = epoch, 0, which

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == self.epoch_to_poison and batch == 1:
            weight = self.model.classifier.trainable_variables[self.which]
            weight.assign(np.full(weight.shape, np.nan, weight.dtype))


# NaN logits make the loss NaN; a NaN conv kernel does not (oneDNN's ReLU maps NaN to 0), so
# only the weights checked at the epoch's end show it
@pytest.mark.parametrize("which,message", [
    (-1, "loss is nan at batch 2 of epoch 2"),
    (0, "weight lenet5/conv1/kernel is not finite after epoch 2"),
])
def test_non_finite_training_stops_before_saving_or_exporting(tmp_path, tiny_dataset, which,
                                                              message):
    from l2lda_tf.checkpoints import Checkpointer
    from l2lda_tf.experiment import NonFiniteError
    from l2lda_tf.trainers import build_trainer

    config = small_config()
    with pytest.raises(NonFiniteError, match=f"training diverged: {message}"):
        train(config, tmp_path, dataset=tiny_dataset, verbose=0,
              callbacks=[PoisonWeights(2, which)])
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "export").exists()
    trainer = build_trainer(config, 3, (12, 12, 1), steps_per_epoch=5)
    assert Checkpointer(trainer, tmp_path / "checkpoints").restore() == 1  # the good epoch
    assert all(np.isfinite(w).all() for w in trainer.classifier.get_weights())


def test_damaged_checkpoint_index_is_rebuilt_not_restarted(tmp_path, tiny_dataset, caplog):
    caplog.set_level(logging.INFO)
    from l2lda_tf.checkpoints import Checkpointer
    from l2lda_tf.trainers import build_trainer

    config = small_config(epochs=2)
    with pytest.raises(Interrupted):
        train(config, tmp_path, dataset=tiny_dataset, verbose=0,
              callbacks=[InterruptAfterEpoch(2)])
    index = tmp_path / "checkpoints" / "checkpoint"
    index.write_text("garbage {{{")
    trainer = build_trainer(config, 3, (12, 12, 1), steps_per_epoch=5)
    assert Checkpointer(trainer, tmp_path / "checkpoints").restore() == 2
    assert "rebuilt it from ckpt-5, ckpt-10" in caplog.text
    assert (tmp_path / "checkpoints" / "checkpoint.damaged").read_text() == "garbage {{{"
    index.unlink()  # a missing index beside checkpoints is rebuilt too
    assert Checkpointer(trainer, tmp_path / "checkpoints").restore() == 2
    index.write_text("garbage")
    with pytest.raises(RuntimeError, match="checkpoint index .* is damaged"):
        Checkpointer(trainer, tmp_path / "checkpoints", writer=False)
    metrics = train(config, tmp_path, dataset=tiny_dataset, verbose=0)
    assert metrics["steps"] == 10
    assert "resuming" in caplog.text and "from epoch 2 (step 10)" in caplog.text


def test_run_directory_that_is_not_a_run_is_refused_and_left_alone(tmp_path, tiny_dataset):
    from l2lda_tf.experiment import NotARunError

    other = tmp_path / "other"
    precious = other / "export" / "classifier" / "1" / "notes.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("mine")
    with pytest.raises(NotARunError, match="holds export, which is not a training run"):
        train(small_config(epochs=1), other, dataset=tiny_dataset, verbose=0)
    assert precious.read_text() == "mine" and sorted(p.name for p in other.iterdir()) == \
        ["export"]

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(NotARunError, match="afile is a file"):
        train(small_config(epochs=1), afile / "run", dataset=tiny_dataset, verbose=0)
    with pytest.raises(NotARunError, match="run directory .*afile is a file"):
        train(small_config(epochs=1), afile, dataset=tiny_dataset, verbose=0)


def test_read_only_file_system_is_refused_before_writing(tmp_path, tiny_dataset, monkeypatch):
    import l2lda_tf.experiment as experiment

    real = os.statvfs

    class ReadOnly:
        def __init__(self, path):
            self.f_flag = real(path).f_flag | os.ST_RDONLY

    monkeypatch.setattr(experiment.os, "statvfs", ReadOnly)
    with pytest.raises(experiment.NotARunError, match="read-only file system"):
        train(small_config(epochs=1), tmp_path / "run", dataset=tiny_dataset, verbose=0)
    assert not (tmp_path / "run").exists()


def test_export_path_that_is_a_file_is_refused_before_training(tmp_path, tiny_dataset):
    from l2lda_tf.experiment import NotARunError

    train(small_config(epochs=1), tmp_path, dataset=tiny_dataset, verbose=0,
          export_models=False)
    (tmp_path / "export").write_text("not a folder")
    with pytest.raises(NotARunError, match="export is a file where the run keeps a folder"):
        train(small_config(epochs=2), tmp_path, dataset=tiny_dataset, verbose=0)
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 5


def test_finished_run_is_extended_with_its_decay_step_pinned(tmp_path, tiny_dataset, caplog):
    caplog.set_level(logging.INFO)

    def small_config(epochs):  # the default schedule: the rate drops at half the run
        return dataclasses.replace(globals()["small_config"](epochs=epochs), lr_decay_step=None)

    train(small_config(epochs=2), tmp_path, dataset=tiny_dataset, verbose=0)
    metrics = train(small_config(epochs=3), tmp_path, dataset=tiny_dataset, verbose=0)
    assert metrics["steps"] == 15
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["epochs"], saved["lr_decay_step"]) == (3, 5)  # half of the first 10 steps
    assert "extending" in caplog.text and "still drops at step 5" in caplog.text
    # the same command again finds it finished; fewer epochs cannot shorten it
    assert train(small_config(epochs=3), tmp_path, dataset=tiny_dataset, verbose=0) == metrics
    with pytest.raises(ValueError, match="epochs: saved 3, now 2"):
        train(small_config(epochs=2), tmp_path, dataset=tiny_dataset, verbose=0)


def test_rerun_of_a_finished_run_leaves_metrics_alone(tmp_path, tiny_dataset):
    config = small_config("l2lda", epochs=1)
    first = train(config, tmp_path, dataset=tiny_dataset, verbose=0)
    path = tmp_path / "metrics.json"
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    assert train(config, tmp_path, dataset=tiny_dataset, verbose=0) == first
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_the_same_weights_report_the_same_figures(tmp_path, tiny_dataset):
    # resumed and uninterrupted runs end with the same weights; evaluation restarts from the
    # run's seed, so they report the same figures, PGD accuracy included
    config = small_config("pgd", epochs=2)
    reference = train(config, tmp_path / "reference", dataset=tiny_dataset, verbose=0)
    with pytest.raises(Interrupted):
        train(config, tmp_path / "run", dataset=tiny_dataset, verbose=0,
              callbacks=[InterruptAfterEpoch(1)])
    assert train(config, tmp_path / "run", dataset=tiny_dataset, verbose=0) == reference


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_run_files_get_the_umask_modes(tmp_path, umask, mode):
    # config.json, run.json, metrics.json and the rebuilt checkpoint index go through a
    # temporary file (0600 whatever the umask): another user must still be able to read them
    old = os.umask(umask)
    try:
        write_atomically(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
