"""Test setup: CPU unless JAX_PLATFORMS is set (the gpu tests: `JAX_PLATFORMS=cuda python -m
pytest -m gpu tests/gpu`), 8 fake host devices for sharding tests (set before jax is imported)."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
