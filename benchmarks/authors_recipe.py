"""The authors' MNIST recipe end to end in PyTorch, on our split: how their attacker starts.

    pip install torch    # only this check needs it
    python -m benchmarks.authors_recipe --data-dir DIR [--seed 0] [--adversarial-steps 300] \\
        [--eval-every 100] [--out FILE.json]

From scratch as in the authors' code: their initialization (conv kernels N(0, 0.02), dense
Glorot-uniform, biases 0, CondBN shared γ row N(1, 0.02) and class rows N(0, 0.02)), 1,000
clean LeNet-5 steps without gradient clipping on random 28×28 crops of the 4-pixel zero-padded
image (batch 100, reshuffled every epoch), then L2L-DA steps (`benchmarks.authors_step`'s
re-implementation, checked against ours step for step). Per window of `--window` adversarial
steps it reports the classifier's accuracy on the generator's images, the generator's gradient
norm and mean |δ|/ε, and every `--eval-every` steps float32 PGD-10 (random start, step ε/4) on
the 2,000 eval images. Several seeds say whether a stuck start is typical of the authors' recipe
too (docs/results.md: it collapsed on all three we ran).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.authors_step import authors_step, torch_models
from l2lda_tf.config import preset
from l2lda_tf.data import load_dataset
from l2lda_tf.files import write_atomically


def authors_init(torch, *modules) -> None:
    """Their `weights_init_normal`, applied to every module."""
    nn = torch.nn
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(layer.weight, 0.0, 0.02)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
            elif isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
            elif hasattr(layer, "classes"):  # CondBN: rows 0..K-1 per class, row K shared
                with torch.no_grad():
                    nn.init.normal_(layer.weight[:-1], 0.0, 0.02)
                    nn.init.normal_(layer.weight[-1], 1.0, 0.02)
                    nn.init.zeros_(layer.bias)


def crop_batches(images, labels, batch_size, rng):
    """Endless batches: every epoch reshuffled, each image a random 28×28 crop of its 4-pixel
    zero padding (torchvision's RandomCrop(28, 4)); NCHW float32."""
    n, h, w = images.shape[:3]
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            dy, dx = rng.integers(0, 9, size=(2, batch_size))
            crops = np.stack([padded[i, a:a + h, b:b + w] for i, a, b in zip(index, dy, dx)])
            yield crops.transpose(0, 3, 1, 2), labels[index]


def pgd_accuracy(torch, lenet, x, y, *, epsilon, steps=10, seed=0) -> float:
    """Float32 PGD-k accuracy: uniform random start, signed steps of ε/4."""
    F = torch.nn.functional
    lenet.eval()
    generator = torch.Generator().manual_seed(seed)
    adv = torch.clamp(x + (torch.rand(x.shape, generator=generator) * 2 - 1) * epsilon, 0, 1)
    for _ in range(steps):
        adv = adv.detach().requires_grad_()
        (gradient,) = torch.autograd.grad(F.nll_loss(lenet(adv), y), adv)
        adv = torch.clamp(torch.clamp(adv + epsilon / 4 * gradient.sign(), x - epsilon,
                                      x + epsilon), 0, 1)
    with torch.no_grad():
        return float((lenet(adv).argmax(1) == y).double().mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="MNIST IDX files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clean-steps", type=int, default=1000)
    parser.add_argument("--adversarial-steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100,
                        help="adversarial steps between PGD-10 evaluations (0: none)")
    parser.add_argument("--window", type=int, default=20,
                        help="adversarial steps averaged in each reported window")
    parser.add_argument("--lam", type=float, help="λ, the diversity weight (default: the preset's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        parser.error("this check needs PyTorch: pip install torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    F = torch.nn.functional

    data = load_dataset("mnist", data_dir=args.data_dir)
    config = preset("mnist", "l2lda", **({} if args.lam is None else {"lam": args.lam}))
    scale = np.float32(1 / 255)
    batches = crop_batches(data.train_images.astype(np.float32) * scale,
                           data.train_labels.astype(np.int64), config.batch_size,
                           np.random.default_rng(args.seed))
    eval_x = torch.tensor((data.eval_images.astype(np.float32) * scale).transpose(0, 3, 1, 2))
    eval_y = torch.tensor(data.eval_labels.astype(np.int64))

    lenet, generator = torch_models(torch)
    authors_init(torch, lenet, generator)
    g_opt = torch.optim.SGD(generator.parameters(), lr=config.g_lr, momentum=config.momentum,
                            weight_decay=config.weight_decay)
    f_opt = torch.optim.SGD(lenet.parameters(), lr=config.f_lr, momentum=config.momentum,
                            weight_decay=config.weight_decay)

    def evaluate(step):
        lenet.eval()
        with torch.no_grad():
            clean = float((lenet(eval_x).argmax(1) == eval_y).double().mean())
        row = {"step": step, "eval_clean": clean,
               "eval_pgd10": pgd_accuracy(torch, lenet, eval_x, eval_y,
                                          epsilon=config.epsilon)}
        print(json.dumps(row), flush=True)
        return row

    for _ in range(args.clean_steps):  # their LeNet pre-training: no clip_grad_norm_
        x, y = (torch.tensor(a) for a in next(batches))
        lenet.train()
        f_opt.zero_grad()
        F.nll_loss(lenet(x), y).backward()
        f_opt.step()
    evaluations = [evaluate(args.clean_steps)]
    windows, window = [], []
    for step in range(1, args.adversarial_steps + 1):
        x, y = (torch.tensor(a) for a in next(batches))
        z = torch.randn(2 * len(y), config.noise_dim)
        window.append(authors_step(torch, lenet, generator, g_opt, f_opt, x, y, z,
                                   epsilon=config.epsilon, alpha=config.alpha,
                                   steps=config.unroll_steps, lam=config.lam))
        if step % args.window == 0:
            g_norm, _, accuracy, delta = np.mean(window, axis=0)
            windows.append({"adversarial_steps": step, "adv_acc": float(accuracy),
                            "g_grad_norm": float(g_norm), "delta": float(delta)})
            print(json.dumps(windows[-1]), flush=True)
            window = []
        if args.eval_every and step % args.eval_every == 0:
            evaluations.append(evaluate(args.clean_steps + step))
    if args.out:
        write_atomically(args.out, json.dumps(
            {"command": f"python -m benchmarks.authors_recipe --data-dir DIR --seed {args.seed} "
                        f"--clean-steps {args.clean_steps} "
                        f"--adversarial-steps {args.adversarial_steps} "
                        f"--eval-every {args.eval_every} --window {args.window}"
                        + ("" if args.lam is None else f" --lam {args.lam}"),
             "window": args.window, "windows": windows, "evaluations": evaluations},
            indent=1))


if __name__ == "__main__":
    main()
