"""L2L-DA in Keras/TensorFlow: adversarial defense via learning to generate diverse attacks."""

__version__ = "0.1.0"
