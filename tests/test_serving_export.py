import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from l2lda_tf.export import WARMUP_FILE, generator_module, next_version
from serving.export import export_run, main

pytest_plugins = ["tests.serving_fixtures"]  # exported, server, trainer
SHAPE = (12, 12, 1)



@pytest.fixture
def base(exported):
    return exported


def saved_model_cli(*args) -> str:
    """Runs TensorFlow's saved_model_cli (the console script, or its module if not on PATH)."""
    command = [shutil.which("saved_model_cli")] if shutil.which("saved_model_cli") else \
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    done = subprocess.run([*command, *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_export_writes_both_models_warmup_and_config(base):
    assert sorted(p.name for p in (base / "classifier").iterdir()) == ["1"]
    assert sorted(p.name for p in (base / "generator").iterdir()) == ["1"]
    config = text_format.Parse((base / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    entries = {c.name: c for c in config.model_config_list.config}
    assert sorted(entries) == ["classifier", "generator"]
    for name, entry in entries.items():
        assert entry.base_path == str((base / name).resolve())
        assert entry.model_platform == "tensorflow"


def test_warmup_records_are_valid_predict_requests(base):
    expected = {"classifier": {"images"}, "generator": {"images", "labels", "seed"}}
    for name, inputs in expected.items():
        records = list(tf.data.TFRecordDataset(str(base / name / "1" / WARMUP_FILE)))
        assert len(records) == 1
        log = prediction_log_pb2.PredictionLog.FromString(records[0].numpy())
        request = log.predict_log.request
        assert request.model_spec.name == name
        assert request.model_spec.signature_name == "serving_default"
        assert set(request.inputs) == inputs
        images = tf.make_ndarray(request.inputs["images"])
        assert images.shape[1:] == SHAPE and images.dtype == np.float32


def test_reexport_takes_the_next_free_version_and_never_overwrites(tiny_l2lda_run, tmp_path):
    export_run(tiny_l2lda_run, tmp_path)
    main(["--run", str(tiny_l2lda_run), "--model-base-path", str(tmp_path)])
    assert sorted(p.name for p in (tmp_path / "classifier").iterdir()) == ["1", "2"]
    assert next_version(tmp_path, ["classifier", "generator"]) == 3
    with pytest.raises(FileExistsError, match="already exists"):
        export_run(tiny_l2lda_run, tmp_path, version=2)
    with pytest.raises(ValueError, match="positive"):
        export_run(tiny_l2lda_run, tmp_path, version=0)


def test_exports_are_readable_by_other_users(tiny_l2lda_run, tmp_path):
    """tempfile.mkdtemp made version folders 0700: a TF Serving running as another user could
    not read them. Now they get the modes the umask gives plain folders and files."""
    old = os.umask(0o022)
    try:
        written = export_run(tiny_l2lda_run, tmp_path)
    finally:
        os.umask(old)
    for version in written.values():
        tree = [version, *version.rglob("*")]
        assert {oct(p.stat().st_mode & 0o777) for p in tree if p.is_dir()} == {"0o755"}
        assert {oct(p.stat().st_mode & 0o777) for p in tree if p.is_file()} == {"0o644"}
    assert oct((tmp_path / "models.config").stat().st_mode & 0o777) == "0o644"


@pytest.mark.slow
def test_saved_model_cli_shows_the_documented_signatures(base):
    classifier = saved_model_cli("show", "--dir", base / "classifier" / "1", "--all")
    assert "signature_def['serving_default']" in classifier
    for text in ("inputs['images'] tensor_info", "dtype: DT_FLOAT", "shape: (-1, 12, 12, 1)",
                 "outputs['probabilities'] tensor_info", "outputs['classes'] tensor_info",
                 "dtype: DT_INT64", "Method name is: tensorflow/serving/predict"):
        assert text in classifier, text
    generator = saved_model_cli("show", "--dir", base / "generator" / "1", "--all")
    for text in ("inputs['images']", "inputs['labels']", "inputs['seed']",
                 "outputs['adversarial_images']", "outputs['noise']"):
        assert text in generator, text


@pytest.mark.slow
def test_saved_model_cli_run_equals_the_in_process_models(base, trainer, tmp_path):
    x = np.random.default_rng(0).uniform(size=(4, *SHAPE)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    saved_model_cli("run", "--dir", base / "classifier" / "1", "--tag_set", "serve",
                    "--signature_def", "serving_default", "--inputs", f"images={tmp_path}/x.npy",
                    "--outdir", tmp_path / "classifier")
    expected = tf.nn.softmax(trainer.classifier(x, training=False)).numpy()
    probabilities = np.load(tmp_path / "classifier" / "probabilities.npy")
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "classifier" / "classes.npy"),
                                  expected.argmax(-1))

    labels, seeds = np.array([0, 1, 2, 0]), np.array([5, 6, 7, 8])
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "seed.npy", seeds)
    saved_model_cli("run", "--dir", base / "generator" / "1", "--tag_set", "serve",
                    "--signature_def", "serving_default", "--inputs",
                    f"images={tmp_path}/x.npy;labels={tmp_path}/labels.npy;"
                    f"seed={tmp_path}/seed.npy", "--outdir", tmp_path / "generator")
    module = generator_module(trainer.classifier, trainer.generator, SHAPE, 3,
                              trainer.config.epsilon, trainer.unroll_steps, trainer.alpha)
    in_process = module.serve(tf.constant(x), tf.constant(labels),
                              tf.constant(seeds))["adversarial_images"].numpy()
    adversarial = np.load(tmp_path / "generator" / "adversarial_images.npy")
    np.testing.assert_allclose(adversarial, in_process, atol=1e-6)
    assert np.abs(adversarial - x).max() <= trainer.config.epsilon + 1e-6
