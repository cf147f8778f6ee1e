"""Multi-worker training: two `training.fit` processes on 127.0.0.1 under
MultiWorkerMirroredStrategy (TF_CONFIG), a preemption after the first epoch, and a restart."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A worker: `training.fit` as from the command line; "preempt" stops the process (as a
# preemption would) right after the end-of-epoch-1 checkpoint.
WORKER = r"""
import os
import sys

import keras

import training.fit as fit

if sys.argv[1] == "preempt":
    train = fit.train

    class Preempt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            os._exit(3)

    fit.train = lambda *args, **kwargs: train(*args, callbacks=[Preempt()], **kwargs)
sys.exit(fit.main(sys.argv[2:]))
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_cluster(mode: str, args: list[str]) -> list[subprocess.CompletedProcess]:
    """Runs both workers to completion; returns their results (chief first)."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        env = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": cluster,
                                        "task": {"type": "worker", "index": index}})}
        processes.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, mode, *args], cwd=ROOT, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=600)
            results.append(subprocess.CompletedProcess(process.args, process.returncode,
                                                       stdout, stderr))
    finally:
        for process in processes:
            process.kill()
    return results


@pytest.mark.slow
def test_two_workers_train_checkpoint_and_resume(tmp_path):
    out = tmp_path / "run"
    # digits has 1,437 training images: 3 steps of 400 per epoch, 2 epochs
    args = ["--dataset", "digits", "--defense", "pgd", "--batch-size", "400", "--steps", "6",
            "--strategy", "multi_worker", "--out", str(out), "--verbose", "0"]

    preempted = run_cluster("preempt", args)
    assert [r.returncode for r in preempted] == [3, 3], preempted[0].stderr[-3000:]
    checkpoint = (out / "checkpoints" / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-3"' in checkpoint
    assert not (out / "metrics.json").exists()

    resumed = run_cluster("train", args)
    for worker in resumed:
        assert worker.returncode == 0, worker.stderr[-3000:]
        assert "resuming" in worker.stderr and "from epoch 1 (step 3)" in worker.stderr
    assert "steps=6" in resumed[0].stdout
    # only the chief wrote: its checkpoints, metrics and exports, nothing from worker 1
    assert sorted(p.name for p in (out / "checkpoints").glob("*.index")) == [
        "ckpt-3.index", "ckpt-6.index"]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6
    assert (out / "export" / "classifier" / "1" / "saved_model.pb").exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints", "config.json", "export", "logs", "metrics.json", "run.json"]


@pytest.mark.slow
def test_two_workers_train_l2lda(tmp_path):
    # the learned defense: per-replica noise, synchronized CondBN, the generator's export
    out = tmp_path / "run"
    workers = run_cluster("train", [
        "--dataset", "digits", "--defense", "l2lda", "--batch-size", "16", "--steps", "1",
        "--eval-pgd-steps", "1", "--strategy", "multi_worker", "--out", str(out),
        "--verbose", "0"])
    for worker in workers:
        assert worker.returncode == 0, worker.stderr[-3000:]
    assert "steps=1" in workers[0].stdout
    assert (out / "export" / "generator" / "1" / "saved_model.pb").exists()


def test_multi_worker_needs_tf_config(monkeypatch):
    from l2lda_tf.experiment import make_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        make_strategy("multi_worker")
