"""Training under MirroredStrategy with two replicas (two logical CPUs, in a subprocess because
devices must be split before TensorFlow starts)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json
import keras
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from l2lda_tf.config import preset
from l2lda_tf.data import training_batches
from l2lda_tf.trainers import build_trainer

rng = np.random.default_rng(0)
images = rng.integers(0, 256, (32, 12, 12, 1), dtype=np.uint8)
labels = rng.integers(0, 3, 32)


def run(defense, strategy):
    keras.utils.set_random_seed(0)
    # a small clip norm so that clipping is active at every step
    config = preset("digits", defense, batch_size=8, epochs=1, unroll_steps=2, pgd_steps=2,
                    eval_pgd_steps=2, epsilon_warmup_epochs=0, clip_norm=0.05)
    trainer = build_trainer(config, 3, (12, 12, 1), 4, strategy)
    history = trainer.fit(training_batches(images, labels, 8, 0, 0, 1), epochs=1,
                          steps_per_epoch=4, verbose=0, shuffle=False)
    weights = [np.asarray(v.numpy()) for v in trainer.classifier.trainable_variables]
    return trainer, history.history, weights


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
_, _, single = run("plain", tf.distribute.get_strategy())
_, _, double = run("plain", mirrored)
trainer, history, _ = run("l2lda", mirrored)
print(json.dumps({
    "replicas": mirrored.num_replicas_in_sync,
    "max_weight_difference": max(float(np.abs(a - b).max()) for a, b in zip(single, double)),
    "l2lda_steps": int(trainer.optimizer.iterations.numpy()),
    "l2lda_logs": {k: float(v[-1]) for k, v in history.items()},
}))
"""


@pytest.mark.slow
def test_two_replicas_train_like_one():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                            text=True, timeout=600,
                            env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    # losses are scaled by the global batch, so summed replica gradients equal one replica's
    assert report["max_weight_difference"] < 1e-5
    assert report["l2lda_steps"] == 4
    assert set(report["l2lda_logs"]) >= {"loss", "gen_ce", "diversity", "adv_acc"}
