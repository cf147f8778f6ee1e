import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from l2lda_tf.config import preset
from l2lda_tf.experiment import train

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
    fields = dict(batch_size=8, epochs=3, eval_pgd_steps=2, unroll_steps=2, pgd_steps=2,
                  epsilon_warmup_epochs=0)
    return preset("digits", defense, **{**fields, **overrides})


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
