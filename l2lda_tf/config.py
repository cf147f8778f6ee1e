"""Training configurations: one frozen dataclass, with the paper's settings as presets.

A preset is the paper's hyperparameter row for a dataset (ALGORITHM.md, "Hyperparameters");
command-line flags override single fields through `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

DEFENSES = ("plain", "pgd", "l2l", "l2lda")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; saved as `config.json` beside it."""

    dataset: str
    classifier: str
    defense: str = "l2lda"
    epsilon: float = 0.3  # ε, radius of the ℓ∞ ball, pixels in [0, 1]
    lam: float = 0.02  # λ, weight of the diversity term
    g_lr: float = 0.01
    f_lr: float = 0.01
    lr_decay: float = 0.1  # γ: the classifier's rate is multiplied by it at `lr_decay_step`
    # the step (clean warm-up included) at which the classifier's rate drops by γ: None for half
    # of the run's steps, 0 for never; the generator's rate stays constant (the authors' code)
    lr_decay_step: int | None = None
    batch_size: int = 100
    epochs: int = 10
    steps_per_epoch: int | None = None  # None: one pass over the training split
    unroll_steps: int = 10  # T
    alpha: float = 0.25  # α, the mini-step: δ_{t+1} = clip(δ_t + α·ε·o_t)
    noise_dim: int = 8  # d, dimension of z
    momentum: float = 0.9
    weight_decay: float = 1e-5
    clip_norm: float = 1.0
    clean_warmup_steps: int = 0  # clean-only classifier steps first, rounded up to whole epochs
    epsilon_warmup_epochs: int = 0  # ε grows linearly from 0 over these epochs
    clean_share: float = 0.0  # PGD training: share of each batch left clean
    pgd_steps: int = 10  # k of PGD-k adversarial training
    eval_pgd_steps: int = 10  # k of the PGD-k accuracy reported on the eval split
    seed: int = 0

    def __post_init__(self) -> None:
        if self.defense not in DEFENSES:
            raise ValueError(f"unknown defense {self.defense!r}; expected one of {DEFENSES}")
        if not 0 < self.epsilon <= 1:
            raise ValueError(f"epsilon must be in (0, 1] for images in [0, 1], got {self.epsilon}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be positive")
        if not 0 <= self.clean_share < 1:
            raise ValueError(f"clean_share must be in [0, 1), got {self.clean_share}")
        if self.unroll_steps < 1 or self.pgd_steps < 1 or self.eval_pgd_steps < 1:
            raise ValueError("unroll_steps, pgd_steps and eval_pgd_steps must be positive")

    def decay_step(self, total_steps: int) -> int:
        """The step at which the classifier's rate drops by γ (0: never)."""
        return total_steps // 2 if self.lr_decay_step is None else self.lr_decay_step

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls(**json.loads(text))

    def differences(self, other: TrainConfig) -> dict[str, tuple]:
        """Fields whose values differ, as {name: (self's, other's)}."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}


# The paper's rows (ALGORITHM.md). `digits` is the small real dataset that works offline:
# scikit-learn's 8×8 handwritten digits upsampled to MNIST's 28×28; ε = 0.1 because at 0.3 the
# upsampled strokes can be erased outright and no defense is meaningful.
PRESETS: dict[str, TrainConfig] = {
    # 12 clean epochs (336 steps: LeNet-5 at the authors' init reaches ~90% clean), then 12
    # adversarial ones with ε ramped over the first 5; the classifier's rate drops for the last
    # 4 (step 560), which steadies its clean accuracy (±4 points from epoch to epoch without).
    "digits": TrainConfig(
        dataset="digits", classifier="lenet5", epsilon=0.1, lam=0.02, g_lr=0.01, f_lr=0.01,
        lr_decay=0.1, lr_decay_step=560, batch_size=50, epochs=24, clean_warmup_steps=336,
        epsilon_warmup_epochs=5,
    ),
    "mnist": TrainConfig(
        dataset="mnist", classifier="lenet5", epsilon=0.3, lam=0.02, g_lr=0.01, f_lr=0.01,
        lr_decay=0.1, batch_size=100, epochs=60, clean_warmup_steps=1000,
    ),
    "cifar10": TrainConfig(
        dataset="cifar10", classifier="resnet20", epsilon=8 / 255, lam=0.5, g_lr=0.01,
        f_lr=0.01, lr_decay=0.1, batch_size=128, epochs=100,
    ),
    # The paper's 60 images per GPU; `batch_size` is the global batch, split over replicas.
    "tiny_imagenet": TrainConfig(
        dataset="tiny_imagenet", classifier="resnet18", epsilon=8 / 255, lam=0.3, g_lr=0.025,
        f_lr=0.005, lr_decay=0.3, batch_size=60, epochs=60,
    ),
}

# What a defense changes in a dataset's preset. PGD training at full ε from the first step
# collapses LeNet-5 to a constant class on MNIST; the standard cure is a linear ε warm-up and
# some clean examples in each batch (the L2L defenses always train on clean + adversarial).
DEFENSE_OVERRIDES: dict[tuple[str, str], dict] = {
    ("digits", "pgd"): {"clean_share": 0.5},
    ("mnist", "pgd"): {"clean_share": 0.5, "epsilon_warmup_epochs": 10},
    ("digits", "plain"): {"epsilon_warmup_epochs": 0},
    ("mnist", "plain"): {"clean_warmup_steps": 0},
}


def step_budget(total_steps: int, train_size: int, batch_size: int) -> dict[str, int]:
    """The `steps_per_epoch` and `epochs` overrides that train `total_steps` steps: whole passes
    over `train_size` images where they fit, one short epoch otherwise (rounded up to epochs)."""
    if total_steps < 1:
        raise ValueError(f"--steps must be positive, got {total_steps}")
    per_epoch = min(total_steps, max(train_size // batch_size, 1))
    return {"steps_per_epoch": per_epoch, "epochs": -(-total_steps // per_epoch)}


def preset(dataset: str, defense: str = "l2lda", **overrides) -> TrainConfig:
    """The paper's configuration for `dataset` and `defense`, with `overrides` applied."""
    if dataset not in PRESETS:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {sorted(PRESETS)}")
    fields = {"defense": defense, **DEFENSE_OVERRIDES.get((dataset, defense), {})}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return dataclasses.replace(PRESETS[dataset], **fields)
