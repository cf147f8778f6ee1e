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


def run(defense, strategy, steps, recompute=False):
    keras.utils.set_random_seed(0)
    # a small clip norm so that clipping is active at every step
    config = preset("digits", defense, batch_size=8, epochs=1, unroll_steps=2, pgd_steps=2,
                    eval_pgd_steps=2, epsilon_warmup_epochs=0, clean_warmup_steps=0,
                    clip_norm=0.05)
    trainer = build_trainer(config, 3, (12, 12, 1), steps, strategy, recompute=recompute)
    history = trainer.fit(training_batches(images, labels, 8, 0, 0, 1), epochs=1,
                          steps_per_epoch=steps, verbose=0, shuffle=False)
    models = [trainer.classifier, trainer.generator]
    # all weights: trainable ones and the batch-norm moving statistics
    weights = [np.asarray(v.numpy()) for m in models if m is not None for v in m.weights]
    logs = {k: float(v[-1]) for k, v in history.history.items()}
    if trainer.generator is not None:  # the recompute freeze leaves the momenta as they were
        logs.update({f"momentum/{layer.name}": layer.momentum
                     for layer in trainer.generator.batch_norms()})
    return int(trainer.optimizer.iterations.numpy()), logs, weights


def difference(a, b):
    return max(float(np.abs(u - v).max()) for u, v in zip(a, b, strict=True))


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
report = {"replicas": mirrored.num_replicas_in_sync}
for case, defense, steps, recompute in (("plain", "plain", 4, False),
                                        ("l2lda", "l2lda", 1, False),
                                        ("l2lda_recompute", "l2lda", 1, True)):
    one_steps, one_logs, one_weights = run(defense, tf.distribute.get_strategy(), steps)
    two_steps, two_logs, two_weights = run(defense, mirrored, steps, recompute)
    report[case] = {
        "steps": [one_steps, two_steps], "logs": [one_logs, two_logs],
        "max_weight_difference": difference(one_weights, two_weights),
    }
try:
    build_trainer(preset("digits", "plain", batch_size=9), 3, (12, 12, 1), 1, mirrored)
except ValueError as err:
    report["uneven_batch_error"] = str(err)
print(json.dumps(report))
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
    plain = report["plain"]
    assert plain["steps"] == [4, 4]
    assert plain["max_weight_difference"] < 1e-5
    # one L2L-DA step: with synchronized batch norm (classifier and generator) and z drawn for
    # the global batch, two replicas compute the same losses and updated weights as one, also
    # when they recompute the generator (whose batch-norm momenta come back unchanged)
    for case in ("l2lda", "l2lda_recompute"):
        l2lda = report[case]
        assert l2lda["steps"] == [1, 1]
        one, two = l2lda["logs"]
        assert set(one) >= {"loss", "gen_ce", "diversity", "adv_acc", "clean_acc"}
        assert any(name.startswith("momentum/") for name in one)
        assert set(one) == set(two)
        for name in one:
            assert abs(one[name] - two[name]) < 1e-4 * max(1.0, abs(one[name])), (case, name)
        assert l2lda["max_weight_difference"] < 1e-5, case
    # a global batch that does not split evenly is refused: replicas would disagree on it
    assert "does not split evenly over 2 replicas" in report["uneven_batch_error"]
