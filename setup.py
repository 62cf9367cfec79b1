"""Installs nlhf_jax: Nash Learning from Human Feedback in JAX/Flax.

The pins are versions that resolve together on Python 3.11 (checked with pip on
CPU Linux). Loosen them deliberately, one at a time, with the test suite green.
"""

import setuptools

_RUNTIME = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "gin-config==0.5.0",
    "seqio==0.0.20",
    "tensorflow-datasets==4.9.10",
    # tensorflow-datasets imports it without declaring it.
    "importlib_resources",
    "sentencepiece",
    "safetensors",
    "absl-py",
    "clu",
    "tensorboard",
    "tqdm",
    "matplotlib",
    "scipy",
    "numpy>=2",
]

_TEST = [
    "pytest",
    # PyTorch T5 is the reference implementation for parity tests.
    "torch==2.13.0",
    "transformers>=5,<6",
]

setuptools.setup(
    name="nlhf_jax",
    version="0.1.0",
    description="Nash Learning from Human Feedback (Munos et al., 2024) in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read()
    if __import__("os").path.exists("README.md")
    else "",
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["nlhf_jax", "nlhf_jax.*"]),
    package_data={"nlhf_jax": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=_RUNTIME,
    extras_require={"test": _TEST, "bench": ["trl==1.13.0"]},
    entry_points={"console_scripts": ["nlhf = nlhf_jax.main:run"]},
    license="Apache-2.0",
)
