"""White-box attacks (FGSM, PGD, CW, APGD, FAB) and the score-based Square attack in the ℓ∞
ball, as plain functions over (model, x, y, ε, *, options), and the trained attacks (AdvGAN,
GAP, L2L-DA) as small Keras models with `train_on` and `attack`."""

from l2lda_tf.attacks.advgan import AdvGAN
from l2lda_tf.attacks.apgd import apgd, dlr_loss
from l2lda_tf.attacks.cw import cw_linf
from l2lda_tf.attacks.fab import fab_targeted
from l2lda_tf.attacks.fgsm import fgsm
from l2lda_tf.attacks.gap import GAP
from l2lda_tf.attacks.generative import GenerativeAttack, train_attacker
from l2lda_tf.attacks.l2lda import L2LDAAttack, attack_samples, copy_generator
from l2lda_tf.attacks.pgd import default_step_size, pgd
from l2lda_tf.attacks.square import square
from l2lda_tf.attacks.transfer import transfer
from l2lda_tf.attacks.unrolled import Unroll, unrolled_attack
from l2lda_tf.attacks.utils import (
    cross_entropy,
    keep_more_damaging,
    loss_and_input_gradient,
    margin,
    most_damaging,
    normalize_gradient,
    project,
)

__all__ = [
    "GAP", "AdvGAN", "GenerativeAttack", "L2LDAAttack", "Unroll", "apgd", "attack_samples",
    "copy_generator", "cross_entropy", "cw_linf", "default_step_size", "dlr_loss",
    "fab_targeted", "fgsm",
    "keep_more_damaging", "loss_and_input_gradient", "margin", "most_damaging",
    "normalize_gradient", "pgd", "project", "square", "train_attacker", "transfer",
    "unrolled_attack",
]
