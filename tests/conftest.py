"""Test session set-up: 8 fake CPU devices, float32, deterministic.

XLA_FLAGS must be set before jax is imported anywhere, so this runs first.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests must never reach a dataset host or a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), ".tfds_unused"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
