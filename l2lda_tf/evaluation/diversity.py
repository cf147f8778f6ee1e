"""The noise-diversity figure and number of a noise-conditioned generator (docs/algorithm.md,
"The diversity figure"): one image per class attacked with several z."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from l2lda_tf.attacks import attack_samples


def noise_samples(generator, count: int, images: int, seed: int = 0) -> tf.Tensor:
    """z ~ N(0, I) of shape [S, N, d], from a fixed seed."""
    if count < 2:
        raise ValueError(f"diversity needs at least two noise samples, got {count}")
    if not generator.noise_dim:
        raise ValueError("this generator takes no noise z: there is no diversity to show")
    return tf.random.stateless_normal([count, images, generator.noise_dim], [seed, 0])


def noise_diversity(perturbations: np.ndarray) -> float:
    """Mean pairwise ℓ1 distance (mean |δ_a − δ_b| per pixel) between the perturbations of
    different z for the same image; `perturbations` is [S, N, H, W, C]."""
    samples = perturbations.shape[0]
    if samples < 2:
        raise ValueError("diversity needs at least two noise samples")
    distances = [np.abs(perturbations[a] - perturbations[b]).mean()
                 for a in range(samples) for b in range(a + 1, samples)]
    return float(np.mean(distances))


def one_image_per_class(images: np.ndarray, labels: np.ndarray, num_classes: int):
    """The first eval image of each class (classes with no image are skipped)."""
    chosen = [int(np.flatnonzero(labels == c)[0]) for c in range(num_classes)
              if np.any(labels == c)]
    return images[chosen], labels[chosen]


def diversity_grid(adversarial: np.ndarray, perturbations: np.ndarray, epsilon: float,
                   pad: int = 2, scale: int = 2) -> np.ndarray:
    """uint8 image: one row per image, one column per z; adversarial images on the left,
    noises on the right shown as (δ/ε + 1)/2 so that zero noise is mid-grey."""
    samples, rows, height, width, channels = adversarial.shape
    noises = (perturbations / epsilon + 1.0) / 2.0
    cell_h, cell_w = height + pad, width + pad
    gap = 3 * pad
    grid = np.ones((rows * cell_h + pad, 2 * samples * cell_w + gap + pad, channels), np.float32)
    for s in range(samples):
        for r in range(rows):
            top, left = pad + r * cell_h, pad + s * cell_w
            grid[top:top + height, left:left + width] = adversarial[s, r]
            left += samples * cell_w + gap
            grid[top:top + height, left:left + width] = noises[s, r]
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    return np.clip(np.round(grid * 255.0), 0, 255).astype(np.uint8)


def save_png(grid: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path


def diversity_figure(classifier, generator, images: np.ndarray, labels: np.ndarray,
                     num_classes: int, epsilon: float, samples: int = 8, steps: int = 10,
                     alpha: float = 0.25, seed: int = 0) -> tuple[np.ndarray, float]:
    """The grid (one uint8 image) and the diversity number on the same examples."""
    x, y = one_image_per_class(images, labels, num_classes)
    x = tf.constant(x, tf.float32) / 255.0
    noise = noise_samples(generator, samples, len(y), seed)
    adversarial = attack_samples(classifier, generator, x, tf.constant(y), noise, epsilon,
                                 steps=steps, alpha=alpha).numpy()
    perturbations = adversarial - x.numpy()[None]
    return diversity_grid(adversarial, perturbations, epsilon), noise_diversity(perturbations)


def diversity_on(classifier, generator, images: np.ndarray, labels: np.ndarray,
                 epsilon: float, samples: int = 8, steps: int = 10, alpha: float = 0.25,
                 seed: int = 0, batch_size: int = 100) -> float:
    """The diversity number averaged over every image given (uint8), batch by batch."""
    total, count = 0.0, 0
    for start in range(0, len(images), batch_size):
        x = tf.constant(images[start:start + batch_size], tf.float32) / 255.0
        y = tf.constant(labels[start:start + batch_size])
        noise = noise_samples(generator, samples, len(y), seed + start)
        adversarial = attack_samples(classifier, generator, x, y, noise, epsilon, steps=steps,
                                     alpha=alpha)
        total += noise_diversity((adversarial - x[None]).numpy()) * len(y)
        count += len(y)
    return total / count
