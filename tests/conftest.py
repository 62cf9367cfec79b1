"""Test session set-up: 8 fake CPU devices, float32, deterministic.

XLA_FLAGS must be set before jax is imported anywhere, so this runs first.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8"
    # Test models are tiny: compile time dominates, and LLVM's optimisation level
    # barely matters for their run time.
    + " --xla_backend_optimization_level=0"
).strip()
# Identical programs compiled by several tests (and by their subprocesses, which
# inherit the environment) are compiled once.
_CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".jax_cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests must never reach a dataset host or a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), ".tfds_unused"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
