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
from l2lda_tf.models.cond_bn import ConditionalBatchNormalization
from l2lda_tf.models.generator import NoiseGenerator, build_noise_generator

__all__ = [
    "CLASSIFIERS", "BasicBlock", "ConditionalBatchNormalization", "LeNet5", "NoiseGenerator",
    "ResNet", "build_classifier", "build_noise_generator", "lenet5", "resnet18", "resnet20",
]
