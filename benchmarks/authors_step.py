"""Our L2L-DA training step against the authors' recipe in PyTorch, step for step.

    pip install torch    # only this check needs it
    python -m benchmarks.authors_step --data-dir DIR [--steps 20] [--warm-steps 300] \\
        [--out FILE.json]

A small PyTorch re-implementation of the authors' MNIST step (their `trainer.py` and
`models.py`, docs/algorithm.md "One training step": NCHW, their CondBN with a shared row,
`torch.optim.SGD(momentum, weight_decay)`, `clip_grad_norm_`; input channels in our order, a
permutation of theirs) starts from our LeNet-5's and generator's weights (after `--warm-steps`
clean steps of ours) and takes the same batches and the same z as our
`L2LDATrainer.train_step` in float32. Per step it reports both sides'
generator gradient norm, classifier loss and accuracy on the generator's images, and the largest
relative difference of any weight tensor. Agreement to float32 rounding says the two steps are
the same function; a difference in the recipe shows as a gap from the first step on.
"""

from __future__ import annotations

import argparse
import json
from copy import deepcopy
from pathlib import Path

import numpy as np
import tensorflow as tf

from l2lda_tf.config import preset
from l2lda_tf.data import load_dataset
from l2lda_tf.files import write_atomically
from l2lda_tf.trainers import build_trainer


def torch_models(torch):
    """The authors' LeNet-5 and noise generator (NCHW), as PyTorch modules."""
    nn, F = torch.nn, torch.nn.functional

    class CondBN(nn.Module):
        """BN without affine, then rows y and K (shared) of γ, β summed (their SyncBN)."""

        def __init__(self, channels, classes):
            super().__init__()
            self.classes = classes
            self.weight = nn.Parameter(torch.zeros(classes + 1, channels))
            self.bias = nn.Parameter(torch.zeros(classes + 1, channels))
            self.register_buffer("mean", torch.zeros(channels))
            self.register_buffer("var", torch.ones(channels))

        def forward(self, h, y):
            gamma = self.weight[y] + self.weight[self.classes]
            beta = self.bias[y] + self.bias[self.classes]
            h = F.batch_norm(h, self.mean, self.var, None, None, self.training, 0.1, 1e-10)
            return h * gamma[:, :, None, None] + beta[:, :, None, None]

    class Generator(nn.Module):
        def __init__(self, channels=1, noise_dim=8, classes=10):
            super().__init__()
            d = noise_dim
            self.z1, self.z2 = nn.Linear(d, d), nn.Linear(d, d)
            self.down0 = nn.Conv2d(3 * channels + d, 64, 3, 1, 1, bias=False)
            self.down1 = nn.Conv2d(64 + d, 64, 4, 2, 1, bias=False)
            self.norm1 = CondBN(64, classes)
            self.down2 = nn.Conv2d(64 + d, 128, 4, 2, 1, bias=False)
            self.up2 = nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False)
            self.norm_up2 = CondBN(64, classes)
            self.up1 = nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False)
            self.norm_up1 = CondBN(64, classes)
            self.final = nn.Conv2d(128, channels, 3, 1, 1, bias=False)

        def forward(self, features, y, z):
            z = F.relu(self.z2(F.relu(self.z1(z))))

            def with_z(h):
                return torch.cat((h, z[:, :, None, None].expand(-1, -1, *h.shape[2:])), 1)

            d0 = F.leaky_relu(self.down0(with_z(features)), 0.2)
            d1 = F.leaky_relu(self.norm1(self.down1(with_z(d0)), y), 0.2)
            d2 = F.leaky_relu(self.down2(with_z(d1)), 0.2)
            u2 = torch.cat((F.relu(self.norm_up2(self.up2(d2), y)), d1), 1)
            u1 = torch.cat((F.relu(self.norm_up1(self.up1(u2), y)), d0), 1)
            return torch.tanh(self.final(u1))

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c3 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
            self.c5, self.f6, self.f7 = nn.Conv2d(16, 120, 5), nn.Linear(120, 84), nn.Linear(84, 10)

        def forward(self, x):
            h = F.max_pool2d(F.relu(self.c1(x)), 2)
            h = F.max_pool2d(F.relu(self.c3(h)), 2)
            h = F.relu(self.c5(h)).flatten(1)
            return F.log_softmax(self.f7(F.relu(self.f6(h))), -1)

    return LeNet(), Generator()


def copy_weights(torch, trainer, lenet, generator) -> None:
    """Our Keras weights into the PyTorch modules (HWIO → OIHW; dense kernels transposed)."""
    def put(parameter, value):
        parameter.data.copy_(torch.tensor(np.ascontiguousarray(value), dtype=torch.float32))

    conv1, _, conv2, _, _, conv3, fc, logits = trainer.classifier.body
    for ours, theirs in ((conv1, lenet.c1), (conv2, lenet.c3)):
        put(theirs.weight, ours.kernel.numpy().transpose(3, 2, 0, 1))
        put(theirs.bias, ours.bias.numpy())
    # our dense conv3 on the flattened 5×5×16 map is their conv(120, 5)
    put(lenet.c5.weight, conv3.kernel.numpy().reshape(5, 5, 16, 120).transpose(3, 2, 0, 1))
    put(lenet.c5.bias, conv3.bias.numpy())
    for ours, theirs in ((fc, lenet.f6), (logits, lenet.f7)):
        put(theirs.weight, ours.kernel.numpy().T)
        put(theirs.bias, ours.bias.numpy())
    g = trainer.generator
    for ours, theirs in ((g.z_dense1, generator.z1), (g.z_dense2, generator.z2)):
        put(theirs.weight, ours.kernel.numpy().T)
        put(theirs.bias, ours.bias.numpy())
    # conv kernels HWIO → OIHW; transposed-conv kernels (h, w, out, in) → (in, out, h, w)
    for ours, theirs in ((g.conv1, generator.down0), (g.conv2, generator.down1),
                         (g.conv3, generator.down2), (g.out_conv, generator.final),
                         (g.deconv1, generator.up2), (g.deconv2, generator.up1)):
        put(theirs.weight, ours.kernel.numpy().transpose(3, 2, 0, 1))
    for ours, theirs in ((g.norm2, generator.norm1), (g.norm_up1, generator.norm_up2),
                         (g.norm_up2, generator.norm_up1)):
        put(theirs.weight, np.concatenate([ours.gamma.numpy(), ours.gamma_shared.numpy()[None]]))
        put(theirs.bias, np.concatenate([ours.beta.numpy(), ours.beta_shared.numpy()[None]]))


def authors_step(torch, lenet, generator, g_opt, f_opt, x, y, z, *, epsilon, alpha, steps,
                 lam):
    """One step of the authors' recipe; returns (generator gradient norm, classifier loss,
    its accuracy on the generator's images, mean |x_T − x| / ε)."""
    F = torch.nn.functional
    n = x.shape[0]

    def input_gradient(images, labels):
        images = images.detach().requires_grad_()
        (gradient,) = torch.autograd.grad(F.nll_loss(lenet(images), labels), images)
        return gradient / (gradient + 1e-15).norm(dim=(2, 3), keepdim=True)

    lenet.eval()
    gradient = input_gradient(x, y)
    x2, y2, gradient = torch.cat((x, x)), torch.cat((y, y)), torch.cat((gradient, gradient))
    delta, loss = torch.zeros_like(x2), 0.0
    generator.train()
    for t in range(steps):
        noise = torch.clamp(delta + alpha * epsilon * generator(
            torch.cat((x2, delta, gradient), 1), y2, z), -epsilon, epsilon)
        adv = torch.clamp(x2 + noise, 0.0, 1.0)
        pair = (adv[:n] - adv[n:]).abs().mean(dim=(1, 2, 3))
        diversity = (pair / ((z[:n] - z[n:]).abs().mean(dim=1) + 1e-8)).mean()
        loss = loss - F.nll_loss(lenet(adv), y2) - lam * diversity
        if t + 1 < steps:
            gradient, delta = input_gradient(adv, y2), noise
    g_opt.zero_grad()
    loss.backward()
    g_norm = torch.nn.utils.clip_grad_norm_(generator.parameters(), 1.0)
    g_opt.step()
    lenet.train()
    f_opt.zero_grad()
    logits = lenet(torch.cat((x, adv.detach())))
    f_loss = F.nll_loss(logits, torch.cat((y, y2)))
    f_loss.backward()
    torch.nn.utils.clip_grad_norm_(lenet.parameters(), 1.0)
    f_opt.step()
    accuracy = (logits[n:].argmax(1) == y2).double().mean()
    delta = (adv.detach() - x2).abs().mean() / epsilon
    return float(g_norm), float(f_loss.detach()), float(accuracy), float(delta)


def largest_difference(torch, trainer, lenet, generator) -> float:
    """max over weight tensors of max|ours − theirs| / max|theirs|."""
    ours_lenet, ours_generator = deepcopy(lenet), deepcopy(generator)
    copy_weights(torch, trainer, ours_lenet, ours_generator)
    pairs = [*zip(ours_lenet.parameters(), lenet.parameters()),
             *zip(ours_generator.parameters(), generator.parameters())]
    return max(float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in pairs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="MNIST IDX files")
    parser.add_argument("--steps", type=int, default=20, help="L2L-DA steps to compare")
    parser.add_argument("--warm-steps", type=int, default=300,
                        help="clean steps of ours first, so that the attacker has a gradient")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the per-step figures here (JSON)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        parser.error("this check needs PyTorch: pip install torch")
    torch.manual_seed(args.seed)

    data = load_dataset("mnist", data_dir=args.data_dir)
    config = preset("mnist", "l2lda", epochs=1, clean_warmup_steps=0, lr_decay_step=0,
                    seed=args.seed)
    trainer = build_trainer(config, data.num_classes, data.image_shape, steps_per_epoch=80)
    images = data.train_images.astype(np.float32) / 255.0
    labels = data.train_labels.astype(np.int32)
    rng = np.random.default_rng(args.seed)

    def batch():
        index = rng.choice(len(images), config.batch_size, replace=False)
        return images[index], labels[index]

    trainer.set_adversarial(False)  # our clean warm-up step, then L2L-DA steps
    clean_step = tf.function(trainer.train_step)
    for _ in range(args.warm_steps):
        clean_step(batch())
    trainer.set_adversarial(True)
    trainer.optimizer.iterations.assign(0)
    for variable in trainer.optimizer.variables:  # both sides start without momentum
        if "momentum" in variable.name:
            variable.assign(tf.zeros_like(variable))

    lenet, generator = torch_models(torch)
    copy_weights(torch, trainer, lenet, generator)
    g_opt = torch.optim.SGD(generator.parameters(), lr=config.g_lr, momentum=config.momentum,
                            weight_decay=config.weight_decay)
    f_opt = torch.optim.SGD(lenet.parameters(), lr=config.f_lr, momentum=config.momentum,
                            weight_decay=config.weight_decay)
    train_step = tf.function(trainer.train_step)
    rows = []
    for step in range(args.steps):
        x, y = batch()
        z = trainer.step_noise(config.batch_size).numpy()
        for metric in trainer.metrics:
            metric.reset_state()
        logs = train_step((tf.constant(x), tf.constant(y)))
        theirs = authors_step(torch, lenet, generator, g_opt, f_opt,
                              torch.tensor(x.transpose(0, 3, 1, 2)),
                              torch.tensor(y.astype(np.int64)), torch.tensor(z),
                              epsilon=config.epsilon, alpha=config.alpha,
                              steps=config.unroll_steps, lam=config.lam)
        row = {"step": step + 1,
               "g_grad_norm": [float(logs["g_grad_norm"]), theirs[0]],
               "classifier_loss": [float(logs["loss"]), theirs[1]],
               "adv_acc": [float(logs["adv_acc"]), theirs[2]],
               "largest_weight_difference": largest_difference(torch, trainer, lenet,
                                                               generator)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        write_atomically(args.out, json.dumps(
            {"command": "python -m benchmarks.authors_step --data-dir DIR "
                        f"--steps {args.steps} --warm-steps {args.warm_steps} "
                        f"--seed {args.seed}",
             "pairs": "[ours, the authors' recipe in PyTorch]", "steps": rows}, indent=1))


if __name__ == "__main__":
    main()
