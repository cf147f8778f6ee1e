"""The two players' optimizers: SGD with momentum and coupled L2 weight decay, as the authors'
PyTorch code trains them (docs/algorithm.md, "Optimizers and schedule")."""

from __future__ import annotations

import keras
from keras import ops

from l2lda_tf.config import TrainConfig


@keras.saving.register_keras_serializable(package="l2lda_tf")
class CoupledSGD(keras.optimizers.SGD):
    """SGD whose weight decay is the classic L2 term added to the gradient before momentum
    (PyTorch's `SGD(weight_decay=wd)`: g ← g + wd·w), not Keras's decoupled `weight_decay`,
    which at momentum 0.9 shrinks weights about 10× less per step.

    Applied after gradients are summed across replicas, so it counts once per step.
    """

    def __init__(self, learning_rate=0.01, momentum: float = 0.0, l2: float = 0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        if not l2 >= 0:
            raise ValueError(f"l2 must be non-negative, got {l2}")
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = ops.add(gradient, ops.multiply(ops.cast(variable, gradient.dtype),
                                                      ops.cast(self.l2, gradient.dtype)))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


def sgd(config: TrainConfig, learning_rate: float, decay_at_step: int = 0,
        precision: str = "float32") -> keras.optimizers.Optimizer:
    """A player's optimizer: `CoupledSGD` with the config's momentum and weight decay, its rate
    multiplied by γ once at step `decay_at_step` (0: constant).

    Gradients are clipped by the trainers (`minimize`), not here: Keras would clip per replica.
    Under mixed_float16 the optimizer is wrapped in a LossScaleOptimizer.
    """
    rate = learning_rate
    if decay_at_step > 0:
        # the schedule sees the steps already taken: from step `decay_at_step` on, the rate is γ·lr
        rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            [decay_at_step - 1], [learning_rate, learning_rate * config.lr_decay])
    optimizer = CoupledSGD(rate, momentum=config.momentum, l2=config.weight_decay)
    if precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
