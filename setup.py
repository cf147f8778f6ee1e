from setuptools import find_packages, setup

setup(
    name="l2lda-tf",
    version="0.1.0",
    description="L2L-DA (ICCV 2019) in Keras/TensorFlow: adversarial defense via learning to "
                "generate diverse attacks",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["l2lda_tf*", "training*", "serving*", "benchmarks*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.20,<2.22",
        "keras>=3.10,<4",
        "tensorboard>=2.20,<2.22",
        "tensorflow-datasets>=4.9,<5",
        "importlib_resources>=6,<7",
        "keras-tuner>=1.4.7,<2",
        "scikit-learn>=1.3,<2",
        "tensorflow-serving-api>=2.20,<2.22",
        "grpcio>=1.60,<2",
        "uvicorn>=0.30,<1",
        "starlette>=0.40,<2",
        "orjson>=3.8,<4",
        "pillow>=10,<14",
        "numpy>=1.26,<3",
    ],
    extras_require={
        # cleverhans: the independent reference our FGSM and PGD are checked against
        "dev": ["pytest>=8,<10", "ruff>=0.6,<1", "hypothesis>=6.100,<7", "cleverhans>=4.0,<5",
                "adversarial-robustness-toolbox>=1.17,<2", "dill>=0.3,<1", "psutil>=5.9,<8"],
    },
)
