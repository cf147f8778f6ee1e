"""An image classification dataset held in memory: uint8 NHWC images and integer labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageDataset:
    """Train and eval splits; images uint8 [N, H, W, C], labels int64 [N]."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    eval_images: np.ndarray
    eval_labels: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        for split in ("train", "eval"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.ndim != 4 or images.dtype != np.uint8:
                raise ValueError(f"{self.name}: {split} images must be uint8 [N, H, W, C], "
                                 f"got {images.dtype} {images.shape}")
            if len(images) != len(labels):
                raise ValueError(f"{self.name}: {len(images)} {split} images but "
                                 f"{len(labels)} labels")
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"{self.name}: {split} labels outside [0, {self.num_classes})")
        if self.train_images.shape[1:] != self.eval_images.shape[1:]:
            raise ValueError(f"{self.name}: train and eval image shapes differ")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])
