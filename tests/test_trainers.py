import keras
import numpy as np
import pytest
import tensorflow as tf

from l2lda_tf.config import preset
from l2lda_tf.data import training_batches
from l2lda_tf.trainers import L2LDATrainer, L2LTrainer, PGDTrainer, PlainTrainer, build_trainer

EPSILON = 0.1


def tiny_config(defense, **overrides):
    fields = dict(epsilon=EPSILON, batch_size=8, epochs=2, unroll_steps=3, pgd_steps=3,
                  eval_pgd_steps=3, epsilon_warmup_epochs=0, clean_share=0.0)
    fields.update(overrides)
    return preset("digits", defense, **fields)


def make_trainer(dataset, defense, **overrides):
    config = tiny_config(defense, **overrides)
    return build_trainer(config, dataset.num_classes, dataset.image_shape,
                         steps_per_epoch=len(dataset.train_labels) // config.batch_size)


def first_batch(dataset, n=8):
    return (tf.constant(dataset.train_images[:n] / 255.0, tf.float32),
            tf.constant(dataset.train_labels[:n]))


def test_factory_builds_each_defense(tiny_dataset):
    kinds = {"plain": PlainTrainer, "pgd": PGDTrainer, "l2l": L2LTrainer, "l2lda": L2LDATrainer}
    for defense, kind in kinds.items():
        trainer = make_trainer(tiny_dataset, defense)
        assert type(trainer) is kind
    l2l = make_trainer(tiny_dataset, "l2l")
    assert l2l.generator.noise_dim == 0 and l2l.generator.num_classes is None
    l2lda = make_trainer(tiny_dataset, "l2lda")
    assert l2lda.generator.noise_dim == 8 and l2lda.generator.num_classes == 3


@pytest.mark.parametrize("defense,clean_share", [("pgd", 0.0), ("pgd", 0.5), ("l2l", 0.0),
                                                 ("l2lda", 0.0)])
def test_trainers_train_on_images_inside_the_threat_model(tiny_dataset, defense, clean_share):
    trainer = make_trainer(tiny_dataset, defense, clean_share=clean_share)
    seen = []
    update = trainer.update_classifier
    trainer.update_classifier = lambda x, y: seen.append((x.numpy(), y.numpy())) or update(x, y)
    x, y = first_batch(tiny_dataset)
    trainer.train_step((x, y))  # eagerly, so the spy sees concrete tensors
    (inputs, labels), = seen
    if defense == "pgd":
        n_clean = int(round(clean_share * 8))
        np.testing.assert_array_equal(inputs[:n_clean], x.numpy()[:n_clean])
        adversarial, clean = inputs[n_clean:], x.numpy()[n_clean:]
    else:  # N clean, then the adversarial images (2N for L2L-DA's paired batch)
        np.testing.assert_array_equal(inputs[:8], x.numpy())
        adversarial = inputs[8:]
        clean = np.concatenate([x.numpy()] * (len(adversarial) // 8))
        assert len(adversarial) == (16 if defense == "l2lda" else 8)
    assert np.abs(adversarial - clean).max() <= EPSILON + 1e-6
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    assert np.abs(adversarial - clean).max() > 0.0


def test_l2lda_step_updates_generator_and_classifier(tiny_dataset):
    trainer = make_trainer(tiny_dataset, "l2lda")
    before_g = [v.numpy().copy() for v in trainer.generator.trainable_variables]
    before_f = [v.numpy().copy() for v in trainer.classifier.trainable_variables]
    logs = trainer.train_step(first_batch(tiny_dataset))
    assert set(logs) == {"loss", "clean_acc", "adv_acc", "gen_ce", "diversity"}
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert any(not np.allclose(a, b.numpy())
               for a, b in zip(before_g, trainer.generator.trainable_variables))
    assert any(not np.allclose(a, b.numpy())
               for a, b in zip(before_f, trainer.classifier.trainable_variables))
    assert int(trainer.optimizer.iterations) == 1
    assert int(trainer.generator_optimizer.iterations) == 1


def test_clean_warmup_trains_the_classifier_only(tiny_dataset):
    trainer = make_trainer(tiny_dataset, "l2lda", clean_warmup_steps=5)
    assert trainer.clean_warmup_epochs == 1
    trainer.set_adversarial(False)
    before_g = [v.numpy().copy() for v in trainer.generator.trainable_variables]
    logs = trainer.train_step(first_batch(tiny_dataset))
    assert set(logs) == {"loss", "clean_acc"}
    for a, b in zip(before_g, trainer.generator.trainable_variables):
        np.testing.assert_array_equal(a, b.numpy())


def test_epsilon_warmup_is_linear_after_the_clean_phase(tiny_dataset):
    trainer = make_trainer(tiny_dataset, "pgd", epsilon_warmup_epochs=2)
    spe = trainer.steps_per_epoch
    trainer.optimizer.iterations.assign(0)
    assert float(trainer.epsilon_now()) == pytest.approx(EPSILON / (2 * spe))
    trainer.optimizer.iterations.assign(spe - 1)
    assert float(trainer.epsilon_now()) == pytest.approx(EPSILON / 2)
    trainer.optimizer.iterations.assign(10 * spe)
    assert float(trainer.epsilon_now()) == pytest.approx(EPSILON)


@pytest.mark.parametrize("defense", ["plain", "l2lda"])
def test_one_fit_epoch_lowers_the_loss(digits, defense):
    keras.utils.set_random_seed(0)
    images, labels = digits.train_images[:256], digits.train_labels[:256]
    config = preset("digits", defense, batch_size=32, epochs=1, unroll_steps=2,
                    epsilon_warmup_epochs=0, f_lr=0.05)
    trainer = build_trainer(config, 10, (28, 28, 1), steps_per_epoch=8)
    x, y = tf.constant(images / 255.0, tf.float32), tf.constant(labels)

    def clean_loss():
        logits = trainer.classifier(x, training=False)
        return float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)))

    before = clean_loss()
    trainer.fit(training_batches(images, labels, 32, 0, 0, 1), epochs=1, steps_per_epoch=8,
                verbose=0, shuffle=False)
    assert clean_loss() < before - 0.1
    assert int(trainer.optimizer.iterations) == 8


def test_evaluate_reports_clean_and_pgd_accuracy(tiny_dataset):
    trainer = make_trainer(tiny_dataset, "plain")
    data = tf.data.Dataset.from_tensor_slices(
        (tiny_dataset.eval_images / 255.0, tiny_dataset.eval_labels)).batch(8)
    metrics = trainer.evaluate(data, return_dict=True, verbose=0)
    assert set(metrics) == {"clean_acc", "pgd3_acc"}
    assert 0 <= metrics["pgd3_acc"] <= metrics["clean_acc"] + 1e-6


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_inside_the_threat_model(tiny_dataset, precision):
    config = tiny_config("l2lda")
    trainer = build_trainer(config, 3, tiny_dataset.image_shape, steps_per_epoch=5,
                            precision=precision)
    assert trainer.classifier.compute_dtype == precision.split("_")[1]
    assert all(v.dtype == "float32" for v in trainer.classifier.trainable_variables)
    x, _ = first_batch(tiny_dataset)
    assert trainer.classifier(x).dtype == "float32"  # logits stay float32
    assert trainer.generator(tf.zeros([1, 12, 12, 3]), tf.zeros([1], tf.int32),
                             tf.zeros([1, 8])).dtype == "float32"
    seen = []
    update = trainer.update_classifier
    trainer.update_classifier = lambda x, y: seen.append(x.numpy()) or update(x, y)
    x, y = first_batch(tiny_dataset)
    before = [v.numpy().copy() for v in trainer.generator.trainable_variables]
    logs = trainer.train_step((x, y))
    assert all(np.isfinite(float(v)) for v in logs.values())
    adversarial = seen[0][8:]
    clean = np.concatenate([x.numpy()] * 2)
    assert np.abs(adversarial - clean).max() <= EPSILON + 1e-6
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    assert any(not np.allclose(a, b.numpy())
               for a, b in zip(before, trainer.generator.trainable_variables))
    # the global policy is left as it was
    import keras

    assert keras.config.dtype_policy().name == "float32"


def test_xla_trains_inside_the_threat_model(tiny_dataset):
    trainer = build_trainer(tiny_config("l2lda", unroll_steps=2), 3, tiny_dataset.image_shape,
                            steps_per_epoch=2, jit_compile=True)
    x, y = first_batch(tiny_dataset)
    before = [v.numpy().copy() for v in trainer.generator.trainable_variables]
    history = trainer.fit(tf.data.Dataset.from_tensors((x, y)).repeat(2), epochs=1,
                          steps_per_epoch=2, verbose=0, shuffle=False)
    assert trainer.jit_compile
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    assert any(not np.allclose(a, b.numpy())
               for a, b in zip(before, trainer.generator.trainable_variables))
    attack = tf.function(lambda x, y, z: trainer.attack(x, y, z, EPSILON).images[-1],
                         jit_compile=True)
    x_adv = attack(x, y, tf.random.normal([8, trainer.generator.noise_dim])).numpy()
    assert np.abs(x_adv - x.numpy()).max() <= EPSILON + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_unknown_precision(tiny_dataset):
    with pytest.raises(ValueError, match="unknown precision 'float8'"):
        build_trainer(tiny_config("plain"), 3, tiny_dataset.image_shape, 5, precision="float8")


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, "mixed_bfloat16"),
    ({"avx2", "amx_bf16"}, "mixed_bfloat16"),
    ({"avx2", "avx512f"}, "float32"),
    (set(), "float32"),
])
def test_auto_precision_on_cpus(monkeypatch, flags, expected):
    import l2lda_tf.trainers as trainers

    monkeypatch.setattr(trainers, "cpu_flags", lambda: flags)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    assert trainers.auto_precision() == expected


@pytest.mark.parametrize("capability, expected", [
    ((9, 0), "mixed_bfloat16"), ((8, 0), "mixed_bfloat16"), ((7, 5), "mixed_float16"),
    ((6, 1), "float32"),
])
def test_auto_precision_on_gpus(monkeypatch, capability, expected):
    import l2lda_tf.trainers as trainers

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["gpu:0"])
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda device: {"compute_capability": capability})
    assert trainers.auto_precision() == expected
