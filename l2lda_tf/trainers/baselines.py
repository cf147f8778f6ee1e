"""Baseline defenses: plain training and PGD-k adversarial training (Madry et al. 2018)."""

from __future__ import annotations

import tensorflow as tf

from l2lda_tf.attacks import pgd
from l2lda_tf.trainers.base import Trainer, step_logs


class PlainTrainer(Trainer):
    """Clean training only: the 'Plain' row of the results table."""

    def train_step(self, data):
        return self.clean_step(data)


class PGDTrainer(Trainer):
    """Trains on PGD-k examples (random start, step ε/4 for k = 10), crafted at the current ε.

    The first `clean_share` of each batch stays clean: with ε warm-up, this is what keeps
    PGD training of small networks from collapsing to a constant class at large ε.
    """

    def train_step(self, data):
        if not self.adversarial:
            return self.clean_step(data)
        x, y = data
        n_clean = tf.cast(tf.round(self.config.clean_share * tf.cast(tf.shape(x)[0], tf.float32)),
                          tf.int32)
        x_adv = pgd(self.classifier, x[n_clean:], y[n_clean:], self.epsilon_now(),
                    steps=self.config.pgd_steps, keep_best=False)
        logits = self.update_classifier(tf.concat([x[:n_clean], x_adv], 0), y)
        self.clean_acc.update_state(y[:n_clean], logits[:n_clean])
        self.adv_acc.update_state(y[n_clean:], logits[n_clean:])
        return step_logs((self.loss_tracker, self.clean_acc, self.adv_acc))
