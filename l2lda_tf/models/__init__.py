"""Keras models: the L2L-DA noise generator, class-conditional BN and the classifiers."""

from l2lda_tf.models.classifiers import (
    CLASSIFIERS,
    BasicBlock,
    LeNet5,
    ResNet,
    build_classifier,
    lenet5,
    resnet18,
    resnet20,
)
from l2lda_tf.models.cond_bn import ConditionalBatchNormalization, batch_norm_layers
from l2lda_tf.models.generator import NoiseGenerator

__all__ = [
    "CLASSIFIERS", "BasicBlock", "ConditionalBatchNormalization", "LeNet5", "NoiseGenerator",
    "ResNet", "batch_norm_layers", "build_classifier", "lenet5", "resnet18", "resnet20",
]
