import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from l2lda_tf.config import preset
from l2lda_tf.data import training_batches
from l2lda_tf.experiment import load_run, train
from l2lda_tf.trainers import L2LDATrainer, L2LTrainer, PGDTrainer, PlainTrainer, build_trainer

EPSILON = 0.1


def tiny_config(defense, **overrides):
    fields = dict(epsilon=EPSILON, batch_size=8, epochs=2, unroll_steps=3, pgd_steps=3,
                  eval_pgd_steps=3, epsilon_warmup_epochs=0, clean_share=0.0,
                  clean_warmup_steps=0)
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
    assert set(logs) == {"loss", "clean_acc", "adv_acc", "gen_ce", "diversity", "delta",
                         "g_grad_norm"}
    assert 0 < float(logs["delta"]) <= 1 and float(logs["g_grad_norm"]) > 0
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


@pytest.mark.parametrize("defense, warmup", [
    ("l2lda", True), ("pgd", True), ("l2lda", False), ("plain", False)])
def test_only_the_clean_warmup_leaves_the_classifier_gradient_unclipped(tiny_dataset, defense,
                                                                        warmup):
    """As in the authors' code: their clean LeNet-5 warm-up has no clipping, their classifier
    updates against the attacker do (and our plain training does)."""
    trainer = make_trainer(tiny_dataset, defense, clip_norm=1e-6, weight_decay=0.0,
                           clean_warmup_steps=5 if warmup else 0)
    trainer.set_adversarial(not warmup)
    before = [v.numpy().copy() for v in trainer.classifier.trainable_variables]
    trainer.train_step(first_batch(tiny_dataset))
    moved = np.sqrt(sum(np.sum((v.numpy() - b) ** 2)
                        for v, b in zip(trainer.classifier.trainable_variables, before)))
    clipped_step = trainer.config.f_lr * trainer.config.clip_norm  # first step: no momentum yet
    if not warmup:
        assert moved == pytest.approx(clipped_step, rel=0.02)  # float32 rounding of w + Δw
    else:
        assert moved > 1e3 * clipped_step


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
def test_fit_lowers_the_loss(digits, defense):
    # LeNet-5 as the authors initialise it (conv kernels N(0, 0.02), raw pixels) sits on a
    # plateau for its first few dozen steps; 40 steps leave it
    keras.utils.set_random_seed(0)
    images, labels = digits.train_images[:256], digits.train_labels[:256]
    config = preset("digits", defense, batch_size=32, epochs=5, unroll_steps=2,
                    epsilon_warmup_epochs=0, f_lr=0.1)
    trainer = build_trainer(config, 10, (28, 28, 1), steps_per_epoch=8)
    x, y = tf.constant(images / 255.0, tf.float32), tf.constant(labels)

    def clean_loss():
        logits = trainer.classifier(x, training=False)
        return float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)))

    before = clean_loss()
    trainer.fit(training_batches(images, labels, 32, 0, 0, 5), epochs=5, steps_per_epoch=8,
                verbose=0, shuffle=False)
    assert clean_loss() < before - 0.03
    assert int(trainer.optimizer.iterations) == 40


def eval_data(dataset):
    return tf.data.Dataset.from_tensor_slices(
        (dataset.eval_images / 255.0, dataset.eval_labels)).batch(8)


def test_evaluate_reports_clean_and_pgd_accuracy_and_repeats_exactly(tiny_dataset):
    trainer = make_trainer(tiny_dataset, "plain", eval_pgd_steps=1)
    trainer.classifier.get_layer("logits").bias.assign([0.5, 0.0, 0.0])
    metrics = trainer.evaluate(eval_data(tiny_dataset), return_dict=True, verbose=0)
    assert set(metrics) == {"clean_acc", "pgd1_acc"}
    assert 0 <= metrics["pgd1_acc"] <= metrics["clean_acc"] + 1e-6
    # PGD's random start is drawn from (seed, batch): the same weights, the same figures
    for _ in range(2):
        tf.random.uniform([7])  # the global random state moves on
        assert trainer.evaluate(eval_data(tiny_dataset), return_dict=True, verbose=0) == metrics


def test_evaluation_runs_a_float32_twin_of_a_mixed_precision_classifier(tiny_dataset):
    config = tiny_config("plain")
    trainer = build_trainer(config, 3, tiny_dataset.image_shape, steps_per_epoch=5,
                            precision="mixed_bfloat16")
    assert trainer.eval_classifier.compute_dtype == "float32"
    trainer.classifier.get_layer("logits").bias.assign([0.0, 3.0, 0.0])
    metrics = trainer.evaluate(eval_data(tiny_dataset), return_dict=True, verbose=0)
    # the twin took the trained weights before evaluating: every prediction is class 1
    np.testing.assert_array_equal(trainer.eval_classifier.get_layer("logits").bias.numpy(),
                                  [0.0, 3.0, 0.0])
    assert metrics["clean_acc"] == pytest.approx(np.mean(tiny_dataset.eval_labels == 1))


def sgd_reference(w, grads, lr, momentum, wd, clip):
    """PyTorch's SGD(momentum, weight_decay) after a global-norm clip, step by step."""
    buf = None
    for g in grads:
        g = g * min(1.0, clip / max(np.linalg.norm(g), 1e-12)) + wd * w
        buf = g if buf is None else momentum * buf + g
        w = w - lr * buf
    return w


def test_optimizer_step_is_pytorch_sgd_with_coupled_weight_decay():
    from l2lda_tf.optimizers import sgd
    from l2lda_tf.trainers import minimize

    config = tiny_config("plain", weight_decay=0.1, f_lr=0.5)
    optimizer = sgd(config, config.f_lr)
    w = tf.Variable([1.0, -2.0, 3.0])
    optimizer.build([w])
    targets = [np.array([0.3, 0.1, -0.2]), np.array([5.0, 0.0, 1.0])]  # the 2nd gets clipped
    for target in targets:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(w * target)
        minimize(optimizer, tape, loss, [w], config.clip_norm)
    expected = sgd_reference(np.array([1.0, -2.0, 3.0]), targets, 0.5, 0.9, 0.1, 1.0)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)


def test_only_the_classifier_rate_decays_at_the_decay_step(tiny_dataset):
    trainer = make_trainer(tiny_dataset, "l2lda", lr_decay_step=7, f_lr=0.02, g_lr=0.03)
    f_rate = trainer.optimizer.learning_rate
    for step, f_expected in ((0, 0.02), (6, 0.02), (7, 0.002), (500, 0.002)):
        trainer.optimizer.iterations.assign(step)
        trainer.generator_optimizer.iterations.assign(step)
        assert float(trainer.optimizer.learning_rate) == pytest.approx(f_expected), step
        assert float(trainer.generator_optimizer.learning_rate) == pytest.approx(0.03), step
    never = make_trainer(tiny_dataset, "plain", lr_decay_step=0, f_lr=0.02)
    never.optimizer.iterations.assign(10**6)
    assert float(never.optimizer.learning_rate) == pytest.approx(0.02)
    # default: half the run's steps, clean warm-up included
    config = dataclasses.replace(tiny_config("plain", f_lr=0.02), lr_decay_step=None)
    default = build_trainer(config, tiny_dataset.num_classes, tiny_dataset.image_shape,
                            steps_per_epoch=len(tiny_dataset.train_labels) // config.batch_size)
    total = default.config.epochs * default.steps_per_epoch
    default.optimizer.iterations.assign(total // 2)
    assert float(default.optimizer.learning_rate) == pytest.approx(0.002)
    assert f_rate is not None


def responsive(trainer):
    """Glorot-initialised classifier kernels with large logits: LeNet at the authors' init
    answers every input alike, which leaves an attacker nothing to learn from."""
    for variable in trainer.classifier.trainable_variables:
        if "kernel" in variable.path:
            scale = 30.0 if "logits" in variable.path else 1.0
            variable.assign(scale * keras.initializers.GlorotUniform(seed=7)(variable.shape))
    trainer.update_classifier = lambda x, y: trainer.classifier(x, training=False)  # frozen
    return trainer


def unroll_ce(trainer, x, y, noise):
    unroll = trainer.attack(tf.concat([x, x], 0), tf.concat([y, y], 0), noise, EPSILON)
    return float(tf.reduce_mean(tf.add_n(unroll.losses)))


def test_generator_updates_raise_the_unroll_loss_of_a_fixed_classifier(digits):
    keras.utils.set_random_seed(1)
    config = preset("digits", "l2lda", batch_size=32, epochs=1, unroll_steps=3,
                    epsilon_warmup_epochs=0, g_lr=0.05)
    trainer = responsive(build_trainer(config, 10, (28, 28, 1), steps_per_epoch=8))
    x = tf.constant(digits.train_images[:32] / 255.0, tf.float32)
    y = tf.constant(digits.train_labels[:32])
    noise = tf.random.normal([64, 8], seed=4)
    before = unroll_ce(trainer, x, y, noise)
    classifier_weights = [v.numpy().copy() for v in trainer.classifier.weights]
    step = tf.function(trainer.train_step)
    for _ in range(5):
        step((x, y))
    for a, b in zip(classifier_weights, trainer.classifier.weights):
        np.testing.assert_array_equal(a, b.numpy())
    assert unroll_ce(trainer, x, y, noise) > before + 0.01


def paired_diversity(trainer, x, y, noise):
    unroll = trainer.attack(tf.concat([x, x], 0), tf.concat([y, y], 0), noise, EPSILON)
    from l2lda_tf.losses import pairwise_diversity

    return float(tf.reduce_mean(pairwise_diversity(unroll.images[-1], noise)))


def test_the_diversity_term_makes_the_attacks_more_diverse(digits):
    x = tf.constant(digits.train_images[:32] / 255.0, tf.float32)
    y = tf.constant(digits.train_labels[:32])
    noise = tf.random.normal([64, 8], seed=5)
    diversity = {}
    for lam in (0.0, 100.0):
        keras.utils.set_random_seed(2)
        config = preset("digits", "l2lda", batch_size=32, epochs=1, unroll_steps=3, lam=lam,
                        epsilon_warmup_epochs=0, g_lr=0.05)
        trainer = responsive(build_trainer(config, 10, (28, 28, 1), steps_per_epoch=8))
        step = tf.function(trainer.train_step)
        for _ in range(10):
            step((x, y))
        diversity[lam] = paired_diversity(trainer, x, y, noise)
    assert diversity[100.0] > 1.5 * diversity[0.0]


def test_float16_input_gradients_are_loss_scaled_so_they_do_not_underflow():
    from l2lda_tf.attacks.utils import loss_and_input_gradient

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    finally:
        keras.config.set_dtype_policy(previous)
    # a confident model: softmax − onehot ≈ 1e-8, below float16's smallest subnormal
    model.layers[0].bias.assign([20.0, 1.0, 1.0])
    model.layers[0].kernel.assign([[1.0, 2.0, 0.0]] * 4)
    x, y = tf.fill([2, 4], 0.01), tf.constant([0, 0])
    _, _, unscaled = loss_and_input_gradient(model, x, y)
    _, _, scaled = loss_and_input_gradient(model, x, y, scale=2.0 ** 15)
    assert not np.any(unscaled.numpy())  # the failure being prevented
    assert np.all(scaled.numpy() != 0)
    assert np.all((1e-10 < np.abs(scaled.numpy())) & (np.abs(scaled.numpy()) < 1e-7))


def test_mixed_float16_trainer_scales_its_attack_gradients(tiny_dataset):
    trainer = build_trainer(tiny_config("l2lda"), 3, tiny_dataset.image_shape,
                            steps_per_epoch=5, precision="mixed_float16")
    from l2lda_tf.trainers.base import loss_scale

    assert float(loss_scale(trainer.optimizer)) > 1


def test_a_stuck_attacker_is_reported(tiny_dataset, caplog):
    from l2lda_tf.monitoring import StuckAttackerWarning

    warning = StuckAttackerWarning()
    warning.set_model(make_trainer(tiny_dataset, "l2lda"))
    with caplog.at_level("WARNING", logger="l2lda_tf"):
        warning.on_epoch_end(0, {"g_grad_norm": 0.05})
        assert not caplog.records
        warning.on_epoch_end(3, {"g_grad_norm": 8e-4})
    assert "epoch 4" in caplog.text and "stuck" in caplog.text


def test_a_collapsed_attacker_is_reported(tiny_dataset, caplog):
    """Seed 0 of the MNIST acceptance run: diversity 7e-6, accuracy on the generator's images
    0.95 (ε = 0.3 there; the tiny config's ε scales the threshold)."""
    from l2lda_tf.monitoring import StuckAttackerWarning

    trainer = make_trainer(tiny_dataset, "l2lda")
    trainer.set_adversarial(True)
    epsilon = float(trainer.epsilon_now())
    warning = StuckAttackerWarning()
    warning.set_model(trainer)
    with caplog.at_level("WARNING", logger="l2lda_tf"):
        # a diverse attacker, and a z-blind one that fools the classifier: no warning
        warning.on_epoch_end(0, {"g_grad_norm": 5.0, "diversity": 0.1 * epsilon,
                                 "adv_acc": 0.95})
        warning.on_epoch_end(1, {"g_grad_norm": 5.0, "diversity": 0.0, "adv_acc": 0.5})
        assert not caplog.records
        warning.on_epoch_end(2, {"g_grad_norm": 0.008, "diversity": 2e-5 * epsilon,
                                 "adv_acc": 0.95})
    assert "epoch 3" in caplog.text and "collapsed" in caplog.text and "--seed" in caplog.text


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


def test_clean_warmup_ends_after_exactly_its_steps(tiny_dataset, tmp_path):
    # 5 steps an epoch, 7 warm-up steps: the switch falls in the second epoch, so of the 15
    # steps 8 are adversarial (rounding the warm-up up to whole epochs would leave 5)
    config = tiny_config("l2lda", epochs=3, clean_warmup_steps=7)
    train(config, tmp_path / "run", dataset=tiny_dataset, verbose=0, export_models=False)
    trainer = load_run(tmp_path / "run")
    assert int(trainer.optimizer.iterations) == 15
    assert int(trainer.generator_optimizer.iterations) == 8
