import numpy as np
import pytest
import tensorflow as tf

from l2lda_tf.config import preset
from l2lda_tf.export import export_classifier, export_generator
from l2lda_tf.trainers import build_trainer

SHAPE = (12, 12, 1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    config = preset("digits", "l2lda", unroll_steps=3, epsilon=0.2)
    trainer = build_trainer(config, 3, SHAPE, steps_per_epoch=1)
    export_classifier(trainer.classifier, SHAPE, base / "classifier" / "1")
    export_generator(trainer.classifier, trainer.generator, SHAPE, 3, 0.2, 3, 0.25,
                     base / "generator" / "1")
    return trainer, base


def images(n=4, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(size=(n, *SHAPE)), tf.float32)


def test_classifier_signature_matches_the_model(exported):
    trainer, base = exported
    serve = tf.saved_model.load(str(base / "classifier" / "1")).signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["images"]
    assert set(serve.structured_outputs) == {"probabilities", "classes"}
    x = images()
    out = serve(images=x)
    expected = tf.nn.softmax(trainer.classifier(x, training=False)).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["classes"].numpy(), expected.argmax(-1))
    assert out["classes"].dtype == tf.int64


def test_generator_signature_runs_the_unrolled_attack(exported):
    _, base = exported
    serve = tf.saved_model.load(str(base / "generator" / "1")).signatures["serving_default"]
    assert sorted(serve.structured_input_signature[1]) == ["images", "labels", "seed"]
    assert set(serve.structured_outputs) == {"adversarial_images", "noise"}
    x, labels = images(), tf.constant([0, 1, 2, 0], tf.int64)
    out = serve(images=x, labels=labels, seed=tf.constant([1, 2, 3, 4], tf.int64))
    adversarial = out["adversarial_images"].numpy()
    assert adversarial.shape == x.shape
    assert np.abs(adversarial - x.numpy()).max() <= 0.2 + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    np.testing.assert_allclose(out["noise"].numpy(), adversarial - x.numpy(), atol=1e-6)
    again = serve(images=x, labels=labels, seed=tf.constant([1, 2, 3, 4], tf.int64))
    np.testing.assert_array_equal(again["adversarial_images"].numpy(), adversarial)
    other = serve(images=x, labels=labels, seed=tf.constant([5, 6, 7, 8], tf.int64))
    assert not np.allclose(other["adversarial_images"].numpy(), adversarial)


@pytest.mark.parametrize("bad,message", [
    (np.nan, "finite"),
    (1.5, r"\[0, 1\]"),
    (-0.1, r"\[0, 1\]"),
])
def test_bad_images_are_rejected_with_a_reason(exported, bad, message):
    _, base = exported
    serve = tf.saved_model.load(str(base / "classifier" / "1")).signatures["serving_default"]
    x = images().numpy()
    x[0, 0, 0, 0] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serve(images=tf.constant(x))


def test_bad_labels_are_rejected_with_a_reason(exported):
    _, base = exported
    serve = tf.saved_model.load(str(base / "generator" / "1")).signatures["serving_default"]
    seeds = tf.constant([1, 2, 3, 4], tf.int64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be < 3"):
        serve(images=images(), labels=tf.constant([0, 1, 2, 3], tf.int64), seed=seeds)
    with pytest.raises(tf.errors.InvalidArgumentError, match="one label per image"):
        serve(images=images(), labels=tf.constant([0, 1], tf.int64), seed=seeds)


def test_reexport_replaces_the_previous_version_whole(exported, tmp_path):
    trainer, _ = exported
    path = tmp_path / "classifier" / "1"
    export_classifier(trainer.classifier, SHAPE, path)
    export_classifier(trainer.classifier, SHAPE, path)
    assert (path / "saved_model.pb").exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["1"]  # no staging leftovers


def test_exports_load_in_a_session_as_tf_serving_loads_them(exported):
    """tensorflow_model_server restores variables through the graph's saver, not tf.function
    captures; both models must run that way too."""
    trainer, base = exported
    x = images().numpy()
    expected = tf.nn.softmax(trainer.classifier(x, training=False)).numpy()
    for name, feeds in [("classifier", {"images": x}),
                        ("generator", {"images": x, "labels": np.array([0, 1, 2, 0]),
                                       "seed": np.array([1, 2, 3, 4])})]:
        with tf.Graph().as_default(), tf.compat.v1.Session() as session:
            meta = tf.compat.v1.saved_model.load(session, ["serve"], str(base / name / "1"))
            signature = meta.signature_def["serving_default"]
            outputs = session.run(
                {k: v.name for k, v in signature.outputs.items()},
                {signature.inputs[k].name: value for k, value in feeds.items()})
        if name == "classifier":
            np.testing.assert_allclose(outputs["probabilities"], expected, rtol=1e-5, atol=1e-6)
        else:
            serve = tf.saved_model.load(str(base / name / "1")).signatures["serving_default"]
            eager = serve(**{k: tf.constant(v) for k, v in feeds.items()})
            np.testing.assert_allclose(outputs["adversarial_images"],
                                       eager["adversarial_images"].numpy(), atol=1e-6)
