"""Training configurations: one frozen dataclass, with the paper's settings as presets.

A preset is the paper's hyperparameter row for a dataset (docs/algorithm.md, "Hyperparameters");
command-line flags override single fields through `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass

DEFENSES = ("plain", "pgd", "l2l", "l2lda")


class ConfigError(ValueError):
    """A `TrainConfig` field with a value it cannot take; `field` names it, `problem` says why
    (command-line tools put their own flag name in front of `problem`)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


def _field(default, help: str, low=None, high=None, *, above: bool = False,
           below: bool = False):
    """A dataclass field with its help line (for the command line) and its allowed range:
    `low` ≤ value (`above`: <) and value ≤ `high` (`below`: <); None leaves a side open."""
    return dataclasses.field(default=default, metadata={
        "help": help, "low": low, "high": high, "above": above, "below": below})


SEED_LIMIT = 2**31 - 1  # NumPy, TensorFlow and keras-tuner (which adds 1) all take it


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; saved as `config.json` beside it.

    Every field is checked on construction (type, finite, range), so a bad value fails before
    anything is trained or written.
    """

    dataset: str = dataclasses.field(metadata={"help": "dataset the run trains on"})
    classifier: str = dataclasses.field(metadata={"help": "classifier architecture"})
    defense: str = _field("l2lda", "training method")
    epsilon: float = _field(0.3, "ε, radius of the ℓ∞ ball, pixels in [0, 1]", 0, 1,
                            above=True)
    lam: float = _field(0.02, "λ, weight of the diversity term", 0)
    g_lr: float = _field(0.01, "generator learning rate", 0, above=True)
    f_lr: float = _field(0.01, "classifier learning rate", 0, above=True)
    lr_decay: float = _field(0.1, "γ: the classifier's rate is multiplied by it at "
                             "lr_decay_step", 0, 1, above=True)
    # the step (clean warm-up included) at which the classifier's rate drops by γ: None for half
    # of the run's steps, 0 for never; the generator's rate stays constant (the authors' code)
    lr_decay_step: int | None = _field(None, "step (clean warm-up included) at which the "
                                       "classifier's rate drops by γ; 0: never; default: half "
                                       "the run", 0)
    batch_size: int = _field(100, "global batch size (split over replicas)", 1)
    epochs: int = _field(10, "epochs to train in all", 1)
    steps_per_epoch: int | None = _field(None, "steps per epoch; default: one pass over the "
                                         "training split", 1)
    unroll_steps: int = _field(10, "T, steps of the generator's unrolled attack", 1)
    alpha: float = _field(0.25, "α, the unroll's mini-step: δ_{t+1} = clip(δ_t + α·ε·o_t)",
                          0, above=True)
    noise_dim: int = _field(8, "d, dimension of the generator's noise z", 0)
    momentum: float = _field(0.9, "SGD momentum of both optimizers", 0, 1, below=True)
    weight_decay: float = _field(1e-5, "weight decay of both optimizers", 0)
    clip_norm: float = _field(1.0, "gradients are clipped to this global norm (not in the clean "
                              "warm-up, as in the authors' code)", 0, above=True)
    clean_warmup_steps: int = _field(0, "clean-only classifier steps first (exactly: the "
                                     "switch may fall mid-epoch)", 0)
    epsilon_warmup_epochs: int = _field(0, "ε grows linearly from 0 over these epochs", 0)
    clean_share: float = _field(0.0, "PGD training: share of each batch left clean", 0, 1,
                                below=True)
    pgd_steps: int = _field(10, "k of PGD-k adversarial training", 1)
    eval_pgd_steps: int = _field(10, "k of the PGD-k accuracy reported on the eval split", 1)
    seed: int = _field(0, "seed of every random choice of the run", 0, SEED_LIMIT)

    def __post_init__(self) -> None:
        if self.defense not in DEFENSES:
            raise ConfigError("defense", f"must be one of {', '.join(DEFENSES)}, got "
                                         f"{self.defense!r}")
        for name, kind in field_types().items():
            check_value(name, getattr(self, name), kind)

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


def field_types() -> dict[str, type]:
    """TrainConfig's fields and their value types (int, float or str; None is allowed where the
    annotation says `| None`, see `optional`)."""
    hints = typing.get_type_hints(TrainConfig)
    types = {}
    for field in dataclasses.fields(TrainConfig):
        kinds = [k for k in typing.get_args(hints[field.name]) if k is not type(None)]
        types[field.name] = kinds[0] if kinds else hints[field.name]
    return types


def optional(name: str) -> bool:
    """Whether field `name` may be None."""
    return type(None) in typing.get_args(typing.get_type_hints(TrainConfig)[name])


def check_value(name: str, value, kind: type) -> None:
    """Raises ConfigError unless `value` is of `kind` and, for numbers, finite and within the
    field's range."""
    if value is None and optional(name):
        return
    if kind is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(name, f"must be a non-empty string, got {value!r}")
        return
    number = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, number):
        raise ConfigError(name, f"must be {'an integer' if kind is int else 'a number'}, got "
                                f"{value!r}")
    if not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value}")
    meta = {f.name: f.metadata for f in dataclasses.fields(TrainConfig)}[name]
    low, high, above, below = meta["low"], meta["high"], meta["above"], meta["below"]
    if (low is not None and (value <= low if above else value < low)) or \
            (high is not None and (value >= high if below else value > high)):
        raise ConfigError(name, f"must be in {describe_range(low, high, above, below)}, got "
                                f"{value}")


def describe_range(low, high, above: bool, below: bool) -> str:
    """`(0, 1]`, `[0, ∞)` and the like."""
    return (f"{'(' if above or low is None else '['}{'-∞' if low is None else low}, "
            f"{'∞' if high is None else high}{')' if below or high is None else ']'}")


# The paper's rows (docs/algorithm.md). `digits` is the small real dataset that works offline:
# scikit-learn's 8×8 handwritten digits upsampled to MNIST's 28×28; ε = 0.1 because at 0.3 the
# upsampled strokes can be erased outright and no defense is meaningful.
PRESETS: dict[str, TrainConfig] = {
    # 12 clean epochs (336 steps: LeNet-5 at the authors' init reaches ~90% clean), then 12
    # adversarial ones with ε ramped over the first 5; no rate decay, as the authors' MNIST runs
    # in practice (their decay comes at step 50,000).
    "digits": TrainConfig(
        dataset="digits", classifier="lenet5", epsilon=0.1, lam=0.02, g_lr=0.01, f_lr=0.01,
        lr_decay=0.1, lr_decay_step=0, batch_size=50, epochs=24, clean_warmup_steps=336,
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
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"the total number of steps must be a positive integer, got "
                         f"{total_steps}")
    per_epoch = min(total_steps, max(train_size // batch_size, 1))
    return {"steps_per_epoch": per_epoch, "epochs": -(-total_steps // per_epoch)}


def preset(dataset: str, defense: str = "l2lda", **overrides) -> TrainConfig:
    """The paper's configuration for `dataset` and `defense`, with `overrides` applied."""
    if dataset not in PRESETS:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {sorted(PRESETS)}")
    fields = {"defense": defense, **DEFENSE_OVERRIDES.get((dataset, defense), {})}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return dataclasses.replace(PRESETS[dataset], **fields)
